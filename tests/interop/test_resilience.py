"""Heartbeats, idle timeout, tenant limits, big payloads, fan-out, reconnects, and the demo."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import httpx
import pytest
import websockets
import websockets.exceptions

from interop_support import (
    ANON_KEY,
    INTEROP_DIR,
    ServerProcess,
    is_broadcast,
    raw_upgrade,
    unique_topic,
)

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_js_heartbeats_are_answered(server, js_factory, vsn):
    js = await js_factory("js", vsn)
    await js.connect(server, heartbeatIntervalMs=300, heartbeatEvents=True)
    await js.joined(unique_topic())
    for _ in range(3):
        await js.log.wait_for(lambda e: e["type"] == "heartbeat" and e["status"] == "ok", 5,
                              start=js.log.mark(), what="heartbeat ok")
    bad = js.log.find(lambda e: e["type"] == "heartbeat" and e["status"] in ("timeout", "error"))
    assert not bad, bad
    state = await js.cmd("state")
    assert state["connected"] is True


async def test_idle_socket_is_closed_but_heartbeating_one_is_not(server_factory, raw_factory):
    srv = server_factory({"--idle-timeout-ms": "1500"})
    idle = await raw_factory(srv, "1.0.0")
    busy = await raw_factory(srv, "2.0.0")
    t0 = time.monotonic()
    for _ in range(8):
        await busy.heartbeat()
        await asyncio.sleep(0.4)
    # the idle socket has been closed by now (no frames for > 1.5 s)
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        await asyncio.wait_for(idle.ws.recv(), 5)
    assert time.monotonic() - t0 < 8
    await busy.heartbeat()


async def test_max_concurrent_users(server_factory, raw_factory):
    srv = server_factory({"--max-concurrent-users": "2"})
    a = await raw_factory(srv, "2.0.0")
    b = await raw_factory(srv, "2.0.0")
    c = await raw_factory(srv, "2.0.0")  # connected before the limit was reached
    await a.join("realtime:one")
    await b.join("realtime:two")
    status, _, body = await raw_upgrade(srv, f"/realtime/v1/websocket?apikey={ANON_KEY}&vsn=1.0.0")
    assert status == 429 and json.loads(body) == {"error": "Too many connected users"}, (status, body)
    _, reply = await c.join("realtime:three", expect_ok=False)
    assert reply["payload"] == {"status": "error",
                                "response": {"reason": "ConnectionRateLimitReached: Too many connected users"}}, reply
    # a user leaving frees the slot
    await a.close()
    for _ in range(50):
        status, _, _ = await raw_upgrade(srv, f"/realtime/v1/websocket?apikey={ANON_KEY}&vsn=1.0.0")
        if status == 101:
            break
        await asyncio.sleep(0.1)
    assert status == 101, "slot not freed after a socket closed"


async def test_join_rate_limit_closes_socket_1001(server_factory, raw_factory):
    srv = server_factory({"--max-joins-per-second": "1"})
    sock = await raw_factory(srv, "2.0.0")
    reason = None
    for i in range(200):
        ref = sock.next_ref()
        try:
            await sock.push(f"realtime:j{i}", "phx_join", {"config": {}}, join_ref=ref, ref=ref)
            m = await sock.recv_until(lambda m, ref=ref: m.get("ref") == ref, 5)
        except websockets.exceptions.ConnectionClosed:
            break
        if m["payload"]["status"] == "error":
            reason = m["payload"]["response"]["reason"]
            break
    assert reason == "ClientJoinRateLimitReached: Too many joins per second", reason
    with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
        for _ in range(10):
            await asyncio.wait_for(sock.ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001, info.value


async def test_events_rate_limit(server_factory, raw_factory):
    """The events budget is each socket's own (issue 13): the sender that goes over it gets
    upstream's shutdown; the receiver is not punished for what it was sent; REST broadcasts have
    their own budget, which WebSocket traffic does not spend."""
    srv = server_factory({"--max-events-per-second": "1"})  # 60 events per 60 s
    a = await raw_factory(srv, "2.0.0")
    b = await raw_factory(srv, "2.0.0")
    topic = "realtime:" + unique_topic()
    ja, _ = await a.join(topic)
    await b.join(topic)
    for i in range(400):
        await a.push(topic, "broadcast", {"type": "broadcast", "event": "spam", "payload": {"i": i}}, join_ref=ja)
    closed = await a.recv_until(lambda m: m.get("event") == "system", 10, what="the sender is told")
    assert closed["payload"]["status"] == "error"
    assert closed["payload"]["message"] == "Too many messages per second", closed["raw"]
    await a.recv_until(lambda m: m.get("event") == "phx_close", 10, what="the sender's channel closes")
    got = [await b.recv_until(lambda m: m.get("event") == "broadcast", 10, what=f"delivery {i}") for i in range(60)]
    assert [m["payload"]["payload"]["i"] for m in got] == list(range(60))
    with pytest.raises(AssertionError):
        await b.recv_until(lambda m: m.get("event") in ("broadcast", "system", "phx_close"), 1.0)
    async with httpx.AsyncClient() as http:
        url = f"{srv.http_url}/realtime/v1/api/broadcast"
        one = {"messages": [{"topic": "x", "event": "e", "payload": {}}]}
        r = await http.post(url, headers={"apikey": ANON_KEY}, json=one)
        assert r.status_code == 202, f"{r.status_code} {r.text}"
        many = {"messages": [{"topic": "x", "event": "e", "payload": {}}] * 61}
        r = await http.post(url, headers={"apikey": ANON_KEY}, json=many)
        assert r.status_code == 429, f"{r.status_code} {r.text}"
        r = await http.post(url, headers={"apikey": ANON_KEY}, json=one)
        assert r.status_code == 429, f"{r.status_code} {r.text}"


@pytest.mark.parametrize("sender_vsn,receiver_vsn", [("1.0.0", "2.0.0"), ("2.0.0", "1.0.0"), ("2.0.0", "2.0.0")])
async def test_large_broadcast_payload_intact(server, js_factory, sender_vsn, receiver_vsn):
    topic = unique_topic()
    s = await js_factory("sender", sender_vsn)
    r = await js_factory("receiver", receiver_vsn)
    await s.connect(server)
    await r.connect(server)
    await s.joined(topic, {"broadcast": {"ack": True}})
    await r.joined(topic)
    big = {"rows": [{"id": i, "text": "lorem ipsum ✓ " * 10} for i in range(4000)]}  # ~0.8 MB
    mark = r.log.mark()
    assert await s.send(topic, "big", big) == "ok"
    ev = await r.log.wait_for(is_broadcast("big", topic), 20, start=mark)
    assert ev["payload"]["payload"] == big


async def test_js_v2_binary_broadcast(server, js_factory):
    topic = unique_topic()
    s = await js_factory("sender", "2.0.0")
    r2 = await js_factory("v2", "2.0.0")
    r1 = await js_factory("v1", "1.0.0")
    for p in (s, r2, r1):
        await p.connect(server)
        await p.joined(topic)
    m1, m2 = r1.log.mark(), r2.log.mark()
    assert await s.send(topic, "bin", {"__binary__": "00ff10"}) == "ok"
    assert await s.send(topic, "json", {"after": "bin"}) == "ok"
    ev = await r2.log.wait_for(is_broadcast("bin", topic), 5, start=m2)
    assert ev["payload"]["payload"] == {"__binary__": "00ff10"}
    await r1.log.wait_for(is_broadcast("json", topic), 5, start=m1)
    assert not r1.log.find(is_broadcast("bin", topic), m1), "binary payload delivered to a V1 client"


async def test_fan_out_to_many_sockets(server, raw_factory, js_factory):
    topic_name = unique_topic()
    topic = "realtime:" + topic_name
    socks = []
    for i in range(30):
        s = await raw_factory(server, "1.0.0" if i % 2 else "2.0.0")
        await s.join(topic)
        socks.append(s)
    js = await js_factory("js", "2.0.0")
    await js.connect(server)
    await js.joined(topic_name)
    assert await js.send(topic_name, "fan", {"n": 1}) == "ok"
    for s in socks:
        m = await s.recv_until(lambda m: m.get("event") == "broadcast" or "binary" in m, 10)
        assert m.get("event") == "broadcast" or m["binary"][0] == 4, m


async def test_js_reconnects_and_rejoins_after_server_restart(js_factory):
    srv = ServerProcess().start()
    topic = unique_topic()
    a = await js_factory("a", "2.0.0")
    b = await js_factory("b", "1.0.0")
    await a.connect(srv)
    await b.connect(srv)
    await a.joined(topic)
    await b.joined(topic)
    port = srv.port
    code = srv.stop()
    assert code == 0, f"server exit code on SIGTERM: {code}\n{srv.log_tail()}"
    await a.log.wait_for(lambda e: e["type"] == "socket" and e["event"] == "close", 10)
    srv2 = ServerProcess()
    srv2.port = port
    srv2.start()
    try:
        mark_a, mark_b = a.log.mark(), b.log.mark()
        await a.log.wait_for(lambda e: e["type"] == "status" and e["status"] == "SUBSCRIBED", 20,
                             start=mark_a, what="rejoin after restart")
        await b.log.wait_for(lambda e: e["type"] == "status" and e["status"] == "SUBSCRIBED", 20,
                             start=mark_b, what="rejoin after restart")
        m = b.log.mark()
        assert await a.send(topic, "again", {"x": 1}) == "ok"
        await b.log.wait_for(is_broadcast("again", topic), 10, start=m)
    finally:
        srv2.stop()


async def test_demo_script_runs_against_the_server(server):
    node = shutil.which("node")
    assert node, "node not installed"
    proc = await asyncio.create_subprocess_exec(
        node, str(INTEROP_DIR / "demo.mjs"), server.realtime_ws, ANON_KEY,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "DEMO_ROOM": unique_topic("demo")})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "demo OK" in text, text
    assert 'received broadcast "hello"' in text and 'received broadcast "reply"' in text, text
    assert text.count('received broadcast "from-rest"') == 2, text
