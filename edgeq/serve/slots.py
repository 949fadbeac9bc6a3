"""The server's slots: N Models of one file (weights shared through the page cache, a KV cache each),
a worker thread per slot, and a bounded first-come queue for requests that find every slot busy.

All methods of SlotPool run on the event loop's thread except the jobs, which run on their slot's
worker thread; a slot goes back to the pool only when its job has really ended (the Model's lock is
free), never when the request that started it goes away. Not here: HTTP, JSON, or sampling.
"""
from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

from ..model import Model


class QueueFull(Exception):
    """Every slot is busy and the queue holds its limit of waiting requests."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Slot:
    """One Model and the one thread that runs its jobs."""

    def __init__(self, index: int, model: Model):
        self.index = index
        self.model = model
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgeq-slot{index}")
        self.cancel: threading.Event | None = None    # the running job's stop flag

    def cached_tokens(self, tokens: Sequence[int]) -> int:
        """How many leading `tokens` this slot's KV cache already holds (read while the slot is idle)."""
        return common_prefix(self.model._cached, tokens)


class SlotPool:
    """Hands out idle slots (the one whose cached prefix matches the prompt longest), queues up to
    `queue_limit` waiting requests in arrival order, refuses the rest with QueueFull."""

    def __init__(self, models: Sequence[Model], queue_limit: int):
        self.slots = [Slot(i, m) for i, m in enumerate(models)]
        self.idle: list[Slot] = list(self.slots)
        self.queue_limit = queue_limit
        self.waiting: collections.deque[tuple[asyncio.Future, Sequence[int]]] = collections.deque()
        self.closing = False
        self.served = 0            # jobs that ended (completed, failed or cancelled)
        self.cancelled = 0         # of which stopped early by their cancel flag

    def status(self) -> dict:
        return {"slots": len(self.slots), "idle": len(self.idle), "busy": len(self.slots) - len(self.idle),
                "waiting": len(self.waiting), "queue_limit": self.queue_limit, "served": self.served,
                "cancelled": self.cancelled}

    def _best(self, tokens: Sequence[int]) -> Slot:
        slot = max(self.idle, key=lambda s: (s.cached_tokens(tokens), -s.index))
        self.idle.remove(slot)
        return slot

    async def acquire(self, tokens: Sequence[int]) -> Slot:
        """An idle slot for a prompt of `tokens`, waiting in the queue when none is; QueueFull when
        the queue is full too. A caller cancelled while waiting leaves the queue."""
        if self.closing:
            raise QueueFull("the server is shutting down")
        if self.idle and not self.waiting:
            return self._best(tokens)
        if len(self.waiting) >= self.queue_limit:
            raise QueueFull(f"all {len(self.slots)} slots are busy and {len(self.waiting)} requests are waiting")
        future = asyncio.get_running_loop().create_future()
        entry = (future, tokens)
        self.waiting.append(entry)
        try:
            return await future
        except asyncio.CancelledError:
            if entry in self.waiting:
                self.waiting.remove(entry)
            elif future.done() and not future.cancelled():
                self.release(future.result())       # handed over just as the caller left: give it back
            raise

    def release(self, slot: Slot) -> None:
        """Back to the pool: straight to the first waiting request, if any."""
        slot.cancel = None
        while self.waiting:
            future, tokens = self.waiting.popleft()
            if not future.done():
                self.idle.append(slot)
                future.set_result(self._best(tokens))
                return
        self.idle.append(slot)

    def submit(self, slot: Slot, job: Callable[[Model, threading.Event], object],
               cancel: threading.Event) -> asyncio.Future:
        """Run job(model, cancel) on the slot's thread; setting `cancel` asks it to stop. The slot
        returns to the pool when the job ends, whatever becomes of the request. Returns an awaitable
        for the job's result."""
        loop = asyncio.get_running_loop()
        slot.cancel = cancel
        if self.closing:
            cancel.set()

        def ended(done: Future) -> None:
            def back():
                self.served += 1
                self.cancelled += cancel.is_set()
                self.release(slot)
            loop.call_soon_threadsafe(back)

        work = slot.executor.submit(job, slot.model, cancel)
        work.add_done_callback(ended)
        result = asyncio.wrap_future(work, loop=loop)
        # an error is retrieved here even when no request waits for it any more
        result.add_done_callback(lambda done: done.cancelled() or done.exception())
        return result

    def cancel_all(self) -> None:
        """Stop every running job at its next token (or batch of prompt tokens) and refuse new requests (shutdown)."""
        self.closing = True
        for slot in self.slots:
            if slot.cancel is not None:
                slot.cancel.set()
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(QueueFull("the server is shutting down"))

    def close(self) -> None:
        """Wait for the workers, then free the models (after the event loop has stopped)."""
        for slot in self.slots:
            if slot.cancel is not None:
                slot.cancel.set()
            slot.executor.shutdown(wait=True)
            slot.model.close()
