"""Micro-batching across tenants: requests that arrive together are answered in one forward pass.

A request is a list of rows (one per input) of one kind. The loop takes the first waiting request,
then every request already queued, then waits at most `max_wait_ms` for more, until `max_batch` rows
are collected; the rows run on the engine's own thread (torch is not async), so the event loop keeps
accepting requests meanwhile. `max_batch=1` turns batching off (each row alone), the baseline of
`benchmarks/serve_load.py`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Job:
    kind: str
    rows: list
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects rows from concurrent requests and runs them through `runners[kind](rows)`."""

    def __init__(
        self,
        runners: dict[str, Callable[[list], list]],
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[str, int], None] | None = None,
    ):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.runners, self.max_batch, self.max_wait = runners, max_batch, max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptport-engine")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish every queued request, then stop (called after the server stopped taking new ones)."""
        if self._queue is not None:
            await self._queue.join()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)

    async def submit(self, kind: str, rows: list) -> list:
        assert self._queue is not None, "start() first"
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(kind, rows, fut))
        return await fut

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        n = len(jobs[0].rows)
        deadline = time.perf_counter() + self.max_wait
        while n < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except asyncio.TimeoutError:
                    break
            jobs.append(job)
            n += len(job.rows)
        return jobs

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            try:
                for kind in dict.fromkeys(j.kind for j in jobs):
                    group = [j for j in jobs if j.kind == kind]
                    rows = [r for j in group for r in j.rows]
                    try:
                        results: list[Any] = []
                        for s in range(0, len(rows), self.max_batch):
                            chunk = rows[s : s + self.max_batch]
                            results += await loop.run_in_executor(
                                self._pool, self.runners[kind], chunk
                            )
                            if self.on_batch is not None:
                                self.on_batch(kind, len(chunk))
                    except Exception as e:  # answered to the waiting requests, never kills the loop
                        for j in group:
                            if not j.future.done():
                                j.future.set_exception(e)
                        continue
                    k = 0
                    for j in group:
                        if not j.future.done():
                            j.future.set_result(results[k : k + len(j.rows)])
                        k += len(j.rows)
            finally:
                for _ in jobs:
                    self._queue.task_done()
