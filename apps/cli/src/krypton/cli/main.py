"""The `krypton` command.

krypton up [--demo]           the whole platform on this machine (embedded default)
krypton run SERVICE           one service against configured NATS / PostgreSQL / storage
krypton token --role ROLE ... a signed development token
krypton demo load             demo data through the public DICOMweb API
krypton edge [box|region]     the producer edge box (DIMSE, store-and-forward), or its region side
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import runpy
import signal
import sys
from pathlib import Path

from krypton.audit.verify import add_parser as add_audit_parser

__all__ = ["main"]

_RUNNABLE = ("gateway", "ingest", "index", "authorize", "render", "audit")


def _issuer_url(args: argparse.Namespace) -> str:
    return os.environ.get("KRYPTON_ISSUER_URL", f"http://127.0.0.1:{args.issuer_port}")


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or os.environ.get("KRYPTON_STATE_DIR", ".state")).resolve()


def _cmd_up(args: argparse.Namespace) -> int:
    from krypton.cli.up import run_up

    return asyncio.run(run_up(args, _state_dir(args)))


def _cmd_run(args: argparse.Namespace) -> int:
    sys.argv = [f"krypton-{args.service}"]
    runpy.run_module(f"krypton.{args.service}", run_name="__main__")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from krypton.auth.dev_issuer import DevIssuer

    issuer = DevIssuer(_state_dir(args) / "issuer", _issuer_url(args))
    token = issuer.mint(
        role=args.role,
        sub=args.sub,
        structure=args.structure,
        name=args.name,
        profession=args.profession,
        ins=args.ins,
        ttl=args.ttl,
    )
    sys.stdout.write(token + "\n")
    return 0


def _cmd_issuer(args: argparse.Namespace) -> int:
    import uvicorn

    from krypton.auth.dev_issuer import DevIssuer, create_app
    from krypton.core.logging import configure_logging

    configure_logging("issuer", "INFO", None)
    issuer = DevIssuer(_state_dir(args) / "issuer", _issuer_url(args))
    uvicorn.run(
        create_app(issuer), host="127.0.0.1", port=args.port, log_config=None, access_log=False
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from krypton.cli.demo import load_demo

    return asyncio.run(
        load_demo(
            base_url=args.url,
            state_dir=_state_dir(args),
            issuer_url=_issuer_url(args),
            patients=args.patients,
            seed=args.seed,
            with_pydicom_files=not args.no_pydicom_files,
        )
    )


def _cmd_edge(args: argparse.Namespace) -> int:
    if args.side == "region":
        from krypton.edge.region import main as region_main

        region_main()
    else:
        from krypton.edge.app import main as box_main

        box_main()
    return 0


def _embedded_dsn(state_dir: Path) -> None:
    """Point maintenance commands at the embedded PostgreSQL of `krypton up` unless told otherwise."""
    dsn_file = state_dir / "pg-dsn"
    if "KRYPTON_PG_DSN" not in os.environ and dsn_file.exists():
        os.environ["KRYPTON_PG_DSN"] = dsn_file.read_text().strip()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="krypton", description="Krypton regional imaging platform"
    )
    parser.add_argument("--state-dir", help="where the embedded platform keeps its data (.state)")
    parser.add_argument("--issuer-port", type=int, default=8081)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole platform on this machine")
    up.add_argument("--http-port", type=int, default=int(os.environ.get("KRYPTON_HTTP_PORT", 8080)))
    up.add_argument("--nats-port", type=int, default=4222)
    up.add_argument("--demo", action="store_true", help="load demo data once the platform is ready")
    up.add_argument("--patients", type=int, default=300, help="synthetic demo patients")
    up.add_argument("--replicas", action="append", default=[], metavar="SERVICE=N")
    up.add_argument(
        "--leafnode-port",
        type=int,
        default=None,
        help="open a NATS leaf node listener for edge boxes (e.g. 7422)",
    )
    up.add_argument(
        "--edge-leaf-passwords",
        default=None,
        metavar="FILE",
        help='JSON {"<finess>": "<password>"} of the edge boxes the leaf listener admits',
    )
    up.set_defaults(func=_cmd_up)

    run = sub.add_parser("run", help="run one service (production style)")
    run.add_argument("service", choices=_RUNNABLE)
    run.set_defaults(func=_cmd_run)

    token = sub.add_parser("token", help="print a signed development token")
    token.add_argument(
        "--role", required=True, choices=["producer", "professional", "patient", "admin"]
    )
    token.add_argument("--sub", required=True, help="subject: IDNPS, system id, or patient id")
    token.add_argument("--structure", help="FINESS of the structure the caller acts for")
    token.add_argument("--name")
    token.add_argument("--profession")
    token.add_argument("--ins", help="patient's INS (role patient)")
    token.add_argument("--ttl", type=int, default=8 * 3600)
    token.set_defaults(func=_cmd_token)

    issuer = sub.add_parser("issuer", help="serve the development token issuer")
    issuer.add_argument("--port", type=int, default=8081)
    issuer.set_defaults(func=_cmd_issuer)

    add_audit_parser(sub)

    demo = sub.add_parser("demo", help="demo data")
    demo_sub = demo.add_subparsers(dest="demo_command", required=True)
    load = demo_sub.add_parser("load", help="push demo studies through STOW-RS")
    load.add_argument("--url", default="http://127.0.0.1:8080")
    load.add_argument("--patients", type=int, default=300)
    load.add_argument("--seed", type=int, default=20261123)
    load.add_argument("--no-pydicom-files", action="store_true")
    load.set_defaults(func=_cmd_demo)

    edge = sub.add_parser(
        "edge",
        help="the producer edge box (settings: KRYPTON_EDGE_*), or its region-side forwarder",
    )
    edge.add_argument("side", nargs="?", choices=["box", "region"], default="box")
    edge.set_defaults(func=_cmd_edge)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `krypton` command."""
    args = build_parser().parse_args(argv)
    if args.command == "audit":
        _embedded_dsn(_state_dir(args))
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(args.func(args))


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
