"""Runs batches of callbacks handed over by the native side, and gives each event loop
its hub.

A batch is a list of ``(callback, args)``. Sync clients run it on their callback thread;
async clients run it on the event loop, from the loop's :class:`~supa_realtime._native.LoopHub`:
the Rust side wakes the loop through a file descriptor watched with ``loop.add_reader``
and the hub, on the loop thread, takes the events from the client's queues and runs them
here. ``async def`` callbacks are awaited (as tasks on the loop; on a sync client, on a
private loop of the callback thread). An exception in a callback is logged with its
traceback by the ``supa_realtime`` logger and never stops delivery.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import weakref
from typing import Any, Callable, List, Optional, Set, Tuple

from . import _native

logger = logging.getLogger("supa_realtime")

Batch = List[Tuple[Callable[..., Any], Tuple[Any, ...]]]

_local = threading.local()
_tasks: Set["asyncio.Future[Any]"] = set()
_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _native.LoopHub]" = weakref.WeakKeyDictionary()


def hub(loop: asyncio.AbstractEventLoop) -> _native.LoopHub:
    """The hub of ``loop``, registered with ``loop.add_reader`` on first use. It lives as
    long as the loop: the reader holds it, and this map forgets it with the loop."""
    h = _hubs.get(loop)
    if h is None:
        h = _native.LoopHub()
        loop.add_reader(h.fileno(), h.drain)
        _hubs[loop] = h
    return h


def _log(cb: Callable[..., Any], exc: BaseException) -> None:
    logger.error("supa_realtime: callback %r raised", cb, exc_info=exc)


def run_batch(batch: Batch) -> None:
    """Run callbacks on this (callback) thread."""
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
    every callback of the batch has run and every task it started has finished: the hub
    keeps a bounded number of such batches outstanding, so a loop whose tasks fall behind
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
