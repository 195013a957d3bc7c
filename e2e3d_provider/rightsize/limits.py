"""The bounds right-sizing keeps to, whatever its input: the defaults of the policy's limit settings, and
the checks that refuse a file before it costs more than they allow. Pure functions; no Airflow.

A result is untrusted input (a reconstruction tool's output, or anything uploaded as one), so each reader
is bounded before it reads, by the policy setting whose default is named here.
"""

from __future__ import annotations

from pathlib import Path

from e2e3d_provider.exceptions import RightSizeInputError

#: a texture of more pixels is refused from its header: decoding costs about 20 bytes a pixel at peak
MAX_PIXELS = 100_000_000
#: the longest ASCII PLY row read; a longer one (or a file with no line ends) is refused
MAX_LINE_BYTES = 64 << 10
#: a mesh of more triangles (or more than three times as many ``v`` or ``vt`` lines) is refused
MAX_FACES = 5_000_000
#: wall-clock seconds and address space of the child process that simplifies, measures and encodes a mesh
MESH_SECONDS = 300.0
MESH_MEMORY_BYTES = 4 << 30
#: an original larger than this is refused before it is opened (the OBJ reader holds the whole file)
MAX_INPUT_BYTES = 2 << 30


def check_size(path: Path, max_bytes: int, setting: str = "max_input_bytes") -> int:
    """The size of ``path``, or :class:`RightSizeInputError` when it is larger than ``max_bytes``."""
    size = path.stat().st_size
    if size > max_bytes:
        raise RightSizeInputError(
            f"{path} is {size:,} bytes, more than {setting} = {max_bytes:,}: it is not right-sized "
            f"(raise {setting} if the file is sound)"
        )
    return size
