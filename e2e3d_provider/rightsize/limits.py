"""The bounds right-sizing keeps to, whatever its input: the defaults of the policy's limit settings.
No Airflow.

A result is untrusted input (a reconstruction tool's output, or anything uploaded as one), so each reader
is bounded before it reads, by the policy setting whose default is named here.
"""

from __future__ import annotations

#: a texture of more pixels is refused from its header: decoding costs about 20 bytes a pixel at peak
MAX_PIXELS = 100_000_000
#: the longest ASCII PLY row read; a longer one (or a file with no line ends) is refused
MAX_LINE_BYTES = 64 << 10
#: a mesh of more triangles (or more than three times as many ``v`` or ``vt`` lines) is refused
MAX_FACES = 5_000_000
#: wall-clock seconds and address space of the child process that simplifies, measures and encodes a mesh
MESH_SECONDS = 300.0
MESH_MEMORY_BYTES = 4 << 30
