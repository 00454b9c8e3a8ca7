"""Slow callbacks lose nothing (sync and async clients), memory stays bounded, the paused
socket does not time out; drop policies are explicit and every drop is logged (the Rust
side's `tracing` reaches `logging`) and reported to `on_error`; the official client and ours
on one channel under the same burst both get everything.

The burst is sent by the server itself: `POST /api/broadcast` with 1,000 messages per
request, so the sender is never the bottleneck. The server keeps up to 300,000 frames queued
for a socket that reads slowly (`--outbox-capacity`): what a server does with a slow reader
is its own policy; these tests check that the client loses nothing before it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from typing import Any, Iterator, List

import pytest

from conftest import ANON_KEY, SERVICE_KEY, Server, await_for, wait_for
from supa_realtime import AsyncRealtimeClient, EventsDroppedError, SyncRealtimeClient

FILLER = "x" * 1000


@pytest.fixture(scope="module")
def patient_server() -> Iterator[Server]:
    srv = Server({"--outbox-capacity": "300000", "--max-events-per-second": "10000000"}).start()
    yield srv
    srv.stop()


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def burst(server: Server, topic: str, n: int, filler: str = FILLER, per_request: int = 1000) -> None:
    """`n` broadcasts of event "b" with payload {"i": i, "f": filler}, in order."""
    for start in range(0, n, per_request):
        messages = [
            {"topic": topic, "event": "b", "payload": {"i": i, "f": filler}}
            for i in range(start, min(n, start + per_request))
        ]
        req = urllib.request.Request(
            f"{server.url}/api/broadcast",
            data=json.dumps({"messages": messages}).encode(),
            headers={"Content-Type": "application/json", "apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 202, r.status


# Memory bound: the Rust queues hold at most 1024 + 4096 events, the dispatch queue 64
# batches and the loop 2 batches of at most 1024 callbacks, each event about 1.1 KiB in Rust
# and a few KiB as Python objects: well under 64 MiB. Holding the 100,000 (about 1 KiB
# payload each, in Rust and in Python) would take several hundred MiB. The assertions allow
# 96 MiB of growth (allocator slack and interpreter caches included).
RSS_LIMIT = 96 << 20
N = 100_000
# Heartbeats every 0.5 s with a 1.5 s timeout, while the first callback stalls for 3 s: a
# heartbeat timeout counted while our own callbacks hold the socket paused would close it.
OPTIONS = {"hb_interval": 500, "heartbeat_timeout": 1500}


def test_sync_burst_with_a_slow_callback_is_lossless_and_bounded(patient_server: Server) -> None:
    client = SyncRealtimeClient(patient_server.ws_url, ANON_KEY, options=OPTIONS)
    closes: List[Any] = []
    client.on_close(lambda *a: closes.append(a))
    got: List[int] = []
    peak = [rss()]
    base = peak[0]

    def cb(m: Any) -> None:
        if not got:
            time.sleep(3)  # stall: queues fill, the socket is paused
        got.append(m["payload"]["i"])
        if len(got) % 10_000 == 0:
            peak[0] = max(peak[0], rss())

    ch = client.channel("burst-sync")
    ch.on_broadcast("b", cb)
    ch.subscribe()
    sender = threading.Thread(target=burst, args=(patient_server, "burst-sync", N))
    sender.start()
    assert wait_for(lambda: len(got) >= N, 120, 0.1), len(got)
    sender.join()
    assert got == list(range(N)), "all delivered, in order"
    assert ch._native.dropped_events == 0 and client._native.dropped_events == 0
    assert not closes, f"the socket closed during the burst: {closes}"
    assert peak[0] - base < RSS_LIMIT, f"RSS grew by {(peak[0] - base) >> 20} MiB"
    client.close()


@pytest.mark.asyncio
async def test_async_burst_with_a_slow_callback_is_lossless_and_bounded(patient_server: Server) -> None:
    client = AsyncRealtimeClient(patient_server.ws_url, ANON_KEY, options=OPTIONS)
    await client.connect()
    closes: List[Any] = []
    client.on_close(lambda *a: closes.append(a))
    got: List[int] = []
    peak = [rss()]
    base = peak[0]

    def cb(m: Any) -> None:
        if not got:
            time.sleep(3)  # blocks the loop itself: nothing may pile up on it meanwhile
        got.append(m["payload"]["i"])
        if len(got) % 10_000 == 0:
            peak[0] = max(peak[0], rss())

    ch = client.channel("burst-async")
    ch.on_broadcast("b", cb)
    await ch.subscribe()
    loop = asyncio.get_running_loop()
    sender = loop.run_in_executor(None, burst, patient_server, "burst-async", N)
    assert await await_for(lambda: len(got) >= N, 120, 0.1), len(got)
    await sender
    assert got == list(range(N)), "all delivered, in order"
    assert ch._native.dropped_events == 0 and client._native.dropped_events == 0
    assert not closes, f"the socket closed during the burst: {closes}"
    assert peak[0] - base < RSS_LIMIT, f"RSS grew by {(peak[0] - base) >> 20} MiB"
    await client.close()


def test_drop_policy_is_counted_logged_and_reported(patient_server: Server, caplog: Any) -> None:
    """`overflow="drop_newest"` on the channel: a callback that stalls loses events, and each
    loss shows: a warning of the `supa_realtime` logger (from the Rust core) with the count,
    an `EventsDroppedError` naming the count passed to `on_error`, and the counters."""
    n = 20_000
    caplog.set_level(logging.WARNING, logger="supa_realtime")
    client = SyncRealtimeClient(patient_server.ws_url, ANON_KEY, options={**OPTIONS, "event_queue_capacity": 16})
    got: List[int] = []
    errors: List[Any] = []

    def cb(m: Any) -> None:
        if not got:
            time.sleep(2)
        got.append(m["payload"]["i"])

    ch = client.channel("lossy", {"overflow": "drop_newest"})
    ch.on_broadcast("b", cb)
    ch.on_error(errors.append)
    ch.subscribe()
    burst(patient_server, "lossy", n, filler="")
    assert wait_for(lambda: len(got) + ch._native.dropped_events >= n, 60, 0.1)
    dropped = ch._native.dropped_events
    assert dropped > 0, "a stalled callback behind a 16-event queue drops"
    assert len(got) + dropped == n, (len(got), dropped)
    assert got == sorted(got), "what was kept is in order"
    assert client._native.dropped_events == dropped

    def reported() -> int:
        return sum(int(str(e).split()[0]) for e in errors if isinstance(e, EventsDroppedError))

    assert wait_for(lambda: reported() == dropped, 10), (reported(), dropped, errors)
    assert all(e.kind == "overflow" for e in errors if isinstance(e, EventsDroppedError))
    warnings = [r for r in caplog.records if r.name.startswith("supa_realtime") and "dropped" in r.getMessage()]
    assert warnings and all(r.levelno == logging.WARNING for r in warnings), caplog.text
    assert sum(int(r.getMessage().split("dropped=")[1].split()[0]) for r in warnings) == dropped, caplog.text
    client.close()


def test_overflow_option_is_validated(patient_server: Server) -> None:
    with pytest.raises(ValueError, match="overflow"):
        SyncRealtimeClient(patient_server.ws_url, ANON_KEY, options={"overflow": "sometimes"})
    client = SyncRealtimeClient(patient_server.ws_url, ANON_KEY)
    with pytest.raises(ValueError, match="overflow"):
        client.channel("bad-overflow", {"overflow": "drop_everything"})
    client.close()


@pytest.mark.asyncio
async def test_official_client_and_ours_on_one_channel_under_one_burst(patient_server: Server) -> None:
    import realtime

    n = 20_000
    theirs = realtime.AsyncRealtimeClient(patient_server.ws_url, ANON_KEY)
    await theirs.connect()
    their_got: List[int] = []
    tch = theirs.channel("shared-burst")
    tch.on_broadcast("b", lambda m: their_got.append(m["payload"]["i"]))
    await tch.subscribe()

    ours = AsyncRealtimeClient(patient_server.ws_url, ANON_KEY)
    await ours.connect()
    our_got: List[int] = []
    och = ours.channel("shared-burst")
    och.on_broadcast("b", lambda m: our_got.append(m["payload"]["i"]))
    await och.subscribe()

    await asyncio.get_running_loop().run_in_executor(None, burst, patient_server, "shared-burst", n, "")
    assert await await_for(lambda: len(our_got) >= n and len(their_got) >= n, 120, 0.1), (len(our_got), len(their_got))
    assert our_got == list(range(n))
    assert their_got == list(range(n))
    await theirs.close()
    await ours.close()


def test_rust_logs_reach_python_logging(patient_server: Server, caplog: Any) -> None:
    """The Rust core logs connection state changes at DEBUG with `tracing`; the records
    reach children of the `supa_realtime` logger with their level."""
    caplog.set_level(logging.DEBUG, logger="supa_realtime")
    client = SyncRealtimeClient(patient_server.ws_url, ANON_KEY)
    client.connect()
    assert wait_for(
        lambda: any(r.name.startswith("supa_realtime.") and r.levelno == logging.DEBUG for r in caplog.records), 10
    ), caplog.text
    client.close()
