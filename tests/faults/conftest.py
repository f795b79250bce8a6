"""Fault-injection suite: options (`--soak`), the platform under test, the results table.

`pytest tests/faults` runs the short bounded campaign (CI). `pytest tests/faults --soak
[--soak-seconds 1800]` (or `KRYPTON_SOAK=1 KRYPTON_SOAK_SECONDS=1800`) cycles through the faults
under load for that long and saves the table to `benchmarks/results/faults.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from krypton.auth.dev_issuer import DevIssuer
from krypton.cli.platform import Platform, PlatformConfig

REPO = Path(__file__).resolve().parents[2]
RESULTS_KEY = pytest.StashKey[list[dict[str, Any]]]()

# The platform under test: verdicts a client waits for are bounded at 8 s (a crashed ingest's
# uploads come back after its 30 s ack wait; the client resends sooner), and the gateway
# refuses new uploads once 30 wait in the ingest stream (backpressure).
PLATFORM_ENV = {
    "KRYPTON_STOW_RESULT_TIMEOUT": "8",
    "KRYPTON_INGEST_BACKLOG_LIMIT": "30",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("krypton faults")
    group.addoption(
        "--soak", action="store_true", default=False, help="long fault campaign (not in CI)"
    )
    group.addoption(
        "--soak-seconds", type=float, default=None, help="soak duration (default 600 s)"
    )
    group.addoption("--faults-json", default=None, help="where to save the results table")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[RESULTS_KEY] = []


class Campaign:
    """How long and where to report, from the options."""

    def __init__(self, config: pytest.Config) -> None:
        self.soak = bool(config.getoption("--soak")) or os.environ.get("KRYPTON_SOAK") == "1"
        seconds = config.getoption("--soak-seconds") or os.environ.get("KRYPTON_SOAK_SECONDS")
        self.seconds = float(seconds) if seconds else 600.0
        chosen = config.getoption("--faults-json")
        self.results = config.stash[RESULTS_KEY]
        if chosen:
            self.json_path: Path | None = Path(chosen)
        elif self.soak:
            self.json_path = REPO / "benchmarks" / "results" / "faults.json"
        else:
            self.json_path = None  # CI: printed only, the tree stays clean

    def record(self, result: dict[str, Any]) -> None:
        """Keep a result for the summary and save it."""
        self.results.append(result)
        if self.json_path is not None:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            self.json_path.write_text(json.dumps(self.results, indent=2, default=str) + "\n")


@pytest.fixture(scope="session")
def campaign(pytestconfig: pytest.Config) -> Campaign:
    return Campaign(pytestconfig)


class Running:
    """A started platform plus token helpers."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.issuer = DevIssuer(platform.state_dir / "issuer", platform.issuer_url)

    @property
    def url(self) -> str:
        return self.platform.dicomweb_url

    def headers(self, role: str, sub: str, structure: str | None = None) -> dict[str, str]:
        token = self.issuer.mint(role=role, sub=sub, structure=structure, ttl=7200)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
async def platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    state = tmp_path_factory.mktemp("faults-platform")
    p = Platform(
        PlatformConfig(
            state_dir=state,
            http_port=0,
            nats_port=0,
            issuer_port=0,
            log_level="WARNING",
            extra_env=PLATFORM_ENV,
        ),
        colour=False,
    )
    async with p.running(timeout=120):
        yield Running(p)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS_KEY, [])
    if not results:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault injection results")
    for result in results:
        write(f"{result['name']}: {result['summary']}")
        for line in result.get("table", []):
            write("  " + line)
