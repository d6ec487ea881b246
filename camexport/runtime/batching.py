"""Dynamic batching, as Triton's dynamic batcher does it: concurrent requests become one graph run.

Each request's item waits in a queue. The batcher takes the oldest item and then everything that arrives
until the batch is full (``max_batch``) or the oldest item has waited ``max_wait_s``; while one batch runs on
the graph, the next one fills, and items that waited through the run go straight into it. Unlike Triton, it
does not wait when no other item is on its way (``coming()``: requests being read or decoded): a lone request
runs at once. One graph run at
a time, on its own thread: onnxruntime spreads one run over the cores, so two runs at once only compete.

Items of another shape than the batch's first (a ``--dynamic-size`` graph) wait for a later batch.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

Result = TypeVar("Result")


@dataclass
class Pending(Generic[Result]):
    """One queued item: its graph input, its class (−1: top-1) and the future its request awaits."""

    pixels: np.ndarray
    target: int
    future: asyncio.Future[Result]
    arrived: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class BatchStats:
    """What one graph run held and took (for the server's metrics)."""

    size: int
    waited_s: float  # the oldest item's wait in the queue
    run_s: float


class DynamicBatcher(Generic[Result]):
    """Collects items into batches and runs ``run_batch(pixels [N, ...], targets [N])`` → N results.

    Args:
        run_batch: the graph run; it may raise, and then every item of that batch gets the exception.
        max_batch: most items per run.
        max_wait_s: longest an item waits for others before its batch runs.
        on_batch: called after each run with its :class:`BatchStats`.
        coming: how many items are on their way to :meth:`submit` (0: a batch need not wait for more).
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray, np.ndarray], Sequence[Result]],
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[BatchStats], None] = lambda _stats: None,
        coming: Callable[[], int] = lambda: 1,
    ) -> None:
        self.run_batch, self.max_batch, self.max_wait_s, self.on_batch = run_batch, max_batch, max_wait_s, on_batch
        self.coming = coming
        self._queue: asyncio.Queue[Pending[Result]] = asyncio.Queue()
        self._held: collections.deque[Pending[Result]] = collections.deque()  # of another shape, taken first
        self._graph = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="graph")
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Items queued and not yet in a batch."""
        return self._queue.qsize() + len(self._held)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="dynamic-batcher")

    async def stop(self) -> None:
        """Stops after the batch in progress (the server drains its requests before calling this)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._graph.shutdown(wait=True)

    async def submit(self, pixels: np.ndarray, target: int) -> Result:
        """Queues one item and waits for its result (or the exception its batch raised)."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(Pending(pixels, target, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            batch = [item for item in batch if not item.future.done()]  # requests gone meanwhile are not run
            if batch:
                await self._run(batch)

    async def _collect(self) -> list[Pending[Result]]:
        """The oldest item, then whatever arrives until the batch is full or the oldest has waited long enough."""
        first = self._held.popleft() if self._held else await self._queue.get()
        batch = [first]
        deadline = first.arrived + self.max_wait_s
        for _ in range(len(self._held)):
            self._take(batch, self._held.popleft())
        while len(batch) < self.max_batch:
            if self._queue.empty() and not self.coming():
                break
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                else:
                    item = self._queue.get_nowait()
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            self._take(batch, item)
        return batch

    def _take(self, batch: list[Pending[Result]], item: Pending[Result]) -> None:
        fits = len(batch) < self.max_batch and item.pixels.shape == batch[0].pixels.shape
        (batch if fits else self._held).append(item)

    async def _run(self, batch: list[Pending[Result]]) -> None:
        pixels = np.stack([item.pixels for item in batch])
        targets = np.array([item.target for item in batch], dtype=np.int64)
        started = time.monotonic()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._graph, self.run_batch, pixels, targets)
        except Exception as exc:  # the batch's requests answer with it; the batcher goes on
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        else:
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        self.on_batch(BatchStats(len(batch), started - batch[0].arrived, time.monotonic() - started))
