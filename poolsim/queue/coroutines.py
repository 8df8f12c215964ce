"""Where the queue server runs ``async def`` handlers: one event loop in a dedicated thread.

:class:`Coroutines` owns that loop, its daemon thread and an
:class:`~poolsim.aio.AsyncWorkerPool` of ``workers`` coroutine workers living on it. The
server's fetcher thread hands it claimed attempts with :meth:`Coroutines.submit`
(``asyncio.run_coroutine_threadsafe``); on the loop each attempt is queued on the pool,
which runs the server's ``run(attempt)`` coroutine. The attempt's ``on_cancel`` is set
so that a timeout, a lost lease or a shutdown — decided on another thread — cancels the
coroutine for real (``CancelledError`` inside the handler).

The attempt's place is freed (``release()``) exactly once: when its coroutine ends, or,
if it never started, when the pool drops it. If the pool refuses the attempt,
``refuse(attempt)`` is called off the loop (it frees the place and hands the task back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable

from poolsim.aio import AsyncWorkerPool
from poolsim.queue.attempts import Attempt

__all__ = ["Coroutines"]

_log = logging.getLogger("poolsim.queue")


class Coroutines:
    """An event loop on a daemon thread, with a coroutine pool on it, for coroutine handlers.

    ``run(attempt)`` runs one attempt's handler on the loop; ``release()`` frees its place;
    ``refuse(attempt)`` (called in a worker thread) gives back an attempt the pool refused.
    """

    def __init__(self, *, workers: int, name: str,
                 run: Callable[[Attempt], Awaitable[None]], release: Callable[[], None],
                 refuse: Callable[[Attempt], None]) -> None:
        self.workers = workers
        self.name = name  # the server's lease-holder name
        self._run = run
        self._release = release
        self._refuse = refuse
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pool: AsyncWorkerPool | None = None

    def start(self) -> None:
        """Start the loop's thread and make the coroutine pool on it; returns when ready."""
        self._loop = loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                        name=f"poolsim-queue-loop-{self.name}")
        self._thread.start()

        async def make() -> AsyncWorkerPool:  # its events belong to this loop
            return AsyncWorkerPool(workers=self.workers, queue_size=self.workers,
                                   name=f"queue-server-async-{self.name}")

        self._pool = asyncio.run_coroutine_threadsafe(make(), loop).result()

    def submit(self, attempt: Attempt) -> None:
        """From any thread: queue ``attempt`` on the coroutine pool (raises if the loop is
        gone; then nothing was queued)."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._submit(attempt), self._loop)

    def stop(self) -> None:
        """Shut the pool down ``immediate`` (cancelling what still runs — already handed
        back), stop the loop and join its thread (up to 5 s each)."""
        loop, thread, pool = self._loop, self._thread, self._pool
        if loop is None or thread is None or pool is None:
            return
        try:  # cancels what still runs (already handed back) for real
            asyncio.run_coroutine_threadsafe(pool.shutdown("immediate", 1.0), loop).result(5.0)
        except Exception:
            _log.exception("the coroutine pool did not shut down cleanly")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        if not thread.is_alive():
            loop.close()

    async def _submit(self, attempt: Attempt) -> None:
        """On the event loop: queue the attempt on the coroutine pool. Its place is freed
        when the coroutine ends (or, if it never started, when the pool drops it)."""
        assert self._pool is not None and self._loop is not None
        loop, ran = self._loop, False

        async def body() -> None:
            nonlocal ran
            ran = True
            try:
                await self._run(attempt)
            finally:
                self._release()

        try:
            handle = await self._pool.submit(body, task_type=attempt.info.type)
        except Exception:
            _log.exception("could not run task %s; handing it back", attempt.info.id)
            await asyncio.to_thread(self._refuse, attempt)
            return

        def never_ran(done: asyncio.Future[None]) -> None:
            if not ran:
                self._release()

        def cancel() -> None:  # from another thread: a timeout, a lost lease, a shutdown
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to stop
                loop.call_soon_threadsafe(handle.cancel)  # the pool cancels the coroutine

        handle.add_done_callback(never_ran)
        attempt.on_cancel = cancel
        if attempt.decided is not None:  # settled before on_cancel was set
            cancel()
