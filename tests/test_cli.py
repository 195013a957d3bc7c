"""The ``e2e3d`` command line as a user meets it: help and defaults on every option, the exit status
(0 success, 1 failure, 2 usage), ``-q/-v``, ``--json`` and ``--dry-run``, ``jobs`` and ``job``.

The parser tests and the subprocess runs without connections need no server (fast tier); those that read
or write the metadata schema or the buckets use the session's servers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from e2e3d_provider import __version__
from e2e3d_provider.cli import COMMAND_MODULES, build_parser, main
from tests.helpers import make_dataset

E2E3D = str(Path(sys.executable).parent / "e2e3d")
STAMP = "20261205T100000Z"
#: commands that change data, and those that report (issue 34: --dry-run on the former, --json on the latter)
CHANGING = {"migrate-inputs", "scrub", "restore", "ingest", "bootstrap"}
REPORTING = {"stack", "stats", "backup", "scrub", "restore", "fetch", "jobs", "job"}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its command line, ``e2e3d`` itself included."""
    found = {parser.prog: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found.update(subparsers(child))
    return found


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([E2E3D, *args], capture_output=True, text=True, timeout=120, env=env)


def no_connections(tmp_path: Path) -> dict[str, str]:
    """An environment in which no connection is defined (and nothing of the session's servers is known)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "E2E3D_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Every option or argument without help, or whose default the help does not show: argparse's
    ``(default: X)``, or for one with no default (None) a help that says in words what happens without it."""
    found = []
    for prog, sub in subparsers(parser).items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
                continue
            name = f"{prog} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                found.append(f"{name}: no help")
            elif not action.option_strings or action.default is argparse.SUPPRESS or action.required:
                continue
            elif action.default is None and "default" not in action.help:
                found.append(f"{name}: no default and the help does not say what happens without it")
            elif action.default is not None and f"(default: {action.default})" not in text:
                found.append(f"{name}: default {action.default!r} not shown")
    return found


def test_every_option_has_help_and_shows_its_default() -> None:
    assert undocumented(build_parser()) == []


def test_the_help_check_sees_an_option_without_help_or_default() -> None:
    parser = build_parser()
    stats = subparsers(parser)["e2e3d stats"]
    stats.add_argument("--planted")
    stats.add_argument("--hidden-default", default=7, help="says nothing of it %(prog)s")
    stats.add_argument("--no-default", help="a value")
    assert undocumented(parser) == [
        "e2e3d stats --planted: no help",
        "e2e3d stats --no-default: no default and the help does not say what happens without it",
    ]
    stats._actions[-2].help = "mentions %(default)s"  # argparse's formatter then leaves it alone
    assert "e2e3d stats --hidden-default: default 7 not shown" in undocumented(parser)


def test_commands_that_change_data_have_a_dry_run_and_those_that_report_json() -> None:
    parsers = subparsers(build_parser())
    for command in CHANGING:
        assert "--dry-run" in parsers[f"e2e3d {command}"]._option_string_actions, command
    for command in REPORTING:
        assert "--json" in parsers[f"e2e3d {command}"]._option_string_actions, command
    # every command has -q/-v, and its help says what the exit status means
    for prog, parser in parsers.items():
        assert {"-q", "-v"} <= set(parser._option_string_actions), prog
        assert "Exit status: 0 success, 1 failure" in " ".join(parser.format_help().split()), prog


def test_each_command_module_adds_its_parser() -> None:
    """The seam a new command group plugs into: a module with ``add_parser(sub)`` in COMMAND_MODULES."""
    for module in COMMAND_MODULES:
        assert callable(module.add_parser), module.__name__
    commands = set(subparsers(build_parser())) - {"e2e3d"}
    assert {"e2e3d jobs", "e2e3d job", "e2e3d stack", "e2e3d scrub"} <= commands


def test_a_command_module_built_with_plain_argparse_gets_the_shared_help_and_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A module may build its parsers with ``sub.add_parser`` (``e2e3d config``): the formatter, the epilog and
    ``-q/-v`` still reach every one of them, nested ones included."""
    import types

    from e2e3d_provider import cli

    def add_parser(sub: argparse._SubParsersAction) -> None:
        group = sub.add_parser("planted", help="a group").add_subparsers(dest="planted_command", required=True)
        leaf = group.add_parser("leaf", help="a leaf")
        leaf.add_argument("--days", type=int, default=3, help="how many")
        leaf.set_defaults(func=lambda args: 0, airflow="none")

    monkeypatch.setattr(cli, "COMMAND_MODULES", [*cli.COMMAND_MODULES, types.SimpleNamespace(add_parser=add_parser)])
    parsers = subparsers(build_parser())
    for prog in ("e2e3d planted", "e2e3d planted leaf"):
        assert {"-q", "-v"} <= set(parsers[prog]._option_string_actions), prog
        assert "Exit status: 0 success" in " ".join(parsers[prog].format_help().split()), prog
    assert "(default: 3)" in parsers["e2e3d planted leaf"].format_help()
    assert undocumented(build_parser()) == []
    assert cli.main(["planted", "leaf", "-q"]) == 0


def test_version_help_and_a_usage_error(tmp_path: Path) -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"e2e3d {__version__}"
    help_ = run("jobs", "--help")
    assert help_.returncode == 0 and "(default: 50)" in help_.stdout and "Exit status" in help_.stdout
    for wrong in (["nosuch"], ["jobs", "--limit", "0"], ["jobs", "--status", "lost"], ["job"]):
        usage = run(*wrong)
        assert usage.returncode == 2, (wrong, usage.stderr)
        assert "usage:" in usage.stderr.lower() and "Traceback" not in usage.stderr


def test_shell_completion_offers_the_commands_and_their_options(tmp_path: Path) -> None:
    """argcomplete (``eval "$(register-python-argcomplete e2e3d)"``) asks the command itself."""
    answer = tmp_path / "completions"
    for line, expected in (("e2e3d jo", {"jobs", "job"}), ("e2e3d jobs --st", {"--status"})):
        env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line))}
        env["_ARGCOMPLETE_STDOUT_FILENAME"] = str(answer)
        assert subprocess.run([E2E3D], env=env, capture_output=True, timeout=60).returncode == 0
        assert {word.strip() for word in answer.read_text().split("\x0b")} == expected, line
    assert "PYTHON_ARGCOMPLETE_OK" in Path(sys.modules["e2e3d_provider.cli"].__file__).read_text()[:1024]


def test_a_runtime_error_exits_1_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = no_connections(tmp_path)
    bad = run("fetch", "bad..id", str(tmp_path / "x"), env=env)
    assert bad.returncode == 1, bad.stderr
    assert bad.stderr.startswith("e2e3d: error: invalid job_id 'bad..id'") and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()


def test_the_logs_warning_shows_only_with_v(tmp_path: Path) -> None:
    """No role connection and no default one: the hook's warning (falling back to minio_default) is the
    libraries' business, shown with -v; without it, and with -q, stderr holds the error alone."""
    env = no_connections(tmp_path)
    args = ("fetch", "some-job", str(tmp_path / "x"))
    plain, quiet, verbose = run(*args, env=env), run("-q", *args, env=env), run(*args, "-v", env=env)
    for result in (plain, quiet, verbose):
        assert result.returncode == 1 and "no Airflow connection 'minio_default'" in result.stderr, result.stderr
    assert plain.stderr.splitlines() == quiet.stderr.splitlines() == [plain.stderr.strip()]
    assert plain.stderr.startswith("e2e3d: error:")
    assert "is not defined: using 'minio_default'" in verbose.stderr  # the warning is there, with -v
    assert plain.stdout == quiet.stdout == verbose.stdout == ""  # and logs never land in the result


def test_a_dag_copy_that_would_clash_exits_1(tmp_path: Path) -> None:
    target = tmp_path / "dags"
    assert main(["dags", "--copy", str(target)]) == 0
    name = next(target.glob("*.py")).name
    (target / name).write_text("# changed by hand\n")
    assert main(["dags", "--copy", str(target)]) == 1
    assert (target / name).read_text() == "# changed by hand\n"


# --- with the session's servers --------------------------------------------------------------------------


def test_migrate_inputs_dry_run_writes_nothing(
    storage, connections: dict, tmp_path: Path, unique_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e3d_provider.core.layout import input_prefix

    make_dataset(tmp_path / "src", [31, 32])
    storage.upload_dir(tmp_path / "src", "input", input_prefix(unique_id))

    def state() -> dict[str, tuple[int, str | None]]:
        everything = storage.list_objects("input", "")
        return {o.key: (o.size, o.etag) for o in everything}

    before = state()
    capsys.readouterr()
    assert main(["migrate-inputs", "--dataset", unique_id, "--dry-run", "--json"]) == 0
    (plan,) = json.loads(capsys.readouterr().out)
    assert plan == {"dataset": unique_id, "loose": 2, "bytes": plan["bytes"], "dry_run": True} and plan["bytes"] > 0
    assert state() == before  # no blob, no manifest, nothing removed
    assert main(["migrate-inputs", "--dataset", unique_id]) == 0  # the control: the real run changes the bucket
    assert f"dataset {unique_id}: 2 loose images adopted" in capsys.readouterr().out
    assert state() != before and storage.list_keys("input", unique_id) == [f"{unique_id}/dataset.json"]


def test_ingest_and_bootstrap_dry_runs_write_nothing(
    storage, metadata, connections: dict, tmp_path: Path, unique_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path / "src", [41, 42, 43])
    capsys.readouterr()
    assert main(["ingest", str(tmp_path / "src"), "--dataset", unique_id, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["would_upload"] == 3 and plan["dry_run"] and storage.list_keys("input", unique_id) == []
    assert main(["bootstrap", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "bucket input: exists" in said and "metadata schema version" in said and "up to date" in said


def test_jobs_and_job_report_as_tables_and_as_json(
    metadata, connections: dict, unique_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = f"ds-{unique_id}"
    metadata.record_job(unique_id, STAMP, dataset, "running")
    metadata.record_job(unique_id, STAMP, dataset, "succeeded", files=2, bytes=300)
    metadata.record_files(
        unique_id,
        STAMP,
        [
            ("mesh", f"{unique_id}/mesh/model.obj", 200, "a" * 64),
            ("mesh", f"{unique_id}/web/model.glb", 100, "b" * 64, "web", "mesh/model.obj", 0, None),
        ],
    )
    capsys.readouterr()
    assert main(["jobs", "--dataset", dataset, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["job_id"], row["stamp"], row["status"]) == (unique_id, STAMP, "succeeded")
    assert main(["jobs", "--dataset", dataset, "--status", "succeeded"]) == 0
    table = capsys.readouterr().out
    assert any(line.split()[:4] == [unique_id, STAMP, dataset, "succeeded"] for line in table.splitlines()), table

    assert main(["job", unique_id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["job"]["status"] == "succeeded" and [h["stamp"] for h in shown["history"]] == [STAMP]
    assert [f["key"] for f in shown["files"]] == [f"{unique_id}/mesh/model.obj"]
    assert [(v["key"], v["role"]) for v in shown["variants"]] == [(f"{unique_id}/web/model.glb", "web")]
    assert main(["job", unique_id]) == 0
    text = capsys.readouterr().out
    assert f"job {unique_id} run {STAMP}: succeeded" in text and "variants (1)" in text and "history (1" in text

    assert main(["job", f"no-{unique_id}"]) == 1
    assert "no job" in capsys.readouterr().err
