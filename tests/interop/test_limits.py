"""Per-client channel limit and payload size limit (PROTOCOL §4.2 step 6, §7.1, §9.3)."""

from __future__ import annotations

import asyncio

import pytest

from interop_support import is_broadcast, unique_topic

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_101st_channel_is_refused(server, raw_factory, vsn):
    sock = await raw_factory(server, vsn)
    base = unique_topic("limit")
    # pipeline 100 joins, then collect the replies
    refs = {}
    for i in range(100):
        ref = sock.next_ref()
        topic = f"realtime:{base}-{i}"
        refs[ref] = topic
        await sock.push(topic, "phx_join", {"config": {}}, join_ref=ref, ref=ref)
    pending = set(refs)
    while pending:
        m = await sock.recv_until(lambda m: m.get("event") == "phx_reply" and m.get("ref") in pending, 20,
                                  what=f"{len(pending)} join replies")
        assert m["payload"]["status"] == "ok", f"join {refs[m['ref']]} failed: {m['raw']}"
        pending.discard(m["ref"])

    topic101 = f"realtime:{base}-100"
    _, reply = await sock.join(topic101, {"config": {}}, expect_ok=False)
    assert reply["payload"] == {"status": "error",
                                "response": {"reason": "ChannelRateLimitReached: Too many channels"}}, reply

    # the socket is still fine, and leaving one channel frees a slot
    hb = await sock.heartbeat()
    assert hb["payload"]["status"] == "ok"
    ref = await sock.push(f"realtime:{base}-0", "phx_leave", {}, join_ref="1")
    await sock.recv_until(lambda m: m.get("ref") == ref and m.get("event") == "phx_reply", 5)
    await sock.join(topic101, {"config": {}})


async def test_channel_limit_is_per_socket(server, raw_factory):
    """Other connections are not affected by one socket reaching the limit."""
    s1 = await raw_factory(server, "2.0.0")
    base = unique_topic("lim")
    for i in range(100):
        await s1.push(f"realtime:{base}-{i}", "phx_join", {"config": {}}, join_ref=str(1000 + i),
                      ref=str(1000 + i))
    for _ in range(100):
        await s1.recv_until(lambda m: m.get("event") == "phx_reply", 20)
    s2 = await raw_factory(server, "2.0.0")
    await s2.join(f"realtime:{base}-0")


async def test_max_channels_flag_is_honoured(server_factory, raw_factory):
    srv = server_factory({"--max-channels-per-client": "3"})
    sock = await raw_factory(srv, "1.0.0")
    for i in range(3):
        await sock.join(f"realtime:c{i}")
    _, reply = await sock.join("realtime:c3", expect_ok=False)
    assert reply["payload"]["response"] == {"reason": "ChannelRateLimitReached: Too many channels"}


async def test_js_client_sees_channel_limit_error(server_factory, js_factory):
    srv = server_factory({"--max-channels-per-client": "1"})
    js = await js_factory("js", "2.0.0")
    await js.connect(srv)
    await js.joined("first")
    ev = await js.join("second")
    assert ev["status"] == "CHANNEL_ERROR", ev
    assert "ChannelRateLimitReached: Too many channels" in (ev["error"] or ""), ev


async def test_oversized_broadcast_with_ack_gets_payload_size_exceeded(server_factory, raw_factory):
    srv = server_factory({"--max-payload-size-kb": "1"})  # limit 1*1000+500 bytes
    sender = await raw_factory(srv, "2.0.0")
    receiver = await raw_factory(srv, "1.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sender.join(topic, {"config": {"broadcast": {"ack": True, "self": False}}})
    await receiver.join(topic)
    big = {"blob": "x" * 5000}
    ref = await sender.push(topic, "broadcast", {"type": "broadcast", "event": "big", "payload": big},
                            join_ref=jr)
    reply = await sender.recv_until(lambda m: m.get("ref") == ref, 5, what="ack for oversized")
    assert reply["payload"] == {"status": "error", "response": "payload_size_exceeded"}, reply["raw"]
    # the small one still goes through
    ref = await sender.push(topic, "broadcast", {"type": "broadcast", "event": "small", "payload": {"a": 1}},
                            join_ref=jr)
    reply = await sender.recv_until(lambda m: m.get("ref") == ref, 5)
    assert reply["payload"] == {"status": "ok", "response": {}}
    got = await receiver.recv_until(lambda m: m.get("event") == "broadcast", 5)
    assert got["payload"]["event"] == "small", f"oversized broadcast was delivered: {got['raw']}"


async def test_oversized_broadcast_without_ack_is_dropped(server_factory, js_factory):
    srv = server_factory({"--max-payload-size-kb": "1"})
    topic = unique_topic()
    a = await js_factory("a", "1.0.0")
    b = await js_factory("b", "2.0.0")
    await a.connect(srv)
    await b.connect(srv)
    await a.joined(topic)
    await b.joined(topic)
    mark = b.log.mark()
    assert await a.send(topic, "big", {"blob": "y" * 5000}) == "ok"
    assert await a.send(topic, "small", {"n": 1}) == "ok"
    await b.log.wait_for(is_broadcast("small", topic), 5, start=mark)
    await asyncio.sleep(0.3)
    assert not b.log.find(is_broadcast("big", topic), mark), "oversized broadcast delivered"
    # and the sender's channel is still joined
    state = await a.cmd("state")
    assert state["channels"][topic] == "joined", state


async def test_rest_oversized_payload_is_422(server_factory):
    import httpx

    from interop_support import ANON_KEY

    srv = server_factory({"--max-payload-size-kb": "1"})
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{srv.http_url}/realtime/v1/api/broadcast",
                            headers={"apikey": ANON_KEY},
                            json={"messages": [{"topic": "t", "event": "e", "payload": {"b": "z" * 5000}}]})
    assert r.status_code == 422, f"{r.status_code} {r.text}"


async def test_client_presence_rate_limit_closes_channel(server_factory, raw_factory):
    srv = server_factory({"--client-presence-max-calls": "2", "--client-presence-window-ms": "30000"})
    sock = await raw_factory(srv, "2.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic, {"config": {"presence": {"key": "k", "enabled": True}}})
    for i in range(3):
        await sock.push(topic, "presence", {"type": "presence", "event": "track", "payload": {"i": i}},
                        join_ref=jr)
    sysmsg = await sock.recv_until(lambda m: m.get("event") == "system", 10, what="rate limit system msg")
    assert sysmsg["payload"]["status"] == "error"
    assert sysmsg["payload"]["message"] == "Client presence rate limit exceeded", sysmsg["raw"]
    close = await sock.recv_until(lambda m: m.get("event") == "phx_close", 5)
    assert close["ref"] == jr


async def test_oversized_track_closes_channel(server_factory, raw_factory):
    srv = server_factory({"--max-payload-size-kb": "1"})
    sock = await raw_factory(srv, "1.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic, {"config": {"presence": {"key": "big", "enabled": True}}})
    await sock.push(topic, "presence", {"type": "presence", "event": "track", "payload": {"b": "x" * 5000}},
                    join_ref=jr)
    sysmsg = await sock.recv_until(lambda m: m.get("event") == "system", 5, what="size system message")
    assert sysmsg["payload"]["status"] == "error"
    assert sysmsg["payload"]["message"] == "Track message size exceeded", sysmsg["raw"]
    close = await sock.recv_until(lambda m: m.get("event") == "phx_close", 5)
    assert close["ref"] == jr
