"""The embedded servers the platform and the tests start are stopped, not left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from krypton.testing.servers import start_postgres, stop_postgres


def _alive(pid: int) -> bool:
    """Running, not a zombie (this process started it and may not have reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.postgres
def test_stop_postgres_stops_the_embedded_cluster_and_is_idempotent(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    start_postgres(data)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    assert _alive(pid)
    stop_postgres(data)
    assert not (data / "postmaster.pid").exists()
    assert not _alive(pid)
    stop_postgres(data)  # nothing left to stop: no error
