"""Exact wire shapes checked with a raw socket (PROTOCOL §2, §3.4, §3.5, §4.4, §7.1)."""

from __future__ import annotations

import json

import pytest

from interop_support import decode_user_broadcast, encode_user_broadcast_push, unique_topic

pytestmark = pytest.mark.asyncio


async def test_heartbeat_reply_v1_exact(server, raw_factory):
    sock = await raw_factory(server, "1.0.0")
    await sock.send_raw('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}')
    frame = await sock.ws.recv()
    assert isinstance(frame, str)
    assert json.loads(frame) == {"topic": "phoenix", "event": "phx_reply",
                                 "payload": {"status": "ok", "response": {}}, "ref": "7"}, frame


async def test_heartbeat_reply_v2_exact(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    await sock.send_raw('[null,"7","phoenix","heartbeat",{}]')
    frame = await sock.ws.recv()
    assert isinstance(frame, str), f"heartbeat reply must be a text frame: {frame!r}"
    assert json.loads(frame) == [None, "7", "phoenix", "phx_reply", {"status": "ok", "response": {}}], frame


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_heartbeat_with_null_ref_python_style(server, raw_factory, vsn):
    """Python sends heartbeats with ref null; the reply comes back with ref null."""
    sock = await raw_factory(server, vsn)
    await sock.push("phoenix", "heartbeat", {}, ref=None)
    m = await sock.recv_until(lambda m: m.get("topic") == "phoenix", 5)
    assert m["event"] == "phx_reply" and m["ref"] is None and m["payload"] == {"status": "ok", "response": {}}


async def test_default_vsn_is_v1(server, raw_factory):
    sock = await raw_factory(server, None)
    sock.vsn = "1.0.0"
    await sock.send_raw('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"3"}')
    assert json.loads(await sock.ws.recv()) == {"topic": "phoenix", "event": "phx_reply",
                                                "payload": {"status": "ok", "response": {}}, "ref": "3"}


async def test_join_reply_exact_v1(server, raw_factory):
    sock = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    await sock.send_raw(json.dumps({"topic": topic, "event": "phx_join", "ref": "1", "join_ref": "1",
                                    "payload": {"config": {"broadcast": {"self": False, "ack": False},
                                                           "presence": {"key": "", "enabled": False},
                                                           "postgres_changes": [], "private": False}}}))
    frame = json.loads(await sock.ws.recv())
    assert frame == {"topic": topic, "event": "phx_reply", "ref": "1",
                     "payload": {"status": "ok", "response": {"postgres_changes": []}}}, frame


async def test_join_reply_exact_v2(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    await sock.send_raw(json.dumps(["3", "3", topic, "phx_join", {"config": {}}]))
    frame = json.loads(await sock.ws.recv())
    assert frame == ["3", "3", topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}], frame


async def test_phx_leave_v2_reply_then_close_with_join_ref(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    await sock.send_raw(json.dumps(["1", "1", topic, "phx_join", {"config": {}}]))
    json.loads(await sock.ws.recv())
    await sock.send_raw(json.dumps(["1", "8", topic, "phx_leave", {}]))
    first = json.loads(await sock.ws.recv())
    second = json.loads(await sock.ws.recv())
    assert first == ["1", "8", topic, "phx_reply", {"status": "ok", "response": {}}], first
    assert second == ["1", "1", topic, "phx_close", {}], second


async def test_phx_leave_v1_reply_then_close_with_join_ref(server, raw_factory):
    sock = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    await sock.send_raw(json.dumps({"topic": topic, "event": "phx_join", "payload": {"config": {}},
                                    "ref": "5", "join_ref": "5"}))
    json.loads(await sock.ws.recv())
    await sock.send_raw(json.dumps({"topic": topic, "event": "phx_leave", "payload": {},
                                    "ref": "6", "join_ref": "5"}))
    first = json.loads(await sock.ws.recv())
    second = json.loads(await sock.ws.recv())
    assert first == {"topic": topic, "event": "phx_reply", "payload": {"status": "ok", "response": {}},
                     "ref": "6"}, first
    assert second == {"topic": topic, "event": "phx_close", "payload": {}, "ref": "5"}, second


async def test_after_leave_channel_no_longer_receives(server, raw_factory):
    a = await raw_factory(server, "2.0.0")
    b = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    ja, _ = await a.join(topic)
    jb, _ = await b.join(topic)
    ref = await a.push(topic, "phx_leave", {}, join_ref=ja)
    await a.recv_until(lambda m: m.get("event") == "phx_close", 5)
    await b.push(topic, "broadcast", {"type": "broadcast", "event": "late", "payload": {}}, join_ref=jb)
    await a.heartbeat()
    await a.heartbeat()
    assert not [m for m in a.backlog if m.get("event") == "broadcast"], a.backlog
    assert ref


async def test_phx_leave_for_unjoined_topic_is_ok_without_close(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    ref = await sock.push("realtime:never-joined", "phx_leave", {})
    r = await sock.recv_until(lambda m: m.get("ref") == ref, 5)
    assert r["event"] == "phx_reply" and r["payload"] == {"status": "ok", "response": {}}, r["raw"]
    await sock.heartbeat()
    assert not [m for m in sock.backlog if m.get("event") == "phx_close"], sock.backlog


async def test_duplicate_join_closes_old_instance(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    await sock.send_raw(json.dumps(["1", "1", topic, "phx_join", {"config": {}}]))
    assert json.loads(await sock.ws.recv())[3] == "phx_reply"
    await sock.send_raw(json.dumps(["2", "2", topic, "phx_join", {"config": {}}]))
    frames = [json.loads(await sock.ws.recv()), json.loads(await sock.ws.recv())]
    assert ["1", "1", topic, "phx_close", {}] in frames, frames
    assert ["2", "2", topic, "phx_reply", {"status": "ok", "response": {"postgres_changes": []}}] in frames, frames
    assert frames.index(["1", "1", topic, "phx_close", {}]) == 0, f"close of the old instance comes first: {frames}"


async def test_v2_text_broadcast_shapes(server, raw_factory):
    """Text broadcast from V1 arrives on V2 as [null,null,topic,"broadcast",{...}] and extra keys survive."""
    v1 = await raw_factory(server, "1.0.0")
    v2 = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    j1, _ = await v1.join(topic)
    await v2.join(topic)
    await v1.push(topic, "broadcast", {"type": "broadcast", "event": "cursor", "payload": {"x": 10},
                                       "extra": "kept"}, join_ref=j1)
    frame = await v2.recv_until(lambda m: m.get("event") == "broadcast", 5)
    assert frame["raw"] == [None, None, topic, "broadcast",
                            {"type": "broadcast", "event": "cursor", "payload": {"x": 10}, "extra": "kept"}], frame


async def test_v2_kind3_push_becomes_kind4_and_v1_text(server, raw_factory):
    sender = await raw_factory(server, "2.0.0")
    v2 = await raw_factory(server, "2.0.0")
    v1 = await raw_factory(server, "1.0.0")
    name = unique_topic()
    topic = "realtime:" + name
    jr, _ = await sender.join(topic, {"config": {"broadcast": {"ack": True}}})
    await v2.join(topic)
    await v1.join(topic)
    await sender.send_raw(encode_user_broadcast_push(jr, "50", topic, "msg", b'{"a":1}'))
    ack = await sender.recv_until(lambda m: m.get("ref") == "50", 5, what="ack for kind 3")
    assert ack["raw"] == [jr, "50", topic, "phx_reply", {"status": "ok", "response": {}}], ack

    b = await v2.recv_until(lambda m: "binary" in m, 5, what="kind 4 frame")
    k4 = decode_user_broadcast(b["binary"])
    assert k4["topic"] == topic and k4["event"] == "msg" and k4["encoding"] == 1, k4
    assert json.loads(k4["payload"]) == {"a": 1}
    assert b["binary"] == bytes([4, len(topic), 3, 0, 1]) + topic.encode() + b"msg" + b'{"a":1}', b["binary"]

    t = await v1.recv_until(lambda m: m.get("event") == "broadcast", 5, what="V1 text broadcast")
    assert t["raw"] == {"topic": topic, "event": "broadcast", "ref": None,
                        "payload": {"type": "broadcast", "event": "msg", "payload": {"a": 1}}}, t["raw"]


async def test_v2_binary_payload_not_delivered_to_v1(server, raw_factory):
    sender = await raw_factory(server, "2.0.0")
    v2 = await raw_factory(server, "2.0.0")
    v1 = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sender.join(topic)
    await v2.join(topic)
    await v1.join(topic)
    await sender.send_raw(encode_user_broadcast_push(jr, "9", topic, "raw", b"\xca\xfe", json_encoding=False))
    b = await v2.recv_until(lambda m: "binary" in m, 5)
    assert b["binary"] == bytes([4, len(topic), 3, 0, 0]) + topic.encode() + b"raw" + b"\xca\xfe"
    await v1.heartbeat()
    await v1.heartbeat()
    assert not [m for m in v1.backlog if m.get("event") == "broadcast"], v1.backlog


async def test_js_v2_binary_payload_round_trip(server, js_factory, raw_factory):
    """realtime-js v2 decodes kind 4 into {type, event, payload} for JSON and binary payloads."""
    js = await js_factory("js", "2.0.0")
    await js.connect(server)
    name = unique_topic()
    await js.joined(name)
    sender = await raw_factory(server, "2.0.0")
    topic = "realtime:" + name
    jr, _ = await sender.join(topic)
    mark = js.log.mark()
    await sender.send_raw(encode_user_broadcast_push(jr, "9", topic, "j", b'{"k":[1,2]}'))
    await sender.send_raw(encode_user_broadcast_push(jr, "10", topic, "b", b"\x00\x01\xff", json_encoding=False))
    ev = await js.log.wait_for(lambda e: e["type"] == "broadcast" and e["event"] == "j", 5, start=mark)
    assert ev["payload"] == {"type": "broadcast", "event": "j", "payload": {"k": [1, 2]}}, ev
    ev = await js.log.wait_for(lambda e: e["type"] == "broadcast" and e["event"] == "b", 5, start=mark)
    assert ev["payload"]["payload"] == {"__binary__": "0001ff"}, ev


async def test_python_style_null_join_ref_is_accepted(server, raw_factory):
    """Python never sends join_ref; messages with join_ref null must still reach the channel."""
    a = await raw_factory(server, "1.0.0")
    b = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    await a.push(topic, "phx_join", {"config": {"broadcast": {"ack": True}}}, join_ref=None, ref="1")
    r = await a.recv_until(lambda m: m.get("ref") == "1", 5)
    assert r["payload"]["status"] == "ok"
    await b.join(topic)
    await a.push(topic, "broadcast", {"type": "broadcast", "event": "nojr", "payload": {}}, join_ref=None, ref="2")
    ack = await a.recv_until(lambda m: m.get("ref") == "2", 5)
    assert ack["payload"] == {"status": "ok", "response": {}}
    got = await b.recv_until(lambda m: m.get("event") == "broadcast", 5)
    assert got["payload"]["event"] == "nojr"


async def test_stale_join_ref_is_dropped(server, raw_factory):
    a = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await a.join(topic, {"config": {"broadcast": {"ack": True, "self": True}}})
    await a.push(topic, "broadcast", {"type": "broadcast", "event": "stale", "payload": {}},
                 join_ref="999", ref="77")
    await a.heartbeat()
    await a.heartbeat()
    assert not [m for m in a.backlog if m.get("ref") == "77" or m.get("event") == "broadcast"], a.backlog


async def test_socket_websocket_path_works(server):
    import websockets

    ws = await websockets.connect(server.ws_url(path="/socket/websocket", vsn="2.0.0"))
    await ws.send('[null,"1","phoenix","heartbeat",{}]')
    assert json.loads(await ws.recv()) == [None, "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    await ws.close()


async def test_ping_endpoints(server):
    import httpx

    async with httpx.AsyncClient() as http:
        for path in ("/api/ping", "/realtime/v1/api/ping"):
            r = await http.get(server.http_url + path)
            assert r.status_code == 200 and r.json() == {"message": "Success"}, (path, r.text)


async def test_v2_array_with_extra_elements_is_accepted(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    await sock.send_raw('[null,"5","phoenix","heartbeat",{},"extra",7]')
    assert json.loads(await sock.ws.recv()) == [None, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}]


async def test_v1_object_with_extra_keys_is_accepted(server, raw_factory):
    sock = await raw_factory(server, "1.0.0")
    await sock.send_raw('{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"6","extra":{"x":1}}')
    assert json.loads(await sock.ws.recv()) == {"topic": "phoenix", "event": "phx_reply",
                                                "payload": {"status": "ok", "response": {}}, "ref": "6"}


async def test_broadcast_without_type_key_is_forwarded(server, raw_factory):
    a = await raw_factory(server, "1.0.0")
    b = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    ja, _ = await a.join(topic)
    await b.join(topic)
    await a.push(topic, "broadcast", {"event": "no-type", "payload": {"k": 1}}, join_ref=ja)
    got = await b.recv_until(lambda m: m.get("event") == "broadcast", 5)
    assert got["payload"]["event"] == "no-type" and got["payload"]["payload"] == {"k": 1}, got["raw"]


@pytest.mark.parametrize("token", [None, "sb_publishable_xyz"])
async def test_ignored_access_token_pushes(server, raw_factory, token):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic, {"config": {"broadcast": {"self": True}}})
    await sock.push(topic, "access_token", {"access_token": token}, join_ref=jr)
    await sock.push(topic, "broadcast", {"type": "broadcast", "event": "still-here", "payload": {}}, join_ref=jr)
    got = await sock.recv_until(lambda m: m.get("event") in ("broadcast", "system", "phx_close"), 5)
    assert got["event"] == "broadcast", got.get("raw")
    assert not [m for m in sock.backlog if m.get("event") == "phx_reply"], sock.backlog


async def test_python_style_duplicate_join(server, raw_factory):
    """Python joins with join_ref null; a second join of the same topic replaces the first."""
    sock = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    await sock.push(topic, "phx_join", {"config": {}}, join_ref=None, ref="1")
    r1 = await sock.recv_until(lambda m: m.get("ref") == "1" and m.get("event") == "phx_reply", 5)
    assert r1["payload"]["status"] == "ok"
    await sock.push(topic, "phx_join", {"config": {"broadcast": {"self": True}}}, join_ref=None, ref="2")
    r2 = await sock.recv_until(lambda m: m.get("ref") == "2" and m.get("event") == "phx_reply", 5)
    assert r2["payload"]["status"] == "ok"
    await sock.push(topic, "broadcast", {"type": "broadcast", "event": "once", "payload": {}}, join_ref=None)
    await sock.recv_until(lambda m: m.get("event") == "broadcast", 5)
    await sock.heartbeat()
    await sock.heartbeat()
    dupes = [m for m in sock.backlog if m.get("event") == "broadcast"]
    assert not dupes, f"two channel instances are live for one topic: {dupes}"
