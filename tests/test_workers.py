"""Worker pools and thread-free waits on another thread's future."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from concurrent.futures import Future

from csi_wasm.workers import Pool, Workers, settled

_field: contextvars.ContextVar[str] = contextvars.ContextVar("field")


def test_a_timed_out_wait_leaves_the_future_to_its_owner() -> None:
    future: Future[str] = Future()
    asyncio.run(settled(future, 0.01))
    assert not future.done()  # neither cancelled nor resolved by the waiter
    assert future.set_running_or_notify_cancel()
    future.set_result("done later")
    assert future.result() == "done later"


def test_a_wait_ends_when_another_thread_resolves_the_future() -> None:
    future: Future[str] = Future()

    async def wait_then_resolve() -> None:
        waiting = asyncio.create_task(settled(future, 60))
        await asyncio.sleep(0)  # the task is now waiting
        threading.Thread(target=future.set_result, args=("ok",)).start()
        await waiting

    asyncio.run(wait_then_resolve())
    assert future.result() == "ok"


def test_a_resolved_future_needs_no_wait() -> None:
    future: Future[str] = Future()
    future.set_exception(ValueError("the pull failed"))
    asyncio.run(settled(future, 0))  # the waiter reads the outcome itself, later
    assert isinstance(future.exception(), ValueError)


def test_a_pool_runs_calls_on_its_threads_with_the_callers_context() -> None:
    pool = Pool(2, "test")

    def where() -> tuple[str, str]:
        return threading.current_thread().name, _field.get()

    async def call() -> tuple[str, str]:
        _field.set("rpc fields")
        return await pool.run(where)

    try:
        name, value = asyncio.run(call())
    finally:
        pool.shutdown()
    assert name.startswith("test")
    assert value == "rpc fields"


def test_inline_workers_run_on_the_calling_thread() -> None:
    work = Workers.inline()

    async def call() -> str:
        return await work.local.run(lambda: threading.current_thread().name)

    assert asyncio.run(call()) == threading.current_thread().name
