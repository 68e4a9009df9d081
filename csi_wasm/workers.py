"""Blocking work for code on an event loop, and waiting on another thread without a thread.

The gRPC server answers on one event loop (see :mod:`csi_wasm.server.serve`). Whatever
blocks (files, mounts, a registry request) runs on a bounded pool of threads; waiting
for a pull holds no thread at all (:func:`settled`). Separate pools: a slow registry
can fill ``network`` without delaying the local work every publish and unpublish needs,
and neither delays Probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Pool:
    """Runs a blocking call on a bounded set of threads, or inline (``workers=0``)."""

    def __init__(self, workers: int, name: str) -> None:
        self._executor = (
            ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 0 else None
        )

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._executor is None:
            return call(*args, **kwargs)
        # The caller's context goes along: the RPC's log fields (see server.rpc.note).
        bound = functools.partial(contextvars.copy_context().run, call, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, bound)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)


class Workers:
    """The pools: ``local`` for the cache, records and mounts; ``network`` for registries;
    ``readiness`` (one thread) for Probe's check of the root, which touches the disk but
    must never queue behind publishes."""

    def __init__(self, local: int, network: int, readiness: int = 1) -> None:
        self.local = Pool(local, "local")
        self.network = Pool(network, "network")
        self.readiness = Pool(readiness, "readiness")

    @classmethod
    def inline(cls) -> Workers:
        """Everything on the calling thread: for callers that have a thread to spare."""
        return cls(0, 0, 0)

    def shutdown(self) -> None:
        self.local.shutdown()
        self.network.shutdown()
        self.readiness.shutdown()


async def settled(future: Future[Any], timeout: float) -> None:
    """Return once ``future`` is done or ``timeout`` seconds passed, holding no thread.

    Never cancels ``future`` and never takes its result: a pull outlives every RPC
    waiting on it, and whoever waits reads the outcome afterwards.
    """
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not woken.done():  # a waiter that timed out has cancelled it
            woken.set_result(None)

    def on_done(_: Future[Any]) -> None:
        # The loop is gone once the driver stopped: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(wake)

    future.add_done_callback(on_done)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(woken, max(0.0, timeout))
