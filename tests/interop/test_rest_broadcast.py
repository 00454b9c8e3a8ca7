"""REST broadcast (PROTOCOL §7.3, §7.4) received by realtime-js (both vsn) and Python."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx
import pytest

from interop_support import ANON_KEY, SERVICE_ROLE_KEY, is_broadcast, mint_jwt, unique_topic

pytestmark = pytest.mark.asyncio


async def _listeners(server, js_factory, py_factory, topic, events):
    v1 = await js_factory("js-v1", "1.0.0")
    v2 = await js_factory("js-v2", "2.0.0")
    await v1.connect(server)
    await v2.connect(server)
    py = await py_factory().connect(server)
    await v1.joined(topic)
    await v2.joined(topic)
    await py.joined(topic, events=events)
    return [v1, v2, py]


def _headers(key: str = ANON_KEY, bearer: str | None = None) -> dict:
    h = {"apikey": key, "Content-Type": "application/json"}
    if bearer:
        h["Authorization"] = f"Bearer {bearer}"
    return h


@pytest.mark.parametrize("prefix", ["/realtime/v1/api", "/api"])
async def test_rest_batch_broadcast_reaches_all_clients(server, js_factory, py_factory, prefix):
    topic = unique_topic()
    other = unique_topic()
    peers = await _listeners(server, js_factory, py_factory, topic, ["rest-a", "rest-b"])
    marks = [p.log.mark() for p in peers]
    body = {"messages": [
        {"topic": topic, "event": "rest-a", "payload": {"n": 1, "s": "ü"}},
        {"topic": topic, "event": "rest-b", "payload": {"n": 2}},
        {"topic": other, "event": "rest-a", "payload": {"n": 3}},
    ]}
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.http_url}{prefix}/broadcast", json=body, headers=_headers())
    assert r.status_code == 202, f"{r.status_code} {r.text}"
    for peer, mark in zip(peers, marks):
        a = await peer.log.wait_for(is_broadcast("rest-a", topic), 10, start=mark, what="rest-a")
        b = await peer.log.wait_for(is_broadcast("rest-b", topic), 10, start=mark, what="rest-b")
        assert a["payload"]["payload"] == {"n": 1, "s": "ü"}
        assert b["payload"]["payload"] == {"n": 2}
        assert a["payload"]["event"] == "rest-a"
    await asyncio.sleep(0.3)
    for peer, mark in zip(peers, marks):
        got = peer.log.find(is_broadcast("rest-a", topic), mark)
        assert len(got) == 1, f"{peer.name}: {got}"


async def test_rest_batch_with_id_carries_meta(server, js_factory):
    topic = unique_topic()
    v1 = await js_factory("js-v1", "1.0.0")
    await v1.connect(server)
    await v1.joined(topic)
    mark = v1.log.mark()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast", headers=_headers(), json={
            "messages": [{"topic": topic, "event": "with-id", "payload": {"k": "v"}, "id": "abc-123"}]})
    assert r.status_code == 202, r.text
    ev = await v1.log.wait_for(is_broadcast("with-id", topic), 10, start=mark)
    assert ev["payload"]["payload"] == {"k": "v"}
    assert ev["payload"].get("meta", {}).get("id") == "abc-123", ev


@pytest.mark.parametrize("prefix", ["/realtime/v1/api", "/api"])
async def test_rest_single_broadcast_reaches_all_clients(server, js_factory, py_factory, prefix):
    topic = unique_topic("room:with:colons")
    peers = await _listeners(server, js_factory, py_factory, topic, ["single ev"])
    marks = [p.log.mark() for p in peers]
    url = f"{server.http_url}{prefix}/broadcast/{quote(topic, safe='')}/events/{quote('single ev', safe='')}"
    async with httpx.AsyncClient() as http:
        r = await http.post(url, json={"hello": "world", "n": [1, 2]}, headers=_headers())
    assert r.status_code == 202, f"{r.status_code} {r.text}"
    for peer, mark in zip(peers, marks):
        ev = await peer.log.wait_for(is_broadcast("single ev", topic), 10, start=mark,
                                     what=f"single at {peer.name}")
        assert ev["payload"]["payload"] == {"hello": "world", "n": [1, 2]}, ev


async def test_rest_single_binary_body_reaches_v2_only(server, js_factory):
    topic = unique_topic()
    v1 = await js_factory("js-v1", "1.0.0")
    v2 = await js_factory("js-v2", "2.0.0")
    await v1.connect(server)
    await v2.connect(server)
    await v1.joined(topic)
    await v2.joined(topic)
    m1, m2 = v1.log.mark(), v2.log.mark()
    url = f"{server.http_url}/realtime/v1/api/broadcast/{topic}/events/bin"
    async with httpx.AsyncClient() as http:
        r = await http.post(url, content=b"\xca\xfe\x00\x01",
                            headers={"apikey": ANON_KEY, "Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    ev = await v2.log.wait_for(is_broadcast("bin", topic), 10, start=m2)
    assert ev["payload"]["payload"] == {"__binary__": "cafe0001"}, ev
    await v1.log.assert_none(is_broadcast("bin", topic), 1.0, start=m1, what="binary broadcast on V1")


async def test_js_http_send_and_python_http_send(server, js_factory, py_factory):
    topic = unique_topic()
    v1 = await js_factory("js-v1", "1.0.0")
    v2 = await js_factory("js-v2", "2.0.0")
    await v1.connect(server)
    await v2.connect(server)
    py = await py_factory().connect(server)
    await v1.joined(topic)
    await v2.joined(topic)
    await py.joined(topic, events=["js-http", "py-http"])
    marks = {p: p.log.mark() for p in (v1, v2, py)}

    res = await v2.cmd("http_send", topic=topic, event="js-http", payload={"via": "js"})
    assert res == {"success": True}, res
    await py.channels[topic].http_send("py-http", {"via": "py"})

    for peer in (v1, v2, py):
        a = await peer.log.wait_for(is_broadcast("js-http", topic), 10, start=marks[peer])
        b = await peer.log.wait_for(is_broadcast("py-http", topic), 10, start=marks[peer])
        assert a["payload"]["payload"] == {"via": "js"}
        assert b["payload"]["payload"] == {"via": "py"}


async def test_js_send_falls_back_to_rest_when_not_joined(server, js_factory):
    """realtime-js send() on a channel that is not subscribed posts to the batch endpoint."""
    topic = unique_topic()
    listener = await js_factory("listener", "1.0.0")
    await listener.connect(server)
    await listener.joined(topic)
    sender = await js_factory("sender", "2.0.0")
    await sender.connect(server)
    await sender.cmd("channel", topic=topic, config={})
    mark = listener.log.mark()
    assert await sender.send(topic, "fallback", {"rest": True}) == "ok"
    ev = await listener.log.wait_for(is_broadcast("fallback", topic), 10, start=mark)
    assert ev["payload"]["payload"] == {"rest": True}


@pytest.mark.parametrize("token", ["not-a-jwt", "expired", "bad-signature"])
async def test_rest_rejects_bad_tokens(server, token):
    key = {
        "not-a-jwt": "not-a-jwt",
        "expired": mint_jwt(exp_in=-60),
        "bad-signature": mint_jwt(secret="another-secret-that-is-at-least-32-chars-long"),
    }[token]
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast", headers=_headers(key),
                            json={"messages": [{"topic": "t", "event": "e", "payload": {}}]})
        assert r.status_code == 401, f"batch with {token}: {r.status_code} {r.text}"
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast/t/events/e",
                            headers=_headers(key), json={})
        assert r.status_code == 401, f"single with {token}: {r.status_code} {r.text}"


async def test_rest_bearer_token_takes_precedence_over_apikey(server):
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast",
                            headers=_headers("garbage", bearer=SERVICE_ROLE_KEY),
                            json={"messages": [{"topic": "t", "event": "e", "payload": {}}]})
        assert r.status_code == 202, f"{r.status_code} {r.text}"
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast",
                            headers=_headers(ANON_KEY, bearer="garbage"),
                            json={"messages": [{"topic": "t", "event": "e", "payload": {}}]})
        assert r.status_code == 401, f"{r.status_code} {r.text}"


async def test_rest_single_unsupported_media_type(server):
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast/t/events/e",
                            headers={"apikey": ANON_KEY, "Content-Type": "text/plain"}, content=b"hi")
    assert r.status_code == 415, f"{r.status_code} {r.text}"
    assert r.json() == {"error": "Unsupported Media Type. Use application/json or application/octet-stream"}


async def test_rest_batch_invalid_body_is_422(server):
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast", headers=_headers(),
                            json={"messages": [{"topic": "t", "payload": {}}]})
    assert r.status_code == 422, f"{r.status_code} {r.text}"


async def test_rest_cors_preflight(server):
    """Browsers call the REST endpoints cross-origin (realtime-js httpSend / send fallback)."""
    async with httpx.AsyncClient() as http:
        r = await http.options(f"{server.http_url}/realtime/v1/api/broadcast", headers={
            "Origin": "http://example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "apikey, authorization, content-type",
        })
        assert r.status_code in (200, 204), f"{r.status_code} {r.text}"
        assert r.headers.get("access-control-allow-origin") in ("*", "http://example.test"), r.headers
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast", headers={
            **_headers(), "Origin": "http://example.test"},
            json={"messages": [{"topic": "t", "event": "e", "payload": {}}]})
        assert r.status_code == 202
        assert r.headers.get("access-control-allow-origin") in ("*", "http://example.test"), r.headers


async def test_rest_private_flag_targets_private_room(server, raw_factory):
    name = unique_topic()
    topic = "realtime:" + name
    pub = await raw_factory(server, "1.0.0")
    priv = await raw_factory(server, "1.0.0", apikey=SERVICE_ROLE_KEY)
    await pub.join(topic, {"config": {"private": False}})
    await priv.join(topic, {"config": {"private": True}})
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{server.http_url}/realtime/v1/api/broadcast", headers=_headers(SERVICE_ROLE_KEY),
                            json={"messages": [
                                {"topic": name, "event": "to-private", "payload": {}, "private": True},
                                {"topic": name, "event": "to-public", "payload": {}},
                            ]})
    assert r.status_code == 202, r.text
    got = await priv.recv_until(lambda m: m.get("event") == "broadcast", 5)
    assert got["payload"]["event"] == "to-private", got["raw"]
    got = await pub.recv_until(lambda m: m.get("event") == "broadcast", 5)
    assert got["payload"]["event"] == "to-public", got["raw"]
    await priv.heartbeat()
    await pub.heartbeat()
    assert not [m for m in priv.backlog + pub.backlog if m.get("event") == "broadcast"]
