"""The micro-batcher: concurrent requests share one ONNX Runtime call, run off the event loop."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ganops.serving.inference import OnnxGenerator
from ganops.sampling import to_uint8
from ganops.serving.prometheus import Metrics


class Overloaded(RuntimeError):
    """The request queue is full: the client should retry later (HTTP 503)."""


class ShuttingDown(RuntimeError):
    """The server is stopping and will not run this request: retry on another replica (HTTP 503)."""


@dataclass
class _Job:
    z: np.ndarray
    labels: np.ndarray | None
    png: bool  # encode each image as PNG in the worker thread, off the event loop
    future: asyncio.Future


class MicroBatcher:
    """Gathers concurrent requests into one ONNX Runtime call, run in a worker thread.

        batcher = MicroBatcher(generator=g, max_batch=64, max_wait_ms=2, queue_size=256,
                               enabled=True, metrics=Metrics(), encode_png=png, threads=1)
        await batcher.start()
        images = await batcher.submit(z, labels)             # uint8 [n, R, R] (RGB: [n, R, R, 3])
        pngs = await batcher.submit(z, labels, png=True)     # n PNG files
        batcher.close()                                      # shutdown begins (signal-safe)
        await batcher.stop()                                 # every waiting request answered

    One asyncio task takes the first waiting request, then keeps taking requests until it holds
    `max_batch` images or `max_wait_ms` has passed, and runs them as one ONNX Runtime call in a
    worker thread; with `threads` > 1 the next batch starts while one runs (at most `threads` at
    once); requests that arrive while all threads are busy queue up for the next call. It waits to fill a
    batch only while traffic is concurrent (the previous batch held more than one request): a lone
    client is never delayed. A request larger than `max_batch` runs as a batch of its own. With
    `enabled=False` every request runs alone (concurrently, in a thread pool): the benchmark's
    baseline. Either way at most `queue_size` requests wait; the next one raises Overloaded.

    Shutdown: after `close()` a new request raises ShuttingDown at once, and so does every request
    still waiting in the queue; the batch already running finishes and delivers its images.
    `stop()` then resolves whatever is left, so no request is left without an answer.
    """

    def __init__(self, *, generator: OnnxGenerator, max_batch: int, max_wait_ms: float, queue_size: int,
                 enabled: bool, metrics: Metrics, encode_png: Callable[[np.ndarray], bytes], threads: int):
        self.generator = generator
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.enabled = enabled
        self.metrics = metrics
        self.encode_png = encode_png
        self.closing = False
        self._queue: asyncio.Queue[_Job] | None = None
        self.threads = threads
        self._worker: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None  # one per batch thread: a batch starts when one is free
        self._running: dict[asyncio.Future, list[_Job]] = {}  # ONNX Runtime calls in worker threads now -> their jobs
        self._in_flight = 0  # unbatched mode's count of running requests
        self._last_batch_jobs = 0
        # Batched: `threads` batches at once (ONNX Runtime and zlib release the GIL, so a second thread
        # overlaps one batch's PNG encoding with the next one's inference); unbatched: a thread per request.
        self._executor = ThreadPoolExecutor(
            max_workers=threads if enabled else min(64, queue_size), thread_name_prefix="ganops-ort"
        )

    def _run(self, jobs: list[_Job]) -> list[np.ndarray | list[bytes]]:
        """In the worker thread: one ONNX Runtime call for all jobs, split back, PNGs encoded."""
        z = jobs[0].z if len(jobs) == 1 else np.concatenate([j.z for j in jobs])
        labels = None
        if jobs[0].labels is not None:
            labels = jobs[0].labels if len(jobs) == 1 else np.concatenate([j.labels for j in jobs])
        self.metrics.batch_size.observe(len(z))
        images = to_uint8(self.generator.run(z, labels))
        out, start = [], 0
        for j in jobs:
            part = images[start : start + len(j.z)]
            start += len(j.z)
            out.append([self.encode_png(im) for im in part] if j.png else part)
        return out

    async def start(self) -> None:
        if self.enabled:
            self._queue = asyncio.Queue(maxsize=self.queue_size)
            self._slots = asyncio.Semaphore(self.threads)
            self._worker = asyncio.create_task(self._work(), name="ganops-batcher")
        self.metrics.queue_depth.set_function(self.queue_depth)

    def queue_depth(self) -> int:
        """Requests waiting for the generator (unbatched: running)."""
        return self._queue.qsize() if self._queue is not None else self._in_flight

    @property
    def running(self) -> bool:
        """A batch is in a worker thread now."""
        return bool(self._running)

    def close(self) -> None:
        """Take no more work. Only sets a flag, so a signal handler may call it."""
        self.closing = True

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Close, let the running batch finish (at most `grace_s`), answer everything else."""
        self.close()
        running = [job for jobs in self._running.values() for job in jobs]
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace_s)
            await asyncio.sleep(0)  # let the batch tasks hand the finished batches' results out
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for job in running:  # only a batch that outlived grace_s is still unanswered here
            _fail(job, ShuttingDown("the server stopped before this batch finished"))
        self._drain_queue()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _drain_queue(self) -> None:
        while self._queue is not None and not self._queue.empty():
            _fail(self._queue.get_nowait(), ShuttingDown("the server is shutting down"))

    async def submit(self, z: np.ndarray, labels: np.ndarray | None, *, png: bool = False
                     ) -> np.ndarray | list[bytes]:
        """Latents [n, z_dim] (+ labels [n]) -> uint8 images [n, R, R] (or [n, R, R, 3]), or n PNGs with `png`.

        Raises Overloaded when `queue_size` requests are already waiting, ShuttingDown after close().
        """
        if self.closing:
            raise ShuttingDown("the server is shutting down")
        loop = asyncio.get_running_loop()
        job = _Job(z, labels, png, loop.create_future())
        if not self.enabled:
            if self._in_flight >= self.queue_size:
                raise Overloaded(f"{self._in_flight} requests in flight (serve.queue_size)")
            self._in_flight += 1
            try:
                return (await loop.run_in_executor(self._executor, self._run, [job]))[0]
            finally:
                self._in_flight -= 1
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue_size} requests already waiting (serve.queue_size)") from None
        return await job.future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        pending: _Job | None = None
        while True:
            # A free thread first: while all are busy, requests queue up and the next batch is fuller.
            await self._slots.acquire()
            first = pending if pending is not None else await self._queue.get()
            pending = None
            jobs, n = [first], len(first.z)
            deadline = loop.time() + (self.max_wait_s if self._last_batch_jobs > 1 else 0.0)
            while n < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if n + len(job.z) > self.max_batch:
                    pending = job  # starts the next batch
                    break
                jobs.append(job)
                n += len(job.z)
            if self.closing:  # shutdown began while these waited: answer them now, run nothing
                for j in [*jobs, *([pending] if pending else [])]:
                    _fail(j, ShuttingDown("the server is shutting down"))
                pending = None
                self._drain_queue()
                self._slots.release()
                continue
            jobs = [j for j in jobs if not j.future.cancelled()]
            self._last_batch_jobs = len(jobs)
            if not jobs:
                self._slots.release()
                continue
            call = loop.run_in_executor(self._executor, self._run, jobs)
            self._running[call] = jobs
            call.add_done_callback(self._finish)

    def _finish(self, call: asyncio.Future) -> None:
        """On the event loop, when a batch's thread is done: answer its requests, free its thread."""
        jobs = self._running.pop(call)
        self._slots.release()
        if call.cancelled():  # stop() shut the executor down before it ran
            return
        if call.exception() is not None:  # a failed batch fails its requests, not the worker
            for j in jobs:
                _fail(j, call.exception())
            return
        for j, result in zip(jobs, call.result(), strict=True):
            if not j.future.done():
                j.future.set_result(result)


def _fail(job: _Job, error: Exception) -> None:
    if not job.future.done():
        job.future.set_exception(error)
