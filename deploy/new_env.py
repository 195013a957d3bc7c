#!/usr/bin/env python3
"""Print a docker-compose ``.env`` with fresh secrets: ``python3 deploy/new_env.py > .env``.

Reads ``.env.example`` beside the compose file and fills every secret it leaves empty (the passwords, the
JWT secret, the API secret key, the Fernet key) with a new random value; every other line is kept as it is.
docker-compose.yaml refuses to start while any of them is unset, so no deployment runs on a known default.
Python's standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import base64
import re
import secrets
import sys
from pathlib import Path

#: the variables that hold secrets, and how each is made
FERNET = ("AIRFLOW_FERNET_KEY",)
LONG = ("AIRFLOW_JWT_SECRET", "AIRFLOW_SECRET_KEY")  # HS512 and Flask want at least 64 bytes
SECRET = re.compile(r"^[A-Z0-9_]*(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY)$")


def fresh(name: str) -> str:
    """A new value for the secret ``name``."""
    if name in FERNET:
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    if name in LONG:
        return secrets.token_urlsafe(64)
    return secrets.token_urlsafe(24)  # MinIO wants 8 to 40 characters


def new_env(example: str) -> str:
    """``example`` with each empty secret filled."""
    lines = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith("#") and SECRET.match(name) and not value.strip():
            line = f"{name}={fresh(name)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / ".env.example"
    sys.stdout.write(new_env(source.read_text()))
