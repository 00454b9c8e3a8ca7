"""Broadcast between the official clients: realtime-js with vsn 1.0.0 (JSON objects),
realtime-js with vsn 2.0.0 (JSON arrays + binary kind 3/4) and the Python client."""

from __future__ import annotations

import asyncio

import pytest

from interop_support import SERVICE_ROLE_KEY, is_broadcast, unique_topic

pytestmark = pytest.mark.asyncio

EVENTS = ["from-v1", "from-v2", "from-py"]


async def _three_peers(server, js_factory, py_factory, topic, config):
    v1 = await js_factory("js-v1", "1.0.0")
    v2 = await js_factory("js-v2", "2.0.0")
    await v1.connect(server)
    await v2.connect(server)
    py = await py_factory("py").connect(server)
    await v1.joined(topic, config)
    await v2.joined(topic, config)
    await py.joined(topic, config, events=EVENTS)
    return v1, v2, py


def _payload(sender: str) -> dict:
    return {
        "from": sender,
        "n": 42,
        "f": 1.5,
        "neg": -7,
        "flag": True,
        "none": None,
        "text": "héllo ✓ \"quoted\" \\ back",
        "list": [1, "two", {"three": 3}],
        "nested": {"a": {"b": {"c": []}}},
    }


async def test_broadcast_between_js_v1_js_v2_and_python_self_off(server, js_factory, py_factory):
    topic = unique_topic()
    config = {"broadcast": {"self": False, "ack": False}}
    v1, v2, py = await _three_peers(server, js_factory, py_factory, topic, config)
    peers = {"js-v1": v1, "js-v2": v2, "py": py}
    marks = {name: p.log.mark() for name, p in peers.items()}

    # JS v1 -> everyone else
    assert await v1.send(topic, "from-v1", _payload("js-v1")) == "ok"
    # JS v2 -> everyone else (goes out as binary kind 3)
    assert await v2.send(topic, "from-v2", _payload("js-v2")) == "ok"
    # Python -> everyone else
    await py.channels[topic].send_broadcast("from-py", _payload("py"))

    senders = {"from-v1": "js-v1", "from-v2": "js-v2", "from-py": "py"}
    for event, sender in senders.items():
        for name, peer in peers.items():
            if name == sender:
                continue
            ev = await peer.log.wait_for(is_broadcast(event, topic), 10, start=marks[name],
                                         what=f"{event} at {name}")
            got = ev["payload"]
            assert got["event"] == event, got
            assert got["payload"] == _payload(sender), f"{name} got {got}"
            if name != "py":
                # realtime-js hands the whole broadcast object to the callback
                assert got["type"] == "broadcast", got

    # self is off: nobody hears its own message, and nobody hears anything twice.
    await asyncio.sleep(0.5)
    for name, peer in peers.items():
        for event, sender in senders.items():
            got = peer.log.find(is_broadcast(event, topic), marks[name])
            expected = 0 if name == sender else 1
            assert len(got) == expected, f"{name} received {event} {len(got)} times: {got}"


async def test_broadcast_self_on_every_client_hears_itself(server, js_factory, py_factory):
    topic = unique_topic()
    config = {"broadcast": {"self": True, "ack": False}}
    v1, v2, py = await _three_peers(server, js_factory, py_factory, topic, config)
    marks = {p: p.log.mark() for p in (v1, v2, py)}

    assert await v1.send(topic, "from-v1", {"me": "v1"}) == "ok"
    assert await v2.send(topic, "from-v2", {"me": "v2"}) == "ok"
    await py.channels[topic].send_broadcast("from-py", {"me": "py"})

    for peer in (v1, v2, py):
        for event, me in (("from-v1", "v1"), ("from-v2", "v2"), ("from-py", "py")):
            ev = await peer.log.wait_for(is_broadcast(event, topic), 10, start=marks[peer],
                                         what=f"{event} at {peer.name}")
            assert ev["payload"]["payload"] == {"me": me}
    await asyncio.sleep(0.3)
    for peer in (v1, v2, py):
        for event in EVENTS:
            n = len(peer.log.find(is_broadcast(event, topic), marks[peer]))
            assert n == 1, f"{peer.name} got {event} {n} times"


async def test_self_config_is_per_channel(server, js_factory):
    """A self:false sender does not hear itself even when a self:true peer shares the room."""
    topic = unique_topic()
    a = await js_factory("a", "2.0.0")
    b = await js_factory("b", "1.0.0")
    await a.connect(server)
    await b.connect(server)
    await a.joined(topic, {"broadcast": {"self": False}})
    await b.joined(topic, {"broadcast": {"self": True}})
    ma, mb = a.log.mark(), b.log.mark()
    assert await a.send(topic, "x", {"by": "a"}) == "ok"
    assert await b.send(topic, "y", {"by": "b"}) == "ok"
    await b.log.wait_for(is_broadcast("x", topic), 10, start=mb)
    await b.log.wait_for(is_broadcast("y", topic), 10, start=mb)
    await a.log.wait_for(is_broadcast("y", topic), 10, start=ma)
    await a.log.assert_none(is_broadcast("x", topic), 0.5, start=ma, what="own broadcast with self off")


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_broadcast_ack_send_resolves_ok(server, js_factory, vsn):
    topic = unique_topic()
    sender = await js_factory(f"ack-{vsn}", vsn)
    receiver = await js_factory("receiver", "2.0.0")
    await sender.connect(server, timeout=5000)
    await receiver.connect(server)
    await sender.joined(topic, {"broadcast": {"ack": True, "self": False}})
    await receiver.joined(topic, {"broadcast": {"ack": False}})
    mark = receiver.log.mark()
    for i in range(3):
        result = await sender.send(topic, "acked", {"i": i})
        assert result == "ok", f"send() with ack resolved {result!r}"
    for i in range(3):
        await receiver.log.wait_for(
            lambda e, i=i: is_broadcast("acked", topic)(e) and e["payload"]["payload"] == {"i": i},
            10, start=mark)


async def test_ack_off_gets_no_reply_on_the_wire(server, raw_factory):
    """Without ack the server must not reply to a broadcast push (PROTOCOL §3.3)."""
    topic = "realtime:" + unique_topic()
    for vsn in ("1.0.0", "2.0.0"):
        sock = await raw_factory(server, vsn)
        join_ref, _ = await sock.join(topic)
        ref = await sock.push(topic, "broadcast", {"type": "broadcast", "event": "e", "payload": {}},
                              join_ref=join_ref)
        hb = await sock.heartbeat()
        assert hb["event"] == "phx_reply"
        stray = [m for m in sock.backlog if m.get("ref") == ref]
        assert not stray, f"unexpected reply to broadcast without ack: {stray}"

        # With ack: a reply {"status":"ok","response":{}} with the push's ref.
        topic2 = "realtime:" + unique_topic()
        jr2, _ = await sock.join(topic2, {"config": {"broadcast": {"ack": True}}})
        ref2 = await sock.push(topic2, "broadcast", {"type": "broadcast", "event": "e", "payload": {}},
                               join_ref=jr2)
        reply = await sock.recv_until(lambda m: m.get("ref") == ref2, 5, what="ack reply")
        assert reply["event"] == "phx_reply"
        assert reply["topic"] == topic2
        assert reply["payload"] == {"status": "ok", "response": {}}


async def test_broadcast_is_scoped_to_topic(server, js_factory, py_factory):
    t1, t2 = unique_topic(), unique_topic()
    a = await js_factory("a", "2.0.0")
    b = await js_factory("b", "1.0.0")
    await a.connect(server)
    await b.connect(server)
    py = await py_factory().connect(server)
    await a.joined(t1)
    await b.joined(t2)
    await py.joined(t2, events=["only-t1"])
    mb, mp = b.log.mark(), py.log.mark()
    assert await a.send(t1, "only-t1", {"x": 1}) == "ok"
    await b.log.assert_none(is_broadcast("only-t1"), 1.0, start=mb, what="broadcast from another topic")
    await py.log.assert_none(is_broadcast("only-t1"), 0.1, start=mp, what="broadcast from another topic")


async def test_private_and_public_rooms_with_same_name_are_distinct(server, raw_factory):
    """PROTOCOL §3.1: public and private channels with the same name are different rooms."""
    name = unique_topic()
    topic = "realtime:" + name
    pub = await raw_factory(server, "1.0.0")
    priv = await raw_factory(server, "1.0.0", apikey=SERVICE_ROLE_KEY)
    jr_pub, _ = await pub.join(topic, {"config": {"broadcast": {"self": False}, "private": False}})
    jr_priv, reply = await priv.join(topic, {"config": {"broadcast": {"self": False}, "private": True}},
                                     expect_ok=False)
    if reply["payload"]["status"] != "ok":
        pytest.skip(f"private channels need the database here: {reply['payload']}")
    await pub.push(topic, "broadcast", {"type": "broadcast", "event": "pub", "payload": {}},
                   join_ref=jr_pub)
    hb = await priv.heartbeat()
    assert hb["event"] == "phx_reply"
    await asyncio.sleep(0.5)
    await priv.heartbeat()
    leaked = [m for m in priv.backlog if m.get("event") == "broadcast"]
    assert not leaked, f"public broadcast reached the private room: {leaked}"


async def test_broadcast_latency_after_ack(server, js_factory):
    """Back-to-back small frames to one client must not wait for its delayed ACK (Nagle):
    a broadcast arriving right after the client's own ack must be delivered in well under 40 ms."""
    import time

    topic = unique_topic()
    a = await js_factory("a", "1.0.0")
    b = await js_factory("b", "2.0.0")
    await a.connect(server)
    await b.connect(server)
    await a.joined(topic, {"broadcast": {"ack": True}})
    await b.joined(topic, {"broadcast": {"ack": True}})
    lats = []
    for i in range(10):
        mark = a.log.mark()
        assert await a.send(topic, "x", {"i": i}) == "ok"
        t0 = time.monotonic()
        assert await b.send(topic, "y", {"i": i}) == "ok"
        ev = await a.log.wait_for(
            lambda e, i=i: is_broadcast("y", topic)(e) and e["payload"]["payload"] == {"i": i}, 5, start=mark)
        lats.append((ev["_t"] - t0) * 1000)
    lats.sort()
    median = lats[len(lats) // 2]
    assert median < 25, f"median delivery latency {median:.1f} ms (all: {[round(x, 1) for x in lats]})"


@pytest.mark.parametrize("flag", [True, "true", "TRUE", "True"])
async def test_flexible_booleans_in_join_config(server, raw_factory, flag):
    """PROTOCOL §4.1: booleans may be JSON booleans or the strings "true"/"false" in any case."""
    sock = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic, {"config": {"broadcast": {"self": flag, "ack": flag}}})
    ref = await sock.push(topic, "broadcast", {"type": "broadcast", "event": "me", "payload": {}}, join_ref=jr)
    ack = await sock.recv_until(lambda m: m.get("ref") == ref, 5, what="ack")
    assert ack["payload"] == {"status": "ok", "response": {}}
    got = await sock.recv_until(lambda m: m.get("event") == "broadcast", 5, what="self broadcast")
    assert got["payload"]["event"] == "me"


@pytest.mark.parametrize("flag", [False, "false", "FALSE"])
async def test_flexible_false_in_join_config(server, raw_factory, flag):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic, {"config": {"broadcast": {"self": flag, "ack": flag}}})
    ref = await sock.push(topic, "broadcast", {"type": "broadcast", "event": "me", "payload": {}}, join_ref=jr)
    await sock.heartbeat()
    await sock.heartbeat()
    unexpected = [m for m in sock.backlog if m.get("ref") == ref or m.get("event") == "broadcast"]
    assert not unexpected, unexpected


async def test_connected_client_fixtures_talk(js_v1, js_v2, py_client):
    topic = unique_topic()
    await js_v1.joined(topic)
    await js_v2.joined(topic)
    await py_client.joined(topic, events=["fx"])
    m1, m2, mp = js_v1.log.mark(), js_v2.log.mark(), py_client.log.mark()
    await py_client.channels[topic].send_broadcast("fx", {"from": "py"})
    for peer, mark in ((js_v1, m1), (js_v2, m2)):
        ev = await peer.log.wait_for(is_broadcast("fx", topic), 10, start=mark)
        assert ev["payload"] == {"type": "broadcast", "event": "fx", "payload": {"from": "py"}}, ev
    await py_client.log.assert_none(is_broadcast("fx"), 0.2, start=mp)
