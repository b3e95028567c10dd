"""The operator's work queue: each job once in the queue, never worked on twice at once."""

from __future__ import annotations

import asyncio

import pytest

from job_operator.operator import WorkQueue

A, B = ("ns", "a"), ("ns", "b")


async def test_a_key_added_many_times_is_queued_once() -> None:
    queue = WorkQueue()
    for _ in range(5):
        queue.add(A)
    queue.add(B)
    assert len(queue) == 2
    assert await queue.get() == A
    assert await queue.get() == B
    assert len(queue) == 0


async def test_a_key_added_while_worked_on_waits_until_that_work_is_done() -> None:
    queue = WorkQueue()
    queue.add(A)
    assert await queue.get() == A
    queue.add(A)  # an event while A is being reconciled
    queue.add(A)
    assert queue.busy(A)
    with pytest.raises(TimeoutError):  # not handed to a second worker meanwhile
        await asyncio.wait_for(queue.get(), timeout=0.05)
    queue.done(A)
    assert await asyncio.wait_for(queue.get(), timeout=1) == A  # once, after the work
    queue.done(A)
    assert not queue.busy(A) and len(queue) == 0


async def test_done_without_new_events_leaves_nothing_queued() -> None:
    queue = WorkQueue()
    queue.add(A)
    await queue.get()
    queue.done(A)
    assert not queue.busy(A)
    queue.add(B)
    assert await asyncio.wait_for(queue.get(), timeout=1) == B
