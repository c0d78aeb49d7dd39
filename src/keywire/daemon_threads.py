"""Blocking calls (``getaddrinfo``) on daemon threads, so a command can always exit.

asyncio resolves names with ``socket.getaddrinfo`` on its default executor, and
``asyncio.run`` joins that executor's threads before it returns; a lookup that hangs (a name
server that never answers: the C resolver waits ``timeout`` × ``attempts``, minutes) then holds
the process long after ``--timeout`` or Ctrl-C ended the command. A thread here is a daemon
that nobody joins: an abandoned lookup ends with the process.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Awaitable, Callable
from typing import Any


class DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """One daemon thread per call (resolver calls are few); ``shutdown`` waits for none.

    A ``ThreadPoolExecutor`` only in type (asyncio takes no other kind); its pool is unused.
    """

    def submit[T](  # type: ignore[override]
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name="keywire-blocking", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to join: a call still running is abandoned with the process."""


async def with_daemon_executor[T](main: Awaitable[T]) -> T:
    """Run ``main`` with the running loop's default executor made of daemon threads."""
    asyncio.get_running_loop().set_default_executor(DaemonExecutor())
    return await main
