"""The gateway's threads for CPU-bound WADO-RS work: rendering and transcoding in place.

Not the default executor (which reads files for every request): one thread per core, so at
most that many renderings and transcodes run at a time and the others wait their turn here;
the event loop only hands work over and awaits it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["run", "size"]

_R = TypeVar("_R")
size = os.cpu_count() or 2
_threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix="wado-cpu")


async def run(fn: Callable[..., _R], *args: object) -> _R:
    """`fn(*args)` in one of the gateway's CPU threads."""
    return await asyncio.get_running_loop().run_in_executor(_threads, fn, *args)
