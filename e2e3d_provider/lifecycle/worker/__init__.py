"""Worker: one host's disk during a job. The content-addressed input cache and stage-in, the confined
local paths, a run directory rebuilt from its hand-off (``rebuild``), write-back, the workspace that ties
them together, scratch space and the host sweep. Depends on ``inputs`` and ``results``."""
