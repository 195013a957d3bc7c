"""The developer commands: ``demo``, ``dags`` and ``airflow``."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from e2e3d_provider.commands.output import EXIT_OK, Output, add_command
from e2e3d_provider.commands.stack import STACK_DIR_HELP, stack_dir


def cmd_demo(args: argparse.Namespace) -> int:
    from e2e3d_provider.devstack.demo import run_demo

    return run_demo(
        keep_stack=args.keep_stack,
        stack_dir=Path(args.dir) if args.dir else None,
        workers=args.workers,
        verbose=bool(args.verbose),
    )


def cmd_airflow(args: argparse.Namespace) -> int:
    from e2e3d_provider.devstack.local_airflow import run_local_airflow

    return run_local_airflow(
        stack_dir(args).absolute(), user=args.user, extra_dags=[Path(d) for d in args.dags], dir_given=bool(args.dir)
    )


def cmd_dags(args: argparse.Namespace) -> int:
    """Print the example DAGs' folder and files, or copy them into a DAGs folder (never over a changed file)."""
    from e2e3d_provider.example_dags import DAGS_DIR, dag_files

    out = Output.of(args)
    files = dag_files()
    if not args.copy:
        out.line(str(DAGS_DIR))
        for path in files:
            out.line(f"  {path.name}")
        return EXIT_OK
    target = Path(args.copy)
    target.mkdir(parents=True, exist_ok=True)
    clashes = [p.name for p in files if (target / p.name).exists() and (target / p.name).read_bytes() != p.read_bytes()]
    if clashes and not args.force:
        raise ValueError(f"{target} already holds other versions of {', '.join(clashes)}: --force replaces them")
    for path in files:
        tmp = target / f".{path.name}.e2e3d-partial"
        shutil.copyfile(path, tmp)
        tmp.replace(target / path.name)
        out.line(f"copied {path.name} -> {target / path.name}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = add_command(
        sub,
        "demo",
        "run the whole lifecycle DAG on the embedded stack with a sample dataset",
        cmd_demo,
        description="Run the whole lifecycle DAG on the embedded stack with a sample dataset. Airflow's logs go "
        "to ~/.local/state/e2e3d/demo.log (-v shows them instead).",
    )
    demo.set_defaults(airflow="own")  # it sets Airflow up (home, database) before importing it
    demo.add_argument("--keep-stack", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--dir", help="stack directory (default with --keep-stack: the default stack dir)")
    demo.add_argument(
        "--workers",
        type=int,
        default=1,
        help="2 or more: run on a real Airflow with that many Celery workers, each its own host (root needed)",
    )

    dags = add_command(sub, "dags", "where the example DAGs are installed; --copy puts them in a DAGs folder", cmd_dags)
    dags.add_argument(
        "--copy",
        metavar="DIR",
        help="copy the example DAG files into DIR, e.g. $AIRFLOW_HOME/dags (default: only say where they are)",
    )
    dags.add_argument("--force", action="store_true", help="with --copy: replace files that differ")

    air = add_command(
        sub,
        "airflow",
        "run a real Airflow (api-server, scheduler, dag-processor, triggerer) on the embedded stack",
        cmd_airflow,
    )
    air.set_defaults(airflow="own")
    air.add_argument("--dir", help=STACK_DIR_HELP)
    air.add_argument("--user", default="admin", help="the UI/API user (SimpleAuthManager, role admin)")
    air.add_argument("--dags", action="append", default=[], help="another DAGs folder (repeatable)")
