"""Runs batches of callbacks handed over by the native dispatcher.

A batch is a list of ``(callback, args)``. Sync clients run it on their dispatcher
thread; async clients get it through one ``loop.call_soon_threadsafe`` per batch and run it
on the loop. ``async def`` callbacks are awaited (as tasks on the loop; on a sync client,
on a private loop of the dispatcher thread). An exception in a callback is logged with its
traceback by the ``supa_realtime`` logger and never stops delivery.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from typing import Any, Callable, List, Optional, Set, Tuple

logger = logging.getLogger("supa_realtime")

Batch = List[Tuple[Callable[..., Any], Tuple[Any, ...]]]

_local = threading.local()
_tasks: Set["asyncio.Future[Any]"] = set()


def _log(cb: Callable[..., Any], exc: BaseException) -> None:
    logger.error("supa_realtime: callback %r raised", cb, exc_info=exc)


def run_batch(batch: Batch) -> None:
    """Run callbacks on this (dispatcher) thread."""
    for cb, args in batch:
        try:
            r = cb(*args)
            if inspect.isawaitable(r):
                loop = getattr(_local, "loop", None)
                if loop is None or loop.is_closed():
                    loop = _local.loop = asyncio.new_event_loop()
                loop.run_until_complete(r)
        except Exception as e:  # noqa: BLE001 - a callback must never kill delivery
            _log(cb, e)


def _done(cb: Callable[..., Any]) -> Callable[["asyncio.Future[Any]"], None]:
    def done(fut: "asyncio.Future[Any]") -> None:
        _tasks.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            _log(cb, exc)

    return done


def run_batch_async(batch: Batch, done: Optional[Callable[[], Any]] = None) -> None:
    """Run callbacks on the running loop; awaitables become tasks. ``done()`` is called once
    every callback of the batch has run and every task it started has finished: the native
    dispatcher schedules a bounded number of batches ahead, so a loop that falls behind
    slows the socket instead of queueing without end."""
    pending = [1]

    def finished(_: Any = None) -> None:
        pending[0] -= 1
        if pending[0] == 0 and done is not None:
            done()

    try:
        for cb, args in batch:
            try:
                r = cb(*args)
                if inspect.isawaitable(r):
                    fut = asyncio.ensure_future(r)
                    _tasks.add(fut)
                    fut.add_done_callback(_done(cb))
                    pending[0] += 1
                    fut.add_done_callback(finished)
            except Exception as e:  # noqa: BLE001
                _log(cb, e)
    finally:
        finished()
