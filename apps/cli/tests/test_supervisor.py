"""The supervisor restarts children that die and stops them all cleanly."""

from __future__ import annotations

import sys

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
