"""The dynamic batcher on its own: a fake graph whose answer is each item's value plus its class."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from camexport.runtime.batching import BatchStats, DynamicBatcher


class FakeGraph:
    """Records each run's batch; answers ``pixels.sum() + target`` per item (so a mix-up shows)."""

    def __init__(self, fail_on: int | None = None, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail_on, self.delay_s = fail_on, delay_s

    def __call__(self, pixels: np.ndarray, targets: np.ndarray) -> list[float]:
        time.sleep(self.delay_s)
        self.batches.append(targets.tolist())
        if self.fail_on is not None and self.fail_on in targets:
            raise RuntimeError("graph failed")
        return [float(p.sum()) + int(t) for p, t in zip(pixels, targets, strict=True)]


def run(coroutine_factory):
    return asyncio.run(coroutine_factory())


async def _submit_all(batcher: DynamicBatcher, items: list[tuple[np.ndarray, int]]) -> list:
    batcher.start()
    try:
        return await asyncio.gather(*(batcher.submit(p, t) for p, t in items), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_items_share_runs_up_to_max_batch_and_get_their_own_answers() -> None:
    graph, stats = FakeGraph(delay_s=0.01), []
    items = [(np.full((2, 2), i, np.float32), i) for i in range(10)]

    async def go():
        return await _submit_all(DynamicBatcher(graph, 4, 0.05, stats.append), items)

    answers = run(go)
    assert answers == [4.0 * i + i for i in range(10)]
    assert [len(b) for b in graph.batches] == [4, 4, 2]
    assert sorted(t for b in graph.batches for t in b) == list(range(10))
    assert all(isinstance(s, BatchStats) and s.run_s >= 0.01 for s in stats) and [s.size for s in stats] == [4, 4, 2]


def test_a_lone_item_runs_at_once_when_nothing_else_is_coming() -> None:
    graph = FakeGraph()

    async def go():
        batcher = DynamicBatcher(graph, 8, 5.0, coming=lambda: 0)  # a 5 s wait that must not be taken
        started = time.monotonic()
        answers = await _submit_all(batcher, [(np.ones((1,), np.float32), 3)])
        return answers, time.monotonic() - started

    answers, seconds = run(go)
    assert answers == [4.0] and seconds < 1.0 and graph.batches == [[3]]


def test_an_item_waits_at_most_max_wait_for_company() -> None:
    graph = FakeGraph()

    async def go():
        batcher = DynamicBatcher(graph, 8, 0.2, coming=lambda: 1)  # something "coming" that never arrives
        batcher.start()
        started = time.monotonic()
        answer = await batcher.submit(np.zeros((1,), np.float32), 1)
        waited = time.monotonic() - started
        await batcher.stop()
        return answer, waited

    answer, waited = run(go)
    assert answer == 1.0 and 0.15 <= waited < 1.0


def test_a_failing_run_answers_its_items_with_the_error_and_the_batcher_goes_on() -> None:
    graph = FakeGraph(fail_on=7)

    async def go():
        batcher = DynamicBatcher(graph, 2, 0.05)
        batcher.start()
        first = await asyncio.gather(
            batcher.submit(np.zeros(1, np.float32), 7), batcher.submit(np.zeros(1, np.float32), 1),
            return_exceptions=True,
        )  # fmt: skip
        later = await batcher.submit(np.ones(1, np.float32), 2)
        await batcher.stop()
        return first, later

    first, later = run(go)
    assert all(isinstance(r, RuntimeError) for r in first) and later == 3.0


def test_items_of_another_shape_wait_for_a_batch_of_their_own() -> None:
    graph = FakeGraph()
    items = [(np.zeros((2, 2), np.float32), 0), (np.zeros((3, 3), np.float32), 1), (np.zeros((2, 2), np.float32), 2)]

    async def go():
        return await _submit_all(DynamicBatcher(graph, 8, 0.05), items)

    assert run(go) == [0.0, 1.0, 2.0]
    assert sorted(map(sorted, graph.batches)) == [[0, 2], [1]]


def test_an_abandoned_item_is_not_run() -> None:
    graph = FakeGraph(delay_s=0.05)

    async def go():
        batcher = DynamicBatcher(graph, 1, 0.0)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), 1))
        await asyncio.sleep(0.01)  # the graph is running item 1
        gone = asyncio.ensure_future(batcher.submit(np.zeros(1, np.float32), 2))
        await asyncio.sleep(0)
        gone.cancel()  # its client went away while it waited
        answer = await busy
        await asyncio.sleep(0.1)
        await batcher.stop()
        return answer

    assert run(go) == 1.0 and graph.batches == [[1]]


@pytest.mark.parametrize("max_batch", [1, 3])
def test_max_batch_is_never_exceeded(max_batch: int) -> None:
    graph = FakeGraph(delay_s=0.005)
    items = [(np.zeros(1, np.float32), i) for i in range(7)]

    async def go():
        return await _submit_all(DynamicBatcher(graph, max_batch, 0.05), items)

    assert run(go) == [float(i) for i in range(7)]
    assert max(len(b) for b in graph.batches) == max_batch
