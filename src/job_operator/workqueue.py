"""The work queue between the watches and the reconciles, as controller-runtime's.

Watch events only queue a job's key; `--workers` take keys from here and reconcile.
"""

from __future__ import annotations

import asyncio
import collections

JobKey = tuple[str, str]  # (namespace, name)


class WorkQueue:
    """Jobs waiting to be reconciled: a job is queued at most once however many events
    name it, and never handed to two workers at once (one added while being worked on
    is queued again when that work ends).

    What waits in a storm is a key per job, not each event's body. Urgent keys (a
    cluster changed: a job to move to running, or a loss) go before the others, so a
    cycle already under way finishes before the next request in a storm starts one.
    """

    def __init__(self) -> None:
        self._urgent: collections.deque[JobKey] = collections.deque()
        self._normal: collections.deque[JobKey] = collections.deque()
        self._entries = asyncio.Semaphore(0)  # one per entry in the two deques
        self._dirty: set[JobKey] = set()  # to be worked on (queued, or after the current work)
        self._dirty_urgent: set[JobKey] = set()
        self._processing: set[JobKey] = set()
        self._later: dict[JobKey, tuple[float, asyncio.TimerHandle]] = {}

    def add(self, key: JobKey, *, urgent: bool = False) -> None:
        if key in self._dirty and (not urgent or key in self._dirty_urgent):
            return
        self._dirty.add(key)
        if urgent:
            self._dirty_urgent.add(key)
        if key not in self._processing:
            self._push(key, urgent)

    def add_after(self, key: JobKey, delay: float) -> None:
        """Queue `key` in `delay` seconds (a backoff, a retry); the earliest wins."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        waiting = self._later.get(key)
        if waiting is not None:
            if waiting[0] <= due:
                return
            waiting[1].cancel()

        def fire() -> None:
            del self._later[key]
            self.add(key)

        self._later[key] = (due, loop.call_later(delay, fire))

    def _push(self, key: JobKey, urgent: bool) -> None:
        (self._urgent if urgent else self._normal).append(key)
        self._entries.release()

    async def get(self) -> JobKey:
        while True:
            await self._entries.acquire()
            key = self._urgent.popleft() if self._urgent else self._normal.popleft()
            # A key queued normally and then urgently has two entries: the first wins.
            if key in self._dirty and key not in self._processing:
                self._dirty.discard(key)
                self._dirty_urgent.discard(key)
                self._processing.add(key)
                return key

    def done(self, key: JobKey) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._push(key, key in self._dirty_urgent)

    def shut_down(self) -> None:
        """Drop the keys waiting for a delay (the process is stopping)."""
        for _, timer in self._later.values():
            timer.cancel()
        self._later.clear()

    def __len__(self) -> int:
        return len(self._dirty)
