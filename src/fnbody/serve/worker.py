"""One worker thread per model, fed by a bounded queue; asyncio waits on it without blocking.

The HTTP side never calls the model itself: it submits a `Job` and awaits its result (or its
streamed pieces) on the event loop. The worker runs jobs one at a time on its own thread, so there
is one model instance and no concurrent use of it; torch releases the GIL while it computes, so
the event loop keeps answering /health, 429s and other requests meanwhile. A full queue refuses
new work at once (`QueueFull` -> HTTP 429) instead of letting latency grow without bound.

Cancellation is cooperative: `Job.cancel()` sets a flag that the job's function checks between
units of work (a streamed piece, a prompt). A job cancelled while still queued never runs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

_STOP = object()  # put on the queue to end the worker thread


class QueueFull(Exception):
    """The worker's queue holds `maxsize` jobs already."""


class Cancelled(Exception):
    """The job was cancelled (client gone or timed out) before it finished."""


class Job:
    """One unit of work: `fn(job)` runs on the worker thread; its return value resolves `result`.

    `fn` may call `job.emit(item)` to send items to the event loop as it goes (`job.items`),
    and should check `job.cancelled` between steps and return early when it is set.
    """

    def __init__(self, fn: Callable[["Job"], Any], loop: asyncio.AbstractEventLoop):
        self.fn = fn
        self.loop = loop
        self.result: asyncio.Future = loop.create_future()
        self.items: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        # A request that timed out or lost its client never reads the result: mark errors as seen.
        self.result.add_done_callback(lambda f: f.cancelled() or f.exception())

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the job to stop at its next check (thread-safe, idempotent)."""
        self._cancelled.set()

    def emit(self, item: Any) -> None:
        """Hand one item to the event loop (called from the worker thread)."""
        self.loop.call_soon_threadsafe(self.items.put_nowait, item)

    def _resolve(self, value: Any = None, error: BaseException | None = None) -> None:
        def set_result() -> None:
            if self.result.done():
                return
            if error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(value)

        try:
            self.loop.call_soon_threadsafe(set_result)
        except RuntimeError:  # the event loop closed while the job ran (server shutting down)
            pass


class Worker:
    """A single daemon thread running submitted jobs in order from a bounded queue."""

    def __init__(self, name: str, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self.name = name
        self.maxsize = maxsize
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self._thread = threading.Thread(target=self._run, name=f"fnbody-{name}", daemon=True)
        self.busy = False  # a job is running now
        self.completed = 0
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._queue.qsize()

    def submit(self, fn: Callable[[Job], Any]) -> Job:
        """Queue `fn` to run on the worker; raise `QueueFull` at once when the queue is full."""
        job = Job(fn, asyncio.get_running_loop())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the {self.name} queue is full ({self.maxsize} requests waiting); retry later") from None
        return job

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the running job; queued jobs are cancelled."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                job.cancel()
                job._resolve(error=Cancelled("server shutting down"))
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if job.cancelled:  # its client left or timed out while it waited
                job._resolve(error=Cancelled("cancelled before it started"))
                continue
            self.busy = True
            try:
                value = job.fn(job)
            except BaseException as e:  # noqa: BLE001 - the error belongs to the request, not the worker
                if not isinstance(e, Exception):
                    log.exception("worker %s: job raised %r", self.name, e)
                job._resolve(error=e if isinstance(e, Exception) else RuntimeError(repr(e)))
            else:
                job._resolve(value=value)
            finally:
                self.busy = False
                self.completed += 1
