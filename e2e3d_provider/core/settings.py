"""Every setting the provider reads, declared once: its name, type, default, meaning, an example and its check.

Two kinds, read in two places:

- **Airflow options** (scope ``airflow``), section ``[e2e3d]`` of Airflow's configuration (``airflow.cfg`` or
  ``AIRFLOW__E2E3D__<NAME>``): what one Airflow component needs before it can reach the platform (its
  connection ids) or what differs per machine (a worker's scratch bounds). They are declared to Airflow through
  ``get_provider_info()["config"]`` (:func:`provider_config`), so ``airflow config list --section e2e3d`` shows
  them with their defaults, and Airflow answers a read with the declared default.
- **Platform keys** (scope ``platform``), rows of the PostgreSQL table ``e2e3d.config``: what every component
  must agree on (retention, scrub budget, the right-sizing policy), set once for the whole platform with
  ``e2e3d config set`` or ``MetadataHook.set_config`` (which checks the value with :func:`validate_platform`).
  A DAG param, where a maintenance task offers one, wins over the key for that run.
- **Environment variables** (scope ``environment``), outside Airflow's configuration: where a worker keeps its
  data (``E2E3D_DATA_ROOT``) and the developer stack's own (``E2E3D_STACK_DIR``, ``E2E3D_MINIO_BINARY``).

The callers take their fallbacks from here (:func:`default`), so a default is spelled once. No Airflow import:
the CLI, the hooks and ``get_provider_info()`` (which Airflow calls while it loads its configuration) read it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from e2e3d_provider.core.layout import DATA_ROOT_ENV, DATA_ROOT_VARIABLE, DEFAULT_DATA_ROOT
from e2e3d_provider.core.presign import MAX_UPLOAD_BYTES

#: the Airflow configuration section of the provider's options
SECTION = "e2e3d"
#: the PostgreSQL table of the platform keys (schema ``e2e3d``)
PLATFORM_TABLE = "e2e3d.config"
#: the release that declared the options to Airflow (``version_added`` of each)
DECLARED_IN = "0.6.0"

SettingType = Literal["string", "integer", "float", "boolean", "json"]
Scope = Literal["airflow", "platform", "environment"]
#: the types Airflow's provider schema knows (``json`` is a platform key's own)
AIRFLOW_TYPES = ("string", "integer", "float", "boolean")


@dataclass(frozen=True)
class Setting:
    """One setting. ``default`` is the value used when nothing sets it (``None``: "not set", which the reader
    treats as the setting's absence, e.g. no storage capacity known). ``validate`` takes a value of the right
    type and returns it (normalised) or raises ValueError saying what is wrong; ``minimum`` bounds a number.
    ``read_only`` keys are written by the provider itself (a cursor, a measurement): shown, never set by hand.
    ``nullable`` keys accept JSON ``null`` (back to "not set")."""

    name: str
    type: SettingType
    default: Any
    description: str
    example: Any
    scope: Scope
    read_only: bool = False
    nullable: bool = False
    minimum: float | None = None
    validate: Callable[[Any], Any] | None = None

    @property
    def env_var(self) -> str | None:
        """The environment variable that sets this setting (``None`` for a platform key)."""
        if self.scope == "environment":
            return self.name
        return f"AIRFLOW__{SECTION.upper()}__{self.name.upper()}" if self.scope == "airflow" else None

    def check(self, value: Any) -> Any:
        """``value`` (already of Python type: a number, a string, a parsed JSON value) if it is a valid value of
        this setting, normalised (a whole float becomes an int for an integer setting); else ValueError."""
        where = {
            "platform": f"{PLATFORM_TABLE} {self.name!r}",
            "airflow": f"[{SECTION}] {self.name}",
            "environment": f"${self.name}",
        }[self.scope]
        if value is None:
            if self.nullable:
                return None
            raise ValueError(f"{where} cannot be null")
        if self.type == "integer":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where} must be a whole number, not {value!r}")
        elif self.type == "float":  # a whole number stays an int (45 days is stored and shown as 45)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{where} must be a finite number, not {value!r}")
        elif self.type == "boolean":
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false, not {value!r}")
        elif self.type == "string" and not isinstance(value, str):
            raise ValueError(f"{where} must be a string, not {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{where} must be at least {_plain(self.minimum)}, not {_plain(value)}")
        if self.validate is not None:
            try:
                value = self.validate(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"{where}: {err}") from err
        return value


def _plain(value: Any) -> str:
    """A number as a person writes it: ``168``, not ``168.0``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, not {json.dumps(value)}")
    return value


def _dotted_path(value: str) -> str:
    """Empty, or ``package.module.function`` (resolved when maintenance runs, not here: the function may live in
    a module only the scheduler has)."""
    text = value.strip()
    parts = text.split(".")
    if text and (len(parts) < 2 or not all(part.isidentifier() for part in parts)):
        raise ValueError(f"must be empty or a dotted path package.module.function, not {value!r}")
    return text


def _event_loop(value: str) -> str:
    chosen = value.strip().lower()
    if chosen not in ("uvloop", "asyncio"):
        raise ValueError(f"must be uvloop or asyncio, not {value!r}")
    return chosen


def _conn_id(value: str) -> str:
    if not value.strip():
        raise ValueError("a connection id cannot be empty")
    return value.strip()


GiB = 1024**3

AIRFLOW_OPTIONS: tuple[Setting, ...] = (
    Setting(
        "minio_conn_id",
        "string",
        "minio_api",
        "Object-storage connection (type aws) of the results API in the api-server: the least-privilege api "
        "role's, which reads results and signs upload grants.",
        "minio_api",
        "airflow",
        validate=_conn_id,
    ),
    Setting(
        "metadata_conn_id",
        "string",
        "e2e3d_metadata",
        "PostgreSQL connection (type postgres) of the results API and of the telemetry the components record "
        "(access log, storage errors, transfers).",
        "e2e3d_metadata",
        "airflow",
        validate=_conn_id,
    ),
    Setting(
        "max_upload_bytes",
        "integer",
        MAX_UPLOAD_BYTES,
        "Largest file, in bytes, an upload grant of the results API allows (POST .../uploads); a larger "
        "declared size is refused with 422.",
        2 * GiB,
        "airflow",
        minimum=1,
    ),
    Setting(
        "metadata_retry_deadline",
        "float",
        120.0,
        "Seconds a MetadataHook keeps trying to connect while PostgreSQL is down, starting or restarting "
        "(jittered backoff); 0 fails at the first refused connection. MetadataHook(retry_deadline=...) wins.",
        300,
        "airflow",
        minimum=0,
    ),
    Setting(
        "cache_max_bytes",
        "integer",
        50 * GiB,
        "Bytes of staged datasets a worker's input cache keeps (per worker: set it where the disk is); the "
        "sweep trims the least recently used datasets above it.",
        200 * GiB,
        "airflow",
        minimum=0,
    ),
    Setting(
        "cache_max_age_hours",
        "float",
        168.0,
        "Hours a staged dataset nobody used stays in a worker's input cache.",
        72,
        "airflow",
        minimum=0,
    ),
    Setting(
        "sweep_every_seconds",
        "float",
        600.0,
        "Seconds between two sweeps of one worker's scratch (old temp dirs, the input cache, partial files); "
        "the lifecycle tasks sweep their own worker at most this often.",
        300,
        "airflow",
        minimum=0,
    ),
    Setting(
        "volume_vacuum",
        "string",
        "",
        "Dotted path of a function of the object store's endpoint that returns the volume compaction the "
        "maintenance DAG runs (as [core] hostname_callable names a function). Empty: none, for stores that "
        "reclaim space themselves (MinIO, S3). The embedded SeaweedFS stack sets it.",
        "e2e3d_provider.devstack.volumes.embedded_vacuum",
        "airflow",
        validate=_dotted_path,
    ),
)

PLATFORM_KEYS: tuple[Setting, ...] = (
    Setting(
        "temp_max_age_hours",
        "float",
        24.0,
        "Hours a run's temp dir may stay on a worker before the sweep removes it (the maintenance DAG's "
        "param temp_max_age_hours wins for that run).",
        48,
        "platform",
        minimum=0,
    ),
    Setting(
        "output_retention_days",
        "float",
        30.0,
        "Days an archived run's results stay in the output bucket after it finished (the archive copy stays); "
        "0 removes them at the next maintenance run. The DAG param output_retention_days wins for that run.",
        14,
        "platform",
        minimum=0,
    ),
    Setting(
        "telemetry_retention_days",
        "float",
        90.0,
        "Days of telemetry kept in PostgreSQL: access log, storage errors, worker disks, transfers, storage snapshots.",
        30,
        "platform",
        minimum=0,
    ),
    Setting(
        "scrub_max_bytes",
        "integer",
        10 * GiB,
        "Bytes of published results the daily scrub re-reads against their checksums; the next run carries on "
        "where it stopped (scrub_cursor).",
        100 * GiB,
        "platform",
        minimum=0,
    ),
    Setting(
        "stray_grace_hours",
        "float",
        24.0,
        "Hours an object no manifest names must be old before storage hygiene counts it a stray (younger ones "
        "may belong to a run being written).",
        48,
        "platform",
        minimum=0,
    ),
    Setting(
        "multipart_max_age_hours",
        "float",
        24.0,
        "Hours after which an incomplete multipart upload is abandoned and aborted by storage hygiene.",
        12,
        "platform",
        minimum=0,
    ),
    Setting(
        "usage_reconcile_budget_seconds",
        "float",
        600.0,
        "Seconds one maintenance run's usage reconciliation may list for (the next run resumes the walk); "
        "0: no bound. The DAG param usage_reconcile_budget_seconds wins for that run.",
        300,
        "platform",
        minimum=0,
    ),
    Setting(
        "storage_capacity_bytes",
        "integer",
        None,
        "The object store's capacity in bytes: the dashboard and the health check project the buckets' fill "
        "against it. Not set (null): no fill date for the store as a whole.",
        10 * 1024**4,
        "platform",
        nullable=True,
        minimum=1,
    ),
    Setting(
        "rightsize",
        "json",
        None,
        "A JSON object of RightSizePolicy fields overriding the right-sizing defaults for every run (an "
        "operator's own settings win); an unknown field is an error. Not set (null): the defaults.",
        {"mesh_lod_ratios": [0.5, 0.1], "web_format": "webp"},
        "platform",
        nullable=True,
        validate=_json_object,
    ),
    Setting(
        "scrub_cursor",
        "json",
        None,
        "Where the rolling scrub stopped (the next run starts after it); written by the scrub.",
        None,
        "platform",
        read_only=True,
        nullable=True,
    ),
    Setting(
        "transfer_throughput_24h",
        "json",
        None,
        "The last 24 h of transfer throughput, recorded by the maintenance DAG's statistics task for the dashboard.",
        None,
        "platform",
        read_only=True,
        nullable=True,
        validate=_json_object,
    ),
)

ENVIRONMENT: tuple[Setting, ...] = (
    Setting(
        DATA_ROOT_ENV,
        "string",
        DEFAULT_DATA_ROOT,
        "A worker's local data root: staged datasets, the input cache, run workspaces and temp dirs (per worker). "
        f"An operator's data_root argument wins; without the variable, the Airflow Variable {DATA_ROOT_VARIABLE} "
        "is read, then the default.",
        "/srv/e2e3d",
        "environment",
    ),
    Setting(
        "E2E3D_STACK_DIR",
        "string",
        None,
        "The developer stack's folder (e2e3d stack, e2e3d airflow, the embedded SeaweedFS's volume compaction). "
        "Not set: <tmp>/e2e3d-stack-<uid>.",
        "/var/tmp/e2e3d-stack",
        "environment",
        nullable=True,
    ),
    Setting(
        "E2E3D_EVENT_LOOP",
        "string",
        "uvloop",
        "The event loop transfers run on: uvloop (less of the client's CPU per small object; used only when "
        "installed, else asyncio's) or asyncio (the standard loop).",
        "asyncio",
        "environment",
        validate=_event_loop,
    ),
    Setting(
        "E2E3D_MINIO_BINARY",
        "string",
        None,
        "The MinIO server executable of `e2e3d stack up --server minio`. Not set: minio on PATH.",
        "/usr/local/bin/minio",
        "environment",
        nullable=True,
    ),
)

#: every setting by name (a name is one setting: an option, a key and a variable never share one)
SETTINGS: dict[str, Setting] = {s.name: s for s in AIRFLOW_OPTIONS + PLATFORM_KEYS + ENVIRONMENT}


def setting(name: str) -> Setting:
    """The declared setting ``name``; KeyError naming the known ones otherwise."""
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"no setting {name!r}; known: {', '.join(sorted(SETTINGS))}") from None


def default(name: str) -> Any:
    """The declared default of ``name`` (what the readers pass as ``fallback=``)."""
    return setting(name).default


def render(value: Any) -> str:
    """A value as Airflow's configuration holds it (a string): ``""`` for None, ``True``/``False``, ``168``
    for ``168.0``, JSON for a structure."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return _plain(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True)


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of ``get_provider_info()`` (Airflow's provider_info schema): the section and each
    option's description, version_added, type, example and default (strings, as Airflow's parser reads them)."""
    return {
        SECTION: {
            "description": "The e2e3d provider: its components' connections, the results API's upload limit, the "
            "PostgreSQL retry deadline, each worker's scratch bounds and the maintenance DAG's volume compaction. "
            "Platform-wide settings (retention, scrub budget, right-sizing policy) are in the PostgreSQL table "
            f"{PLATFORM_TABLE} instead: `e2e3d config list --scope platform`.",
            "options": {
                s.name: {
                    "description": s.description,
                    "version_added": DECLARED_IN,
                    "type": s.type,
                    "example": render(s.example),
                    "default": render(s.default),
                }
                for s in AIRFLOW_OPTIONS
            },
        }
    }


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def coerce(item: Setting, text: str) -> Any:
    """``text`` (from a command line or an environment variable) as a value of ``item``, checked: a number for
    integer/float (``1_000`` and ``1e9`` are fine when whole), true/false for boolean, JSON for json (``null``
    for a nullable key), the text itself for string. ValueError saying what is wrong otherwise."""
    stripped = text.strip()
    value: Any
    if item.nullable and stripped == "null":
        value = None
    elif item.type == "integer":
        try:
            value = int(stripped)
        except ValueError:
            try:
                value = float(stripped)
            except ValueError:
                raise ValueError(f"{item.name} takes a whole number, not {text!r}") from None
    elif item.type == "float":
        try:
            value = int(stripped)
        except ValueError:
            try:
                value = float(stripped)
            except ValueError:
                raise ValueError(f"{item.name} takes a number, not {text!r}") from None
    elif item.type == "boolean":
        if stripped.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{item.name} takes true or false, not {text!r}")
        value = stripped.lower() in _TRUE
    elif item.type == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{item.name} takes JSON ({err.msg} at column {err.colno}): {text!r}") from None
    else:
        value = text
    return item.check(value)


def validate_platform(key: str, value: Any) -> Any:
    """``value`` checked as the ``e2e3d.config`` key ``key`` (the type, bounds and shape declared in
    :data:`PLATFORM_KEYS`) and returned normalised; ValueError naming the key and what is wrong, or naming the
    keys there are when ``key`` is not one (a typo would otherwise be stored and never read)."""
    item = SETTINGS.get(key)
    if item is None or item.scope != "platform":
        known = ", ".join(s.name for s in PLATFORM_KEYS)
        kind = {"airflow": f"an Airflow option: [{SECTION}] {key}", "environment": "an environment variable"}
        hint = f" ({key} is {kind[item.scope]})" if item is not None else ""
        raise ValueError(f"{PLATFORM_TABLE} has no key {key!r}{hint}; the keys are: {known}")
    return item.check(value)


def by_scope(scope: Scope | None = None) -> Iterable[Setting]:
    """The declared settings (Airflow options, platform keys, environment variables), or those of one scope."""
    return [s for s in AIRFLOW_OPTIONS + PLATFORM_KEYS + ENVIRONMENT if scope is None or s.scope == scope]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(scope: Scope) -> str:
    """The settings of ``scope`` as a Markdown table (name, type, default, description, example), for the
    docs' configuration page, which is generated from this module so it cannot drift from the code."""
    if scope == "airflow":
        head = "| option | env | type | default | description | example |\n|---|---|---|---|---|---|\n"
    else:
        first = "key" if scope == "platform" else "variable"
        head = f"| {first} | type | default | description | example |\n|---|---|---|---|---|\n"
    rows = []
    for s in by_scope(scope):
        shown = "*not set*" if s.default is None else "`" + (render(s.default) or '""') + "`"
        example = "" if s.example is None else f"`{_cell(render(s.example))}`"
        description = s.description + (" *Read-only: written by the provider.*" if s.read_only else "")
        cells = [f"`{s.name}`"]
        if scope == "airflow":
            cells.append(f"`{s.env_var}`")
        cells += [s.type, shown, _cell(description), example]
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def markdown_page() -> str:
    """The docs' whole configuration page (MyST Markdown): how each kind of setting is set and read, then
    both tables (:func:`markdown_table`)."""
    return f"""# Configuration

The provider reads two kinds of settings, each declared once in `e2e3d_provider/core/settings.py` (this page is
generated from it).

## Airflow options, section `[{SECTION}]`

What one Airflow component needs before it can reach the platform (its connection ids), or what differs per
machine (a worker's scratch bounds). Set them where each component runs: `airflow.cfg` or the environment
(`AIRFLOW__E2E3D__<NAME>`). The provider declares them to Airflow (`get_provider_info()["config"]`), so
`airflow config list --section {SECTION} --show-values` lists them with their defaults, and an option nobody
set reads as its default. A hook's own argument wins where it takes one (`MetadataHook(retry_deadline=...)`).

{markdown_table("airflow")}
## Platform keys, table `{PLATFORM_TABLE}`

What every component must agree on, stored once in the metadata database (PostgreSQL, schema `e2e3d`).
A maintenance DAG param, where a task offers one, wins for that run; a key not stored reads as its default.

```console
$ e2e3d config list --scope platform          # value, default and source of each key (--json for scripts)
$ e2e3d config set output_retention_days 14   # checked first: a bad value exits 1 and writes nothing
$ e2e3d config set rightsize '{{"web_format": "webp"}}' --dry-run
$ e2e3d config unset output_retention_days    # back to the default
```

From Python, `MetadataHook().set_config(key, value)` checks the value the same way (ValueError naming the
key and the problem, or the keys there are when the name is not one). Read-only keys are written by the
provider itself and shown for information. `e2e3d config set` refuses an Airflow option and prints the
`AIRFLOW__E2E3D__...` line that sets it instead.

{markdown_table("platform")}
## Environment variables

Read from the environment of the process that needs them, outside Airflow's configuration.

{markdown_table("environment")}"""
