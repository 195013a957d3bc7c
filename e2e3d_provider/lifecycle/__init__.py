"""Job-level steps over the hooks, one function each: stage-in, publish and unpublish, record,
archive, retention, temp clean-up, input readiness, statistics and health.

Operators and the maintenance DAG call exactly one of these each; nothing here knows about task
contexts or XComs, and nothing here opens a connection except through a hook.
"""
