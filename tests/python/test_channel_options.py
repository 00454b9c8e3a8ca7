"""What the client crate does for the package now (formerly worked around in the bindings):
fail-fast subscribe on a refused handshake, typed channel errors, presence enabled on a
joined channel, and the per-channel options of the spec (auto_reconnect, max_retries,
initial_backoff, hb_interval) honoured per channel."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from conftest import ANON_KEY, mint_jwt, wait_for
from supa_realtime import (
    AuthorizationError,
    NotConnectedError,
    RealtimeSubscribeStates,
    create_client,
)


def _expired() -> str:
    return mint_jwt({"role": "anon", "exp": int(time.time()) - 60})


def test_subscribe_fails_fast_when_the_handshake_is_refused(server: Any) -> None:
    client = create_client(server.url, _expired())
    try:
        errors: List[Any] = []
        ch = client.channel("refused")
        ch.on_error(errors.append)
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(AuthorizationError) as info:
                ch.subscribe(timeout=8000)
            assert time.monotonic() - start < 2.0
            assert "Token has expired" in str(info.value)
            assert info.value.reason is not None and "Token has expired" in info.value.reason
        # the channel's CHANNEL_ERROR status carries its kind: on_error gets an AuthorizationError
        assert wait_for(lambda: any(isinstance(e, AuthorizationError) for e in errors)), errors

        states: List[Any] = []
        ch2 = client.channel("refused-callback")
        start = time.monotonic()
        ch2.subscribe(lambda state, err: states.append((state, err)))
        assert time.monotonic() - start < 2.0
        assert states and states[0][0] is RealtimeSubscribeStates.CHANNEL_ERROR
        assert isinstance(states[0][1], AuthorizationError)
    finally:
        client.close()


def test_presence_callback_added_after_subscribe_gets_the_state(server: Any) -> None:
    client = create_client(server.url, ANON_KEY)
    peer = create_client(server.url, ANON_KEY)
    try:
        theirs = peer.channel("late-presence", {"presence": {"key": "bob"}})
        theirs.subscribe()
        theirs.track({"name": "bob"})
        mine = client.channel("late-presence")
        mine.subscribe()
        time.sleep(0.3)
        assert mine.presence_state() == {}
        syncs: List[Any] = []
        mine.on("presence", {"event": "sync"}, syncs.append)
        assert wait_for(lambda: any("bob" in s["presences"] for s in syncs)), syncs
        sync = next(s for s in syncs if "bob" in s["presences"])
        assert sync["presences"]["bob"][0]["name"] == "bob"
        assert mine.status == "SUBSCRIBED"
        assert "bob" in mine.presence_state()
    finally:
        client.close()
        peer.close()


def _callback_states(ch: Any) -> List[Any]:
    states: List[Any] = []
    lock = threading.Lock()

    def cb(state: Any, err: Any) -> None:
        with lock:
            states.append(state)

    ch.subscribe(cb)
    return states


def test_channel_max_retries_and_initial_backoff(server: Any) -> None:
    # joins are refused (expired access token): each channel retries per its own options
    client = create_client(server.url, ANON_KEY, {"access_token": _expired(), "rejoin_backoff": [1.5]})
    try:
        limited = client.channel("limited", {"max_retries": 2, "initial_backoff": 0.1})
        unlimited = client.channel("unlimited")
        start = time.monotonic()
        lim = _callback_states(limited)
        unl = _callback_states(unlimited)
        assert wait_for(lambda: len(lim) >= 3, 3.0), lim
        assert time.monotonic() - start < 2.0, "initial_backoff 0.1 s: three joins well within 2 s"
        time.sleep(1.0)
        assert lim == [RealtimeSubscribeStates.CHANNEL_ERROR] * 3, lim
        assert limited.status == "CHANNEL_ERROR"
        with pytest.raises(NotConnectedError):
            limited.send("x", {"n": 1})
        # the default channel keeps retrying on the client's 1.5 s table
        assert wait_for(lambda: len(unl) >= 2, 3.0), unl
    finally:
        client.close()


def test_channel_auto_reconnect_false(server: Any) -> None:
    client = create_client(server.url, ANON_KEY, {"access_token": _expired(), "rejoin_backoff": [0.1]})
    try:
        once = client.channel("once", {"auto_reconnect": False})
        states = _callback_states(once)
        time.sleep(1.0)
        assert states == [RealtimeSubscribeStates.CHANNEL_ERROR], states
    finally:
        client.close()


def test_channel_hb_interval_drives_the_socket_heartbeat(server: Any) -> None:
    client = create_client(server.url, ANON_KEY)  # client heartbeat: 25 s
    try:
        client.realtime.connect(timeout=5)
        time.sleep(0.5)
        assert client.realtime.heartbeat_latency is None
        ch = client.channel("ticker", {"hb_interval": 150})
        assert wait_for(lambda: client.realtime.heartbeat_latency is not None, 2.0)
        assert ch.params == {"hb_interval": 150}
    finally:
        client.close()
