"""`krypton up`: the embedded platform in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from krypton.cli.platform import Platform, PlatformConfig

__all__ = ["run_up"]


def _replicas(items: list[str]) -> dict[str, int]:
    result: dict[str, int] = {}
    for item in items:
        name, _, count = item.partition("=")
        result[name] = int(count or 1)
    return result


def _edge_leaf_passwords(path: str | None) -> dict[str, str]:
    """The edge boxes' leaf passwords: a JSON object FINESS -> password (a secrets file)."""
    if not path:
        return {}
    passwords = json.loads(Path(path).read_text())
    if not isinstance(passwords, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in passwords.items()
    ):
        msg = f"{path}: expected a JSON object of FINESS to password"
        raise SystemExit(msg)
    return passwords


async def run_up(args: argparse.Namespace, state_dir: Path) -> int:
    """Start everything, print where to point a viewer, wait for Ctrl-C, stop cleanly."""
    platform = Platform(
        PlatformConfig(
            state_dir=state_dir,
            http_port=args.http_port,
            nats_port=args.nats_port,
            issuer_port=args.issuer_port,
            replicas=_replicas(args.replicas),
            metrics="default",
            leafnode_port=args.leafnode_port,
            edge_leaf_passwords=_edge_leaf_passwords(args.edge_leaf_passwords),
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await platform.start()
        _announce(platform, state_dir)
        demo = _start_demo(args, platform, state_dir) if args.demo else None
        await stop.wait()
        if demo is not None and not demo.done():
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await demo
    except Exception as exc:
        sys.stderr.write(f"krypton up failed: {exc}\n")
        return 1
    finally:
        platform.supervisor.echo("krypton", "stopping...")
        await platform.stop()
    return 0


def _announce(platform: Platform, state_dir: Path) -> None:
    from krypton.auth.dev_issuer import DevIssuer

    issuer = DevIssuer(state_dir / "issuer", platform.issuer_url)
    token = issuer.mint(role="admin", sub="admin-demo", name="Demo Administrator", ttl=12 * 3600)
    lines = [
        "",
        "Krypton is up.",
        f"  DICOMweb root (QIDO/STOW): {platform.dicomweb_url}",
        f"  API docs:                  {platform.base_url}/api/docs",
        f"  Token issuer (OIDC):       {platform.issuer_url}",
        "  Admin token (12 h), send as 'Authorization: Bearer <token>':",
        f"    {token}",
        "  Other tokens: .tools/bin/uv run krypton token --role professional "
        "--sub 810001234567 --structure 330781196",
        f"  Try: curl -H 'Authorization: Bearer <token>' {platform.dicomweb_url}/studies",
        f"  Ctrl-C stops everything; data stays in {state_dir}",
        "",
    ]
    platform.supervisor.echo("krypton", "\n".join(lines))


def _start_demo(args: argparse.Namespace, platform: Platform, state_dir: Path) -> asyncio.Task[int]:
    from krypton.cli.demo import load_demo

    def echo(line: str) -> None:
        platform.supervisor.echo("demo", line)

    task = asyncio.create_task(
        load_demo(
            base_url=platform.base_url,
            state_dir=state_dir,
            issuer_url=platform.issuer_url,
            patients=args.patients,
            seed=20261123,
            with_pydicom_files=True,
            echo=echo,
        )
    )

    def report(done: asyncio.Task[int]) -> None:
        if done.cancelled():
            return
        if (exc := done.exception()) is not None:
            echo(f"demo data load failed: {exc!r}")

    task.add_done_callback(report)
    return task
