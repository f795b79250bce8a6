"""`krypton up`: the embedded platform in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


async def run_up(args: argparse.Namespace, state_dir: Path) -> int:
    """Start everything, print where to point a viewer, wait for Ctrl-C, stop cleanly."""
    platform = Platform(
        PlatformConfig(
            state_dir=state_dir,
            http_port=args.http_port,
            nats_port=args.nats_port,
            issuer_port=args.issuer_port,
            replicas=_replicas(args.replicas),
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await platform.start()
    except Exception as exc:
        sys.stderr.write(f"krypton up failed: {exc}\n")
        await platform.stop()
        return 1
    from krypton.auth.dev_issuer import DevIssuer

    issuer = DevIssuer(state_dir / "issuer", platform.issuer_url)
    token = issuer.mint(role="admin", sub="admin-demo", name="Demo Administrator", ttl=12 * 3600)
    platform.supervisor.echo(
        "krypton",
        "\n".join(
            [
                "",
                "Krypton is up.",
                f"  DICOMweb root (QIDO/STOW): {platform.dicomweb_url}",
                f"  API docs:                  {platform.base_url}/api/docs",
                f"  Token issuer (OIDC):       {platform.issuer_url}",
                "  Admin token (12 h), send as 'Authorization: Bearer <token>':",
                f"    {token}",
                "  Other tokens: uv run krypton token --role professional --sub 810001234567 "
                "--structure 330781196",
                f"  Try: curl -H 'Authorization: Bearer <token>' {platform.dicomweb_url}/studies",
                "  Ctrl-C stops everything; data stays in " + str(state_dir),
                "",
            ]
        ),
    )
    demo: asyncio.Task[int] | None = None
    if args.demo:
        from krypton.cli.demo import load_demo

        demo = asyncio.create_task(
            load_demo(
                base_url=platform.base_url,
                state_dir=state_dir,
                issuer_url=platform.issuer_url,
                patients=args.patients,
                seed=20261123,
                with_pydicom_files=True,
                echo=lambda line: platform.supervisor.echo("demo", line),
            )
        )
    await stop.wait()
    if demo is not None and not demo.done():
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
    platform.supervisor.echo("krypton", "stopping...")
    await platform.stop()
    return 0
