"""Malformed input must leave the socket and the server up (PROTOCOL §1.7, §2.2, §4.1):
after each bad frame a heartbeat still gets its reply, the joined channel still works and
another client still works."""

from __future__ import annotations

import json

import pytest
import websockets
import websockets.exceptions

from interop_support import (
    ANON_KEY,
    encode_user_broadcast_push,
    is_broadcast,
    unique_topic,
)

pytestmark = pytest.mark.asyncio

COMMON_TEXT_FRAMES = {
    "not-json": "this is not json",
    "truncated-json": '{"topic": "phoenix", "event": "heartbeat"',
    "empty": "",
    "whitespace": "   \n ",
    "json-number": "42",
    "json-string": '"hello"',
    "json-null": "null",
    "json-true": "true",
    "empty-array": "[]",
    "short-array": '["1", "2", "phoenix"]',
    "empty-object": "{}",
    "object-missing-ref": '{"topic": "phoenix", "event": "heartbeat", "payload": {}}',
    "object-missing-payload": '{"topic": "phoenix", "event": "heartbeat", "ref": "77"}',
    "topic-not-string": '{"topic": 5, "event": "heartbeat", "payload": {}, "ref": "78"}',
    "event-not-string": '{"topic": "phoenix", "event": ["x"], "payload": {}, "ref": "79"}',
    "ref-object": '{"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": {"a": 1}}',
    "array-wrong-types": '[1, 2, 3, 4, 5]',
    "array-null-topic": '[null, "80", null, "heartbeat", {}]',
    "deep-nesting": "[" * 5000 + "]" * 5000,
    "huge-number": '{"topic": "phoenix", "event": "heartbeat", "payload": {"n": 1e999999}, "ref": "81"}',
    "invalid-escape": '{"topic": "phoenix\\q", "event": "heartbeat", "payload": {}, "ref": "82"}',
    "lone-surrogate": '{"topic": "realtime:x", "event": "broadcast", "payload": {"s": "\\ud800"}, "ref": "83"}',
    "unknown-event-phoenix": '{"topic": "phoenix", "event": "bogus", "payload": {}, "ref": "84"}',
    "unknown-topic-event": '{"topic": "nope", "event": "bogus", "payload": {}, "ref": "85"}',
    "broadcast-unjoined": '{"topic": "realtime:not-joined", "event": "broadcast", "payload": {"type": "broadcast", "event": "x", "payload": {}}, "ref": "86"}',
    "presence-unjoined": '{"topic": "realtime:not-joined", "event": "presence", "payload": {"event": "track", "payload": {}}, "ref": "87"}',
}

V2_BINARY_FRAMES = {
    "garbage": b"\xff\x00garbage\x01\x02",
    "empty-binary": b"",
    "kind3-truncated-header": b"\x03\x01\x01",
    "kind3-lengths-past-end": b"\x03\x09\x09\xff\x05\x00\x01abc",
    "kind3-bad-encoding": encode_user_broadcast_push("1", "2", "realtime:x", "e", b"{}")[:6] + b"\x07"
    + encode_user_broadcast_push("1", "2", "realtime:x", "e", b"{}")[7:],
    "kind3-invalid-json-payload": encode_user_broadcast_push("1", "2", "realtime:x", "e", b"{nope"),
    "kind3-invalid-utf8-topic": b"\x03\x01\x01\x02\x01\x00\x01" + b"12" + b"\xff\xfe" + b"e" + b"{}",
    "kind4-from-client": b"\x04\x01\x01\x00\x01" + b"te" + b"{}",
    "kind0-push-unjoined": b"\x00\x01\x01\x0a\x09" + b"12" + b"realtime:z" + b"broadcast" + b"\x00\x01",
    "kind1-from-client": b"\x01\x00\x00\x00\x00",
    "kind2-from-client": b"\x02\x00\x00",
}

BAD_JOIN_PAYLOADS = {
    "config-string": {"config": "nope"},
    "config-list": {"config": [1, 2]},
    "payload-null": None,
    "payload-list": [1, 2, 3],
    "broadcast-wrong-types": {"config": {"broadcast": {"self": 5, "ack": [1]}}},
    "presence-wrong-types": {"config": {"presence": {"key": {"nested": True}, "enabled": "maybe"}}},
    "private-wrong-type": {"config": {"private": {"x": 1}}},
    "postgres-changes-wrong": {"config": {"postgres_changes": "all"}},
    "access-token-number": {"config": {}, "access_token": 12345},
    "replay-wrong": {"config": {"broadcast": {"replay": "yesterday"}}},
}


async def _assert_alive(sock, other_topic=None, other=None, join_ref=None):
    hb = await sock.heartbeat(timeout=5)
    assert hb["event"] == "phx_reply" and hb["payload"] == {"status": "ok", "response": {}}, hb
    if other is not None:
        # the already-joined channel still relays broadcasts from another client
        await other.push(other_topic, "broadcast", {"type": "broadcast", "event": "ping", "payload": {}},
                         join_ref=join_ref)
        got = await sock.recv_until(lambda m: m.get("event") == "broadcast", 5, what="relay after bad frame")
        assert got["payload"]["event"] == "ping"


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_malformed_text_frames_keep_socket_up(server, raw_factory, vsn):
    sock = await raw_factory(server, vsn)
    other = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    await sock.join(topic)
    other_jr, _ = await other.join(topic)
    for name, frame in COMMON_TEXT_FRAMES.items():
        await sock.send_raw(frame)
        try:
            await _assert_alive(sock, topic, other, other_jr)
        except (AssertionError, websockets.exceptions.ConnectionClosed) as e:
            raise AssertionError(f"after malformed frame {name!r}: {e!r}") from e


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_wrong_shape_for_the_negotiated_serializer(server, raw_factory, vsn):
    """A V1 object on a V2 socket and a V2 array on a V1 socket are malformed, not fatal."""
    sock = await raw_factory(server, vsn)
    if vsn == "2.0.0":
        frame = json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "900"})
    else:
        frame = json.dumps([None, "900", "phoenix", "heartbeat", {}])
    await sock.send_raw(frame)
    await _assert_alive(sock)


async def test_v2_binary_garbage_keeps_socket_up(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    other = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    await sock.join(topic)
    other_jr, _ = await other.join(topic)
    for name, frame in V2_BINARY_FRAMES.items():
        await sock.send_raw(frame)
        try:
            await _assert_alive(sock, topic, other, other_jr)
        except (AssertionError, websockets.exceptions.ConnectionClosed) as e:
            raise AssertionError(f"after binary frame {name!r}: {e!r}") from e


async def test_binary_frame_on_v1_socket_keeps_socket_up(server, raw_factory):
    sock = await raw_factory(server, "1.0.0")
    await sock.send_raw(encode_user_broadcast_push("1", "2", "realtime:x", "e", b"{}"))
    await sock.send_raw(b"\xde\xad\xbe\xef")
    await _assert_alive(sock)


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_wrong_types_in_join_payload(server, raw_factory, vsn):
    sock = await raw_factory(server, vsn)
    for name, payload in BAD_JOIN_PAYLOADS.items():
        topic = "realtime:" + unique_topic(name)
        ref = sock.next_ref()
        await sock.push(topic, "phx_join", payload, join_ref=ref, ref=ref)
        try:
            # the server answers (ok or error); either way the socket lives on
            reply = await sock.recv_until(lambda m: m.get("ref") == ref and m.get("event") == "phx_reply",
                                          5, what=f"reply to join {name}")
            assert reply["payload"]["status"] in ("ok", "error"), reply
            await _assert_alive(sock)
        except (AssertionError, websockets.exceptions.ConnectionClosed) as e:
            raise AssertionError(f"after join payload {name!r}: {e!r}") from e
    # and a proper join on the same socket still works
    await sock.join("realtime:" + unique_topic())


async def test_unknown_event_on_joined_channel_gets_no_reply(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic)
    ref = await sock.push(topic, "something_else", {"x": 1}, join_ref=jr)
    await _assert_alive(sock)
    assert not [m for m in sock.backlog if m.get("ref") == ref], sock.backlog


async def test_unmatched_topic_and_empty_topic_name(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    ref = sock.next_ref()
    await sock.push("not-realtime:room", "phx_join", {"config": {}}, join_ref=ref, ref=ref)
    r = await sock.recv_until(lambda m: m.get("ref") == ref, 5)
    assert r["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}, r["raw"]
    _, r = await sock.join("realtime:", {"config": {}}, expect_ok=False)
    assert r["payload"] == {"status": "error",
                            "response": {"reason": "TopicNameRequired: You must provide a topic name"}}, r
    await _assert_alive(sock)


async def test_oversized_frame_does_not_take_the_server_down(server_factory, raw_factory, js_factory):
    srv = server_factory({"--max-frame-size": "65536"})
    sock = await raw_factory(srv, "2.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic)
    try:
        await sock.push(topic, "broadcast",
                        {"type": "broadcast", "event": "huge", "payload": {"b": "q" * 200_000}}, join_ref=jr)
        # the socket may be closed (1009) or the frame dropped; either is fine here
        try:
            await sock.heartbeat(timeout=3)
        except (AssertionError, websockets.exceptions.ConnectionClosed):
            pass
    except websockets.exceptions.ConnectionClosed:
        pass
    srv.assert_alive()
    js = await js_factory("after", "2.0.0")
    await js.connect(srv)
    await js.joined(unique_topic())


async def test_server_survives_a_burst_of_garbage_and_official_clients_still_work(
        server, js_factory, py_factory):
    for vsn in ("1.0.0", "2.0.0"):
        ws = await websockets.connect(server.ws_url(apikey=ANON_KEY, vsn=vsn), max_size=None)
        for frame in list(COMMON_TEXT_FRAMES.values()) * 3:
            await ws.send(frame)
        if vsn == "2.0.0":
            for frame in V2_BINARY_FRAMES.values():
                await ws.send(frame)
        await ws.close()
    server.assert_alive()
    topic = unique_topic()
    js = await js_factory("js", "2.0.0")
    await js.connect(server)
    await js.joined(topic)
    py = await py_factory().connect(server)
    await py.joined(topic, events=["after-garbage"])
    mark = py.log.mark()
    assert await js.send(topic, "after-garbage", {"fine": True}) == "ok"
    ev = await py.log.wait_for(is_broadcast("after-garbage", topic), 10, start=mark)
    assert ev["payload"]["payload"] == {"fine": True}
