"""The right-sizing policy: every threshold and ratio, with the defaults the ``e2e3d.config`` key
``rightsize`` overrides, and an operator's own arguments override in turn."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from e2e3d_provider.core.variants import DEFAULT_PRESERVATION, preservation_policy
from e2e3d_provider.rightsize import limits
from e2e3d_provider.rightsize.texture import WEB_FORMATS

#: the ``e2e3d.config`` key holding a JSON object of :class:`RightSizePolicy` fields
CONFIG_KEY = "rightsize"
#: how web GLBs are compressed (tiles are always meshopt)
WEB_GLB_COMPRESSIONS = ("meshopt", "draco")


@dataclass(frozen=True)
class RightSizePolicy:
    """What right-sizing makes of a run's results, and what of its intermediates is published.

    Mesh LODs keep ``mesh_lod_ratios`` of the faces; point-cloud LODs keep about
    ``pointcloud_lod_ratios`` of the points (voxel grid), at most ``pointcloud_max_points`` each;
    textures get a ``web_format`` variant at ``web_quality``, mips down to ``mip_min_size`` pixels and,
    above ``tile_threshold`` pixels a side, ``tile_size`` tiles; ``png_level`` is oxipng's effort, and its
    lossless copy is kept only when it saves at least ``png_min_gain`` of the input's bytes.
    ``preservation`` lists the run-dir prefixes kept, dropped and removed after archive.
    With ``copc``, a point cloud also gets a COPC file (an octree of LAZ chunks a viewer streams by range
    requests; a node keeps one point per 128^3 cell of its cube, and a node with at most ``copc_node_points``
    points left under it keeps them all); a cloud of more than ``copc_max_points`` is refused then (the
    octree is built in memory). Every cloud gets a LAZ of all its points (streamed, any size).

    For browsers: each mesh level gets a self-contained GLB (normals, its texture embedded at most
    ``web_glb_texture_size`` pixels a side for level 0 and half that per coarser level,
    ``web_glb_compression`` ``meshopt`` or ``draco``) and, with ``mesh_tiles``, the chain becomes a 3D Tiles
    1.1 tileset whose tiles hold about ``tile_faces`` faces each and a texture of at most
    ``tile_texture_size`` pixels a side.

    The limits, since a result is untrusted input (passing one is a :class:`RightSizeInputError`):
    ``max_pixels`` a texture may have (read from its header, before it is decoded);
    ``max_line_bytes`` an ASCII PLY row may take;
    ``max_faces`` a mesh may have, and ``mesh_seconds`` and ``mesh_memory_bytes`` for each child process its
    level chain (meshoptimizer, the error figures) and then its web GLBs and tiles (texture, encoders) run in;
    ``max_input_bytes`` any original may have (checked before it is opened)."""

    mesh_lod_ratios: tuple[float, ...] = (0.25, 0.06, 0.015)
    mesh_error_samples: int = 50_000
    web_format: str = "jpeg"
    web_quality: int = 85
    mip_min_size: int = 256
    tile_size: int = 1024
    tile_threshold: int = 4096
    png_level: int = 1
    png_min_gain: float = 0.0
    pointcloud_lod_ratios: tuple[float, ...] = (0.25, 0.06, 0.015)
    pointcloud_max_points: int = 1_500_000
    mesh_tiles: bool = True
    tile_faces: int = 20_000
    tile_texture_size: int = 1024
    web_glb_compression: str = "meshopt"
    web_glb_texture_size: int = 4096
    copc: bool = True
    copc_max_points: int = 20_000_000
    copc_node_points: int = 100_000
    preservation: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_PRESERVATION))
    max_pixels: int = limits.MAX_PIXELS
    max_line_bytes: int = limits.MAX_LINE_BYTES
    max_faces: int = limits.MAX_FACES
    mesh_seconds: float = limits.MESH_SECONDS
    mesh_memory_bytes: int = limits.MESH_MEMORY_BYTES
    max_input_bytes: int = limits.MAX_INPUT_BYTES

    def __post_init__(self) -> None:
        for name in ("mesh_lod_ratios", "pointcloud_lod_ratios"):
            ratios = tuple(float(r) for r in getattr(self, name))
            if not all(0 < r < 1 for r in ratios) or list(ratios) != sorted(ratios, reverse=True):
                raise ValueError(f"{name} must be decreasing fractions in (0, 1), not {list(ratios)}")
            object.__setattr__(self, name, ratios)
        if self.web_format not in WEB_FORMATS:
            raise ValueError(f"web_format must be one of {', '.join(WEB_FORMATS)}, not {self.web_format!r}")
        if not 1 <= self.web_quality <= 100:
            raise ValueError(f"web_quality must be 1-100, not {self.web_quality}")
        if not 0 <= self.png_min_gain < 1:
            raise ValueError(f"png_min_gain must be a fraction in [0, 1), not {self.png_min_gain}")
        if not 0 <= self.png_level <= 6:
            raise ValueError(f"png_level must be 0-6 (oxipng's levels), not {self.png_level}")
        for name in ("mesh_error_samples", "mip_min_size", "tile_size", "tile_threshold", "pointcloud_max_points"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        if not isinstance(self.mesh_tiles, bool):
            raise ValueError(f"mesh_tiles must be true or false, not {self.mesh_tiles!r}")
        if not isinstance(self.copc, bool):
            raise ValueError(f"copc must be true or false, not {self.copc!r}")
        if self.web_glb_compression not in WEB_GLB_COMPRESSIONS:
            choices = ", ".join(WEB_GLB_COMPRESSIONS)
            raise ValueError(f"web_glb_compression must be one of {choices}, not {self.web_glb_compression!r}")
        for name in (
            "tile_faces",
            "tile_texture_size",
            "web_glb_texture_size",
            "copc_max_points",
            "copc_node_points",
            "max_pixels",
            "max_line_bytes",
            "max_faces",
            "mesh_memory_bytes",
            "max_input_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        seconds = self.mesh_seconds
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < float("inf"):
            raise ValueError(f"mesh_seconds must be a positive number of seconds, not {seconds!r}")
        object.__setattr__(self, "preservation", preservation_policy(self.preservation))

    @classmethod
    def from_settings(cls, *layers: dict[str, Any] | None) -> RightSizePolicy:
        """The defaults, overridden by each of ``layers`` in turn (config table, then operator arguments);
        ``None`` values in a layer leave the setting alone; an unknown key is an error, not ignored."""
        known = {f.name for f in fields(cls)}
        merged: dict[str, Any] = {}
        for layer in layers:
            for key, value in (layer or {}).items():
                if key not in known:
                    raise ValueError(f"unknown right-sizing setting {key!r} (settings: {', '.join(sorted(known))})")
                if value is not None:
                    merged[key] = value
        return cls(**merged)

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """A JSON schema of the settings :meth:`from_settings` accepts (one object of field overrides): each
        field's type and the bounds ``__post_init__`` checks, so a trigger form (or Airflow's validation of a
        REST trigger) refuses a bad value before a run starts. ``null`` leaves a setting at its default; what
        JSON schema cannot say (ratios decreasing, prefixes kept and dropped at once) is still checked here."""
        defaults = cls()

        def field_schema(kind: str, description: str, **bounds: Any) -> dict[str, Any]:
            return {"type": [kind, "null"], "description": description, **bounds}

        def positive(description: str) -> dict[str, Any]:
            return field_schema("integer", description, minimum=1)

        def ratios(what: str) -> dict[str, Any]:
            return {
                "type": ["array", "null"],
                "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "description": f"share of the {what} each level keeps, decreasing",
            }

        prefixes = {"type": "array", "items": {"type": "string", "minLength": 1}}
        properties: dict[str, Any] = {
            "mesh_lod_ratios": ratios("faces"),
            "mesh_error_samples": positive("points sampled to measure a level's geometric error"),
            "web_format": {"enum": [*sorted(WEB_FORMATS), None], "description": "format of a texture's web variant"},
            "web_quality": field_schema("integer", "quality of the web variant", minimum=1, maximum=100),
            "mip_min_size": positive("smallest mip, in pixels a side"),
            "tile_size": positive("tile edge, in pixels"),
            "tile_threshold": positive("textures larger than this many pixels a side are tiled"),
            "png_level": field_schema("integer", "oxipng's effort", minimum=0, maximum=6),
            "png_min_gain": field_schema(
                "number", "keep the optimized PNG only when it saves this share", minimum=0, exclusiveMaximum=1
            ),
            "pointcloud_lod_ratios": ratios("points"),
            "pointcloud_max_points": positive("most points in a point-cloud level"),
            "mesh_tiles": {"type": ["boolean", "null"], "description": "write a 3D Tiles tileset of each mesh"},
            "tile_faces": positive("faces a 3D tile holds, about"),
            "tile_texture_size": positive("largest side of a 3D tile's texture, in pixels"),
            "web_glb_compression": {
                "enum": [*WEB_GLB_COMPRESSIONS, None],
                "description": "compression of each level's web GLB",
            },
            "web_glb_texture_size": positive("largest side of the texture embedded in level 0's web GLB"),
            "copc": field_schema("boolean", "write a COPC file (octree of LAZ chunks, streamed by a viewer) per cloud"),
            "copc_max_points": positive("a cloud with more points gets no COPC: right-sizing refuses it"),
            "copc_node_points": positive("a COPC node with at most this many points under it keeps them all"),
            "preservation": {
                "type": ["object", "null"],
                "properties": {key: prefixes for key in DEFAULT_PRESERVATION},
                "additionalProperties": False,
                "description": "run-dir folder prefixes kept, dropped, and removed after archive",
            },
            "max_pixels": positive("a texture with more pixels is refused"),
            "max_line_bytes": positive("longest ASCII PLY row read"),
            "max_faces": positive("a mesh with more triangles is refused"),
            "mesh_seconds": field_schema("number", "seconds for one mesh's level chain", exclusiveMinimum=0),
            "mesh_memory_bytes": positive("address space of a mesh's child process"),
            "max_input_bytes": positive("an original larger than this is refused"),
        }
        for name, value in defaults.to_dict().items():
            properties[name]["default"] = value
        return {"type": "object", "properties": properties, "additionalProperties": False}

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
