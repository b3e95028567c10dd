"""The operator's work queue: each job once in the queue, never worked on twice at once."""

from __future__ import annotations

import asyncio

import pytest

from job_operator.workqueue import WorkQueue

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
    assert len(queue) == 1  # queued once, for after the work
    with pytest.raises(TimeoutError):  # not handed to a second worker meanwhile
        await asyncio.wait_for(queue.get(), timeout=0.05)
    queue.done(A)
    assert await asyncio.wait_for(queue.get(), timeout=1) == A  # once, after the work
    queue.done(A)
    assert len(queue) == 0


async def test_done_without_new_events_leaves_nothing_queued() -> None:
    queue = WorkQueue()
    queue.add(A)
    await queue.get()
    queue.done(A)
    assert len(queue) == 0
    queue.add(B)
    assert await asyncio.wait_for(queue.get(), timeout=1) == B


async def test_urgent_keys_go_first() -> None:
    queue = WorkQueue()
    queue.add(A)
    queue.add(B, urgent=True)
    assert await queue.get() == B
    assert await queue.get() == A


async def test_a_queued_key_made_urgent_is_served_once_and_early() -> None:
    queue = WorkQueue()
    C = ("ns", "c")
    queue.add(A)
    queue.add(C)
    queue.add(C, urgent=True)
    assert await queue.get() == C
    queue.done(C)
    assert await queue.get() == A
    queue.done(A)
    assert len(queue) == 0
    with pytest.raises(TimeoutError):  # C's first entry is spent: not handed out again
        await asyncio.wait_for(queue.get(), timeout=0.05)


async def test_urgency_added_while_worked_on_is_kept_for_the_next_round() -> None:
    queue = WorkQueue()
    queue.add(A)
    assert await queue.get() == A
    queue.add(B)
    queue.add(A, urgent=True)  # an executor change while A is being reconciled
    queue.done(A)
    assert await queue.get() == A  # ahead of B, which was queued first
    assert await queue.get() == B
