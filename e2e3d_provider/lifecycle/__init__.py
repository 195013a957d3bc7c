"""Job-level steps over the hooks, in five rooms, each one concern, dependencies one way
(``tests/test_layering.py`` enforces the order; ``docs/architecture.md`` draws it):

- ``inputs``: datasets, their ingest and readiness;
- ``results``: the hand-off protocol, publish (the writes), published (the reads), the job record, right-sizing;
- ``worker``: a host's disk: input cache, stage-in, local paths, rebuilding a run, write-back, workspace,
  scratch, host sweep (uses ``inputs`` and ``results``);
- ``durability``: archive, retention, backup, restore, scrub (uses ``results``);
- ``maintenance``: the maintenance DAG's steps, hygiene, reconcile, dashboard (uses all of them);

and ``locks`` (per-job advisory locks in PostgreSQL), shared by all. Operators and the maintenance DAG
call exactly one of these functions each; nothing here knows about task contexts or XComs, and nothing
here opens a connection except through a hook.
"""
