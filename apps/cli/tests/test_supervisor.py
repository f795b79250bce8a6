"""The supervisor restarts children that die and stops them all cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krypton.cli.supervisor import Supervisor


async def test_a_child_that_exits_is_restarted_and_stop_terminates_the_rest(capsys) -> None:  # type: ignore[no-untyped-def]
    supervisor = Supervisor(colour=False)
    supervisor.add("quitter", [sys.executable, "-c", "print('hello'); raise SystemExit(3)"])
    supervisor.add(
        "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    )
    await supervisor.start()
    await supervisor.wait_restarted("quitter", 2, timeout=10)
    assert supervisor.children["quitter"].restarts >= 2
    sleeper = supervisor.children["sleeper"].proc
    assert sleeper is not None
    assert sleeper.returncode is None
    await supervisor.stop(timeout=5)
    assert sleeper.returncode is not None
    out = capsys.readouterr().out
    assert "quitter  | hello" in out
    assert "exited with 3" in out
    assert "sleeper  | up" in out


_ORPHANING_SUPERVISOR = """
import asyncio, sys, time
from krypton.cli.supervisor import Supervisor

async def main() -> None:
    supervisor = Supervisor(colour=False)
    supervisor.add("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"])
    await supervisor.start()
    while (child := supervisor.children["sleeper"]).proc is None:
        await asyncio.sleep(0.05)
    print(child.proc.pid, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux only")
def test_children_end_when_the_supervisor_is_killed_without_cleanup() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHANING_SUPERVISOR], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if parent.stdout is not None:
            parent.stdout.close()
