"""Rewrite the generated NATS permission blocks from `krypton.bus.permissions`.

Run after changing the permission table: `.venv/bin/python deploy/nats/regenerate.py`.
It rewrites the `authorization` block of deploy/nats/permissions.conf (compose) and the
`users` list of deploy/k8s/nats-values.yaml (Helm); tests/deploy/test_nats_permissions.py
fails until both match the table.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from krypton.bus.permissions import (
    PERMISSIONS,
    authorization_users,
    nats_authorization,
    password_variable,
)

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "nats" / "permissions.conf"
VALUES = ROOT / "deploy" / "k8s" / "nats-values.yaml"
USERS_INDENT = "      "  # `users:` sits under config.merge.authorization


def regenerate_conf() -> None:
    """Keep the comment header of permissions.conf, regenerate the rest."""
    text = CONF.read_text()
    header = text[: text.index("authorization {")]
    CONF.write_text(
        header + nats_authorization({s: "$" + password_variable(s) for s in PERMISSIONS})
    )


def regenerate_values() -> None:
    """Replace the users list in the Helm values, keeping every other line (and comment)."""
    lines = VALUES.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == "    authorization:") + 2
    if lines[start - 1].strip() != "users:":
        msg = "nats-values.yaml: `users:` must follow `authorization:`"
        raise SystemExit(msg)
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith(USERS_INDENT))
    dumped = yaml.safe_dump(authorization_users(), sort_keys=False, width=1000)
    block = [USERS_INDENT + line if line.strip() else line for line in dumped.splitlines(True)]
    VALUES.write_text("".join(lines[:start] + block + lines[end:]))


if __name__ == "__main__":
    regenerate_conf()
    regenerate_values()
