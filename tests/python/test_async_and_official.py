"""The async spec examples, the official package's names (sync and async), interop with
the official `realtime` client on the same channels, and callbacks that raise."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, List, Tuple

import pytest

from conftest import ANON_KEY, await_for, wait_for
from support import Out
import supa_realtime
from supa_realtime import (
    AsyncRealtimeClient,
    NotConnectedError,
    RealtimeSubscribeStates,
    SyncRealtimeClient,
    create_async_client,
    create_client,
)


@pytest.mark.asyncio
async def test_async_broadcast_example(server: Any) -> None:
    url, key = server.url, ANON_KEY
    peer = await create_async_client(url, key)
    got: List[Any] = []
    peer_ch = peer.channel("async-chat")
    peer_ch.on("broadcast", {"event": "message"}, got.append)
    await peer_ch.subscribe()

    # Async broadcasting
    async def async_broadcast():
        client = await create_async_client(url, key)
        channel = client.channel("async-chat")
        await channel.send("message", {"text": "Async message"})
        await client.close()
    await async_broadcast()
    assert await await_for(lambda: got == [{"text": "Async message"}]), got
    await peer.close()


@pytest.mark.asyncio
async def test_async_spec_api_end_to_end(server: Any) -> None:
    """The spec's API on the async client: on()/subscribe()/send()/track() awaited."""
    client = await create_async_client(server.url, ANON_KEY)
    other = await create_async_client(server.url, ANON_KEY)
    seen: List[Any] = []

    async def on_message(payload: Any) -> None:  # async def callbacks are awaited
        await asyncio.sleep(0)
        seen.append(("msg", payload["text"], asyncio.get_running_loop() is loop))

    loop = asyncio.get_running_loop()
    ch = client.channel("game-lobby", {"presence": {"key": "alice"}})
    ch.on("broadcast", {"event": "message"}, on_message)
    ch.on("presence", {"event": "sync"}, lambda p: seen.append(("sync", sorted(p["presences"]))))
    ch.on("presence", {"event": "join"}, lambda p: seen.append(("join", p["key"], p["presence"]["username"])))
    assert (await ch.subscribe()) is ch
    await ch.track({"username": "Alice"})
    o = other.channel("game-lobby")
    await o.subscribe()
    await o.send("message", {"text": "hello"})
    assert await await_for(lambda: ("msg", "hello", True) in seen), seen
    assert await await_for(lambda: ("join", "alice", "Alice") in seen), seen
    assert await await_for(lambda: ("sync", ["alice"]) in seen), seen
    assert ch.presence_state()["alice"][0]["username"] == "Alice"
    await ch.unsubscribe()
    with pytest.raises(NotConnectedError):
        await ch.send("message", {"text": "late"})
    await client.remove_all_channels()
    await other.remove_all_channels()
    await client.close()
    await other.close()


@pytest.mark.asyncio
async def test_official_names_async(server: Any) -> None:
    """Code written for `realtime.AsyncRealtimeClient`, with only the import changed."""
    from supa_realtime import AsyncRealtimeClient  # was: from realtime import AsyncRealtimeClient

    events: List[Tuple[Any, ...]] = []
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await client.connect()
    channel = client.channel("room-official", {"config": {"broadcast": {"self": True}, "presence": {"key": "me"}}})
    channel.on_broadcast("cursor", lambda m: events.append(("b", m)))
    channel.on_presence_sync(lambda: events.append(("sync",)))
    channel.on_presence_join(lambda key, cur, new: events.append(("join", key, [p["x"] for p in new])))
    channel.on_presence_leave(lambda key, cur, left: events.append(("leave", key, len(left))))
    channel.on_system(lambda p: events.append(("system", p.status, p.extension)))
    states: List[Any] = []
    await channel.subscribe(lambda state, err: states.append((state, err)))
    assert states[:1] == [(RealtimeSubscribeStates.SUBSCRIBED, None)]
    await channel.send_broadcast("cursor", {"x": 1})
    await channel.track({"x": 2})
    assert await await_for(lambda: ("b", {"event": "cursor", "payload": {"x": 1}}) in events), events
    assert await await_for(lambda: ("join", "me", [2]) in events), events
    assert ("sync",) in events
    assert channel.presence_state()["me"][0]["x"] == 2
    assert "presence_ref" in channel.presence_state()["me"][0]
    await channel.untrack()
    assert await await_for(lambda: ("leave", "me", 1) in events), events
    await channel.unsubscribe()
    assert await await_for(lambda: any(s == RealtimeSubscribeStates.CLOSED for s, _ in states)), states
    await client.remove_channel(channel)
    assert client.get_channels() == []
    await client.close()


def test_official_names_sync(server: Any) -> None:
    from supa_realtime import SyncRealtimeClient

    client = SyncRealtimeClient(server.ws_url, ANON_KEY)
    peer = SyncRealtimeClient(server.ws_url, ANON_KEY)
    try:
        got: List[Any] = []
        ch = client.channel("sync-official")
        ch.on_broadcast("*", got.append).on_presence_join(lambda k, c, n: got.append(("join", k)))
        states: List[Any] = []
        ch.subscribe(lambda s, e: states.append(s))
        assert states == [RealtimeSubscribeStates.SUBSCRIBED]
        p = peer.channel("sync-official", {"config": {"presence": {"key": "bob"}}})
        p.subscribe()
        p.send_broadcast("Hello", {"n": 1})
        p.track({"name": "bob"})
        assert wait_for(lambda: {"event": "Hello", "payload": {"n": 1}} in got and ("join", "bob") in got), got
        # callbacks of a sync client run on its dispatcher thread
        import threading

        names: List[str] = []
        ch.on_broadcast("thread", lambda m: names.append(threading.get_ident()))
        p.send_broadcast("thread", {})
        p.send_broadcast("thread", {})
        assert wait_for(lambda: len(names) == 2), names
        assert names[0] == names[1] != threading.get_ident()
    finally:
        client.close()
        peer.close()


@pytest.mark.asyncio
async def test_interop_with_official_realtime_client(server: Any) -> None:
    """The official `realtime` (PyPI) client on the same channel sees our broadcasts and
    presence, and we see its."""
    import realtime

    theirs = realtime.AsyncRealtimeClient(server.ws_url, ANON_KEY)
    await theirs.connect()
    their_events: List[Any] = []
    tch = theirs.channel("interop", {"config": {"broadcast": {"self": False, "ack": False}, "presence": {"key": "official", "enabled": True}, "private": False}})
    tch.on_broadcast("msg", lambda m: their_events.append(("b", m["payload"])))
    tch.on_presence_join(lambda key, cur, new: their_events.append(("join", key, [p.get("who") for p in new])))
    await tch.subscribe()

    ours = await create_async_client(server.url, ANON_KEY)
    our_events: List[Any] = []
    och = ours.channel("interop", {"presence": {"key": "ours"}})
    och.on("broadcast", {"event": "msg"}, lambda p: our_events.append(("b", p)))
    och.on("presence", {"event": "join"}, lambda p: our_events.append(("join", p["key"], p["presence"].get("who"))))
    await och.subscribe()

    await och.send("msg", {"from": "ours"})
    await och.track({"who": "rust"})
    await tch.send_broadcast("msg", {"from": "official"})
    await tch.track({"who": "pydantic"})
    assert await await_for(lambda: ("b", {"from": "ours"}) in their_events and ("join", "ours", ["rust"]) in their_events, 10), their_events
    assert await await_for(lambda: ("b", {"from": "official"}) in our_events and ("join", "official", "pydantic") in our_events, 10), our_events
    assert set(och.presence_state()) == {"ours", "official"}
    await theirs.close()
    await ours.close()


def test_callback_that_raises_is_logged_and_delivery_continues(server: Any, caplog: Any) -> None:
    client = create_client(server.url, ANON_KEY)
    try:
        got: List[Any] = []

        def bad(payload: Any) -> None:
            if payload["n"] == 1:
                raise RuntimeError("boom in callback")
            got.append(payload["n"])

        ch = client.channel("raising", {"broadcast": {"self": True}})
        ch.on("broadcast", {"event": "e"}, bad)
        ch.subscribe()
        with caplog.at_level(logging.ERROR, logger="supa_realtime"):
            for n in range(1, 4):
                ch.send("e", {"n": n})
            assert wait_for(lambda: got == [2, 3]), got
        recs = [r for r in caplog.records if r.name == "supa_realtime"]
        assert recs and recs[0].exc_info and "boom in callback" in str(recs[0].exc_info[1])
        assert "Traceback" in caplog.text and "boom in callback" in caplog.text
        assert ch.status == "SUBSCRIBED" and client.realtime.is_connected
    finally:
        client.close()


@pytest.mark.asyncio
async def test_async_callback_that_raises(server: Any, caplog: Any) -> None:
    client = AsyncRealtimeClient(server.ws_url, ANON_KEY)
    got: List[int] = []

    async def bad(m: Any) -> None:
        if m["payload"]["n"] == 1:
            raise ValueError("async boom")
        got.append(m["payload"]["n"])

    ch = client.channel("araising", {"config": {"broadcast": {"self": True}}})
    ch.on_broadcast("e", bad)
    await ch.subscribe()
    with caplog.at_level(logging.ERROR, logger="supa_realtime"):
        for n in range(1, 4):
            await ch.send_broadcast("e", {"n": n})
        assert await await_for(lambda: got == [2, 3]), got
    assert "async boom" in caplog.text
    await client.close()


def test_exceptions_are_importable_and_carry_reason() -> None:
    from supa_realtime import AuthorizationError, NotConnectedError, RealtimeError
    import pickle

    e = AuthorizationError("refused (server: Unauthorized)", "Unauthorized", "authorization")
    assert isinstance(e, RealtimeError) and e.reason == "Unauthorized"
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is AuthorizationError and e2.reason == "Unauthorized" and str(e2) == str(e)
    assert issubclass(NotConnectedError, RealtimeError)
    assert set(supa_realtime.__all__) >= {"create_client", "create_async_client", "acreate_client", "AuthorizationError", "NotConnectedError"}


def test_blocking_call_releases_the_gil(server: Any) -> None:
    """A thread blocked in subscribe() does not stop Python threads from running."""
    import threading

    client = create_client(server.url, "not-a-jwt")
    ticks = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    t.start()
    try:
        with pytest.raises(supa_realtime.AuthorizationError) as ei:
            client.channel("x").subscribe(timeout=3000)
        assert "not a valid JWT" in (ei.value.reason or "")
    finally:
        stop.set()
        t.join()
        client.close()
    assert len(ticks) > 5
