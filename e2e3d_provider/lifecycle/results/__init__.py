"""Results: what a job produces and how it becomes visible. The hand-off protocol between tasks
(``handoff``), the commit protocol's writes (``publish``) and reads (``published``), the job's record in
PostgreSQL (``record``), and the right-sizing step over a run directory (``rightsize``). Depends on no
other room: a worker's disk and the durable copies build on it, never the other way."""
