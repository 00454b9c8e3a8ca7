"""The asyncio client does its Python work on the event loop's thread: callbacks run there,
and the values and exceptions its awaitables resolve with are built there, never on the
Rust runtime's threads (which must not hold the GIL: a callback or a conversion there would
stall the socket's reading behind the interpreter). Cancelling an awaitable cancels its Rust
side and leaves nothing behind.

The exception check records, from inside ``RealtimeError.__init__``, the thread each
exception is constructed on; building one on a runtime thread would record that thread.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any, Iterator, List

import pytest

from conftest import ANON_KEY, Server, await_for, free_port
from supa_realtime import AsyncRealtimeClient, AuthorizationError, NotConnectedError, RealtimeError
from supa_realtime import _dispatch, _exceptions


@pytest.fixture
def built_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[List[int]]:
    """Thread idents on which a RealtimeError (any subclass) was constructed."""
    seen: List[int] = []
    original = _exceptions.RealtimeError.__init__

    def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(threading.get_ident())
        original(self, *args, **kwargs)

    monkeypatch.setattr(_exceptions.RealtimeError, "__init__", recording)
    yield seen


def pending_awaitables() -> int:
    return int(_dispatch.hub(asyncio.get_running_loop()).pending)


@pytest.mark.asyncio
async def test_awaitable_errors_are_built_on_the_loop_thread(server: Any, built_on: List[int]) -> None:
    me = threading.get_ident()
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await client.connect()
    ch = client.channel("loop-thread-errors")
    await ch.subscribe()
    await ch.unsubscribe()
    # The channel was left: the Rust future fails with NotConnected.
    with pytest.raises(NotConnectedError):
        await ch._native.send_async("e", {"a": 1})
    # A socket that never opens: the connect future fails (timeout) on the Rust side.
    dead = AsyncRealtimeClient(f"ws://127.0.0.1:{free_port()}/realtime/v1", ANON_KEY)
    with pytest.raises(RealtimeError):
        await dead.connect(timeout=0.3)
    await dead.close()
    await client.close()
    assert len(built_on) >= 2
    assert set(built_on) == {me}, f"exceptions built on threads {set(built_on)}, loop thread {me}"


@pytest.mark.asyncio
async def test_callbacks_run_on_the_loop_thread(server: Any, built_on: List[int]) -> None:
    me = threading.get_ident()
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await client.connect()
    threads: List[int] = []
    got: List[Any] = []
    ch = client.channel("loop-thread-callbacks", {"config": {"broadcast": {"self": True}}})

    def on_b(m: Any) -> None:
        threads.append(threading.get_ident())
        got.append(m)

    ch.on_broadcast("b", on_b)
    await ch.subscribe()
    for i in range(50):
        await ch.send_broadcast("b", {"i": i})
    assert await await_for(lambda: len(got) == 50, 10)
    assert [m["payload"]["i"] for m in got] == list(range(50))
    assert set(threads) == {me}
    await client.close()
    assert set(built_on) <= {me}


@pytest.fixture(scope="module")
def private_only_server() -> Iterator[Server]:
    srv = Server({"--private-only": "true"}).start()
    yield srv
    srv.stop()


@pytest.mark.asyncio
async def test_refusals_reach_on_error_as_values_built_on_the_loop_thread(
    private_only_server: Any, built_on: List[int]
) -> None:
    me = threading.get_ident()
    client = AsyncRealtimeClient(private_only_server.ws_url, ANON_KEY)
    await client.connect()
    errors: List[BaseException] = []
    ch = client.channel("loop-thread-refused")
    ch.on_error(errors.append)
    with pytest.raises(AuthorizationError):
        await ch.subscribe()
    assert await await_for(lambda: len(errors) >= 1, 10)
    assert isinstance(errors[0], AuthorizationError)
    await client.close()
    assert len(built_on) >= 2
    assert set(built_on) == {me}, f"built on {set(built_on)}, loop thread {me}"


@pytest.mark.asyncio
async def test_cancelled_awaitables_leave_nothing_behind(server: Any) -> None:
    # Connecting to a port nobody listens on never succeeds (it retries forever): cancel it.
    dead = AsyncRealtimeClient(f"ws://127.0.0.1:{free_port()}/realtime/v1", ANON_KEY)
    tasks = [asyncio.ensure_future(dead.connect()) for _ in range(20)]
    await asyncio.sleep(0.2)
    assert pending_awaitables() >= 20
    for t in tasks:
        t.cancel()
    for t in tasks:
        with pytest.raises(asyncio.CancelledError):
            await t
    await asyncio.sleep(0)
    assert pending_awaitables() == 0
    await dead.close()

    # Many sends, half cancelled at once: the others complete, nothing stays registered.
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await client.connect()
    ch = client.channel("loop-cancel")
    await ch.subscribe()
    sends = [asyncio.ensure_future(ch.send_broadcast("e", {"i": i})) for i in range(400)]
    for t in sends[::2]:
        t.cancel()
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results)
    assert any(r is None for r in results)
    gc.collect()
    assert await await_for(lambda: pending_awaitables() == 0, 5)
    # The loop and the client still work.
    await ch.send_broadcast("e", {"after": True})
    await client.close()


@pytest.mark.asyncio
async def test_async_def_callbacks_are_bounded_in_flight_and_lossless(server: Any) -> None:
    """`async def` callbacks run as tasks; the hub lets at most 2 batches (of at most 1024)
    have unfinished tasks, so a burst of 20,000 to callbacks that await never has more than
    2,048 running at once (without the bound it would be most of the burst), and all arrive
    in order."""
    from test_backpressure import burst

    n = 20_000
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await client.connect()
    got: List[int] = []
    running = [0, 0]  # now, most at once

    async def cb(m: Any) -> None:
        running[0] += 1
        running[1] = max(running[1], running[0])
        got.append(m["payload"]["i"])
        await asyncio.sleep(0.05)
        running[0] -= 1

    ch = client.channel("loop-async-def")
    ch.on_broadcast("b", cb)
    await ch.subscribe()
    loop = asyncio.get_running_loop()
    sender = loop.run_in_executor(None, lambda: burst(server, "loop-async-def", n, filler="x"))
    assert await await_for(lambda: len(got) >= n, 60, 0.05), len(got)
    await sender
    assert got == list(range(n))
    assert running[1] <= 2 * 1024, running[1]
    assert await await_for(lambda: running[0] == 0, 5)
    await client.close()


@pytest.mark.asyncio
async def test_rest_sends_complete_from_the_loop(server: Any) -> None:
    """`http_send` (an HTTP request on the runtime's reactor, polled from the loop) arrives,
    from a joined channel and from one never subscribed."""
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await client.connect()
    got: List[Any] = []
    rx = client.channel("loop-rest")
    rx.on_broadcast("r", lambda m: got.append(m["payload"]))
    await rx.subscribe()
    other = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await other.connect()
    joined = other.channel("loop-rest")
    await joined.subscribe()
    await joined.http_send("r", {"from": "joined"})
    never = other.channel("loop-rest-unjoined")
    await never.http_send("r", {"to": "nobody"})
    # `send` with the official option `{"http": True}`: REST as well.
    await other.channel("loop-rest").send("r", {"from": "send"}, {"http": True})
    assert await await_for(lambda: len(got) >= 2, 10), got
    assert {"from": "joined"} in got and {"from": "send"} in got
    await other.close()
    await client.close()


def test_callbacks_follow_the_client_to_the_next_loop(server: Any) -> None:
    """A client made outside any loop and used from two `asyncio.run` calls one after the
    other: its callbacks run on whichever loop it was last used from."""
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    seen: List[Any] = []

    async def use(tag: str) -> None:
        me = threading.get_ident()
        loop = asyncio.get_running_loop()
        ch = client.channel("loop-follow", {"config": {"broadcast": {"self": True}}})
        if tag == "first":
            ch.on_broadcast("b", lambda m: seen.append((m["payload"]["tag"], asyncio.get_running_loop(), threading.get_ident())))
            await client.connect()
            await ch.subscribe()
        await ch.send_broadcast("b", {"tag": tag})
        assert await await_for(lambda: any(t == tag for t, _, _ in seen), 10)
        assert [(lp, th) for t, lp, th in seen if t == tag] == [(loop, me)]

    asyncio.run(use("first"))
    asyncio.run(use("second"))
    asyncio.run(client.close())
