"""Handshake and channel authentication (PROTOCOL §1.6, §4.2 step 7, §8.6, §9.1, §9.4)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import jwt as pyjwt
import pytest
import websockets
import websockets.exceptions

from interop_support import ANON_KEY, JWT_SECRET, SERVICE_ROLE_KEY, is_broadcast, mint_jwt, raw_upgrade, unique_topic

pytestmark = pytest.mark.asyncio

WRONG_SECRET = "this-is-not-the-secret-but-it-is-long-enough-123"

HANDSHAKE_CASES = {
    "missing": (None, 401, {"error": "API key is missing"}),
    "not-a-jwt": ("definitely.not.ajwt", 401, {"error": "The token provided is not a valid JWT"}),
    "garbage": ("garbage", 401, {"error": "The token provided is not a valid JWT"}),
    "expired": ("EXPIRED", 401, {"error": "Token has expired"}),
    "bad-signature": ("BADSIG", 401, {"error": "Failed to validate JWT signature"}),
    "no-role": ("NOROLE", 401, {"error": "Fields `role` and `exp` are required in JWT"}),
    "no-exp": ("NOEXP", 401, {"error": "Fields `role` and `exp` are required in JWT"}),
}


def _token(spec):
    return {
        "EXPIRED": lambda: mint_jwt(exp_in=-120),
        "BADSIG": lambda: mint_jwt(secret=WRONG_SECRET),
        "NOROLE": lambda: mint_jwt(role=None),
        "NOEXP": lambda: mint_jwt(exp_in=None),
    }.get(spec, lambda: spec)()


@pytest.mark.parametrize("case", list(HANDSHAKE_CASES))
@pytest.mark.parametrize("path", ["/realtime/v1/websocket", "/socket/websocket"])
async def test_handshake_rejections_status_and_body(server, case, path):
    spec, status, body = HANDSHAKE_CASES[case]
    token = _token(spec)
    query = "?vsn=1.0.0" + (f"&apikey={token}" if token is not None else "")
    got_status, headers, raw = await raw_upgrade(server, path + query)
    assert got_status == status, f"{case}: status {got_status}, body {raw!r}"
    assert json.loads(raw) == body, f"{case}: body {raw!r}"


async def test_handshake_x_api_key_header_wins_over_query(server):
    status, _, body = await raw_upgrade(server, "/realtime/v1/websocket?vsn=1.0.0&apikey=garbage",
                                        headers={"x-api-key": ANON_KEY})
    assert status == 101, f"valid x-api-key header should be used: {status} {body!r}"
    status, _, body = await raw_upgrade(server, f"/realtime/v1/websocket?vsn=1.0.0&apikey={ANON_KEY}",
                                        headers={"x-api-key": mint_jwt(exp_in=-60)})
    assert status == 401 and json.loads(body) == {"error": "Token has expired"}, (status, body)


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0", None])
async def test_handshake_accepts_valid_keys(server, vsn):
    keys = {
        "anon": ANON_KEY,
        "service_role": SERVICE_ROLE_KEY,
        "authenticated": mint_jwt(role="authenticated", sub="user-1"),
        "HS384": mint_jwt(algorithm="HS384"),
        "HS512": mint_jwt(algorithm="HS512"),
        "fractional-exp": pyjwt.encode({"role": "anon", "exp": time.time() + 600.5}, JWT_SECRET),
        "padded-with-spaces": "%20" + ANON_KEY + "%20",
    }
    for name, key in keys.items():
        q = f"?apikey={key}" + (f"&vsn={vsn}" if vsn else "") + "&log_level=warn"
        status, _, body = await raw_upgrade(server, "/realtime/v1/websocket" + q)
        assert status == 101, f"{name} vsn={vsn}: {status} {body!r}"


@pytest.mark.parametrize("vsn", ["3.0.0", "0.9.0", "abc", "1.1.0"])
async def test_unsupported_vsn_is_403(server, vsn):
    status, _, body = await raw_upgrade(server, f"/realtime/v1/websocket?apikey={ANON_KEY}&vsn={vsn}")
    assert status == 403, f"vsn={vsn}: {status} {body!r}"


async def test_handshake_error_reaches_official_clients(server):
    """The websockets library (used by the Python client) sees the 401 with the JSON body."""
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        await websockets.connect(server.ws_url(apikey=mint_jwt(exp_in=-10)), open_timeout=10)
    assert info.value.response.status_code == 401
    assert json.loads(info.value.response.body) == {"error": "Token has expired"}


JOIN_TOKEN_CASES = {
    "expired": (lambda: mint_jwt(exp_in=-30), r"InvalidJWTToken: Token has expired \d+ seconds ago"),
    "malformed": (lambda: "not-a-jwt", r"MalformedJWT: The token provided is not a valid JWT"),
    "bad-signature": (lambda: mint_jwt(secret=WRONG_SECRET),
                      r"JwtSignatureError: Failed to validate JWT signature"),
    "no-role": (lambda: mint_jwt(role=None),
                r"InvalidJWTToken: Fields `role` and `exp` are required in JWT"),
}


async def test_join_with_legacy_user_token_alias(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    _, reply = await sock.join("realtime:" + unique_topic(),
                               {"config": {}, "user_token": mint_jwt(exp_in=-30)}, expect_ok=False)
    assert reply["payload"]["status"] == "error", reply
    assert re.fullmatch(r"InvalidJWTToken: Token has expired \d+ seconds ago",
                        reply["payload"]["response"]["reason"]), reply


@pytest.mark.parametrize("case", list(JOIN_TOKEN_CASES))
@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_join_with_bad_access_token_is_refused(server, raw_factory, case, vsn):
    make, pattern = JOIN_TOKEN_CASES[case]
    sock = await raw_factory(server, vsn)
    topic = "realtime:" + unique_topic()
    _, reply = await sock.join(topic, {"config": {"broadcast": {"self": False}}, "access_token": make()},
                               expect_ok=False)
    assert reply["payload"]["status"] == "error", reply
    reason = reply["payload"]["response"]["reason"]
    assert re.fullmatch(pattern, reason), f"reason {reason!r} !~ {pattern}"
    # the socket itself stays usable
    hb = await sock.heartbeat()
    assert hb["payload"] == {"status": "ok", "response": {}}
    await sock.join("realtime:" + unique_topic())


async def test_expired_join_seconds_are_plausible(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    _, reply = await sock.join("realtime:" + unique_topic(),
                               {"config": {}, "access_token": mint_jwt(exp_in=-100)}, expect_ok=False)
    reason = reply["payload"]["response"]["reason"]
    n = int(re.search(r"expired (\d+) seconds", reason).group(1))
    assert 95 <= n <= 130, reason


async def test_sb_access_token_falls_back_to_connect_token(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    _, reply = await sock.join("realtime:" + unique_topic(),
                               {"config": {}, "access_token": "sb_publishable_abc"})
    assert reply["payload"]["status"] == "ok"


async def test_js_join_with_expired_token_reports_channel_error(server, js_factory):
    peer = await js_factory("js", "2.0.0")
    await peer.connect(server, accessToken=mint_jwt(exp_in=-30))
    ev = await peer.join(unique_topic())
    assert ev["status"] == "CHANNEL_ERROR", ev
    assert re.search(r"InvalidJWTToken: Token has expired \d+ seconds ago", ev["error"] or ""), ev


async def test_python_join_with_expired_token_reports_channel_error(server, py_factory):
    py = py_factory()
    await py.connect(server)
    await py.client.set_auth(mint_jwt(exp_in=-30))
    ev = await py.join(unique_topic(), {})
    assert ev["status"] == "CHANNEL_ERROR", ev
    assert "Token has expired" in (ev["error"] or ""), ev


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_token_expiring_while_joined_closes_channel(server, raw_factory, vsn):
    sock = await raw_factory(server, vsn)
    name = unique_topic()
    topic = "realtime:" + name
    token = mint_jwt(exp=time.time() + 3)
    join_ref, _ = await sock.join(topic, {"config": {}, "access_token": token})
    sysmsg = await sock.recv_until(lambda m: m.get("event") == "system", 10, what="system message")
    p = sysmsg["payload"]
    assert p["extension"] == "system" and p["status"] == "error", p
    assert re.fullmatch(r"Token has expired \d+ seconds ago", p["message"]), p
    assert p.get("channel") == name, p
    assert sysmsg["ref"] is None
    if vsn == "2.0.0":
        assert sysmsg["join_ref"] == join_ref, f"system is a channel push carrying join_ref: {sysmsg['raw']}"
    else:
        assert "join_ref" not in sysmsg["raw"], sysmsg["raw"]
    close = await sock.recv_until(lambda m: m.get("event") == "phx_close", 5, what="phx_close")
    assert close["topic"] == topic and close["payload"] == {}
    assert close["ref"] == join_ref, close["raw"]
    if vsn == "2.0.0":
        assert close["join_ref"] == join_ref, close["raw"]
    # socket survives, channel gone: a broadcast push to it is dropped, heartbeat works
    hb = await sock.heartbeat()
    assert hb["payload"]["status"] == "ok"


async def test_token_expiry_closes_js_and_python_channels(server, js_factory, py_factory):
    topic = unique_topic()
    js = await js_factory("js", "1.0.0")
    await js.connect(server, accessToken=mint_jwt(exp=time.time() + 3))
    await js.joined(topic, system=True)
    py = py_factory()
    await py.connect(server)
    await py.client.set_auth(mint_jwt(exp=time.time() + 3))
    await py.joined(topic, {})
    ev = await js.log.wait_for(lambda e: e["type"] == "system", 10, what="system error")
    assert "Token has expired" in ev["payload"]["message"]
    await js.log.wait_for(lambda e: e["type"] == "status" and e["status"] == "CLOSED", 10, what="CLOSED")
    # Python treats the system error as a channel error, then phx_close as CLOSED
    await py.log.wait_for(lambda e: e["type"] == "status" and e["status"] in ("CHANNEL_ERROR", "CLOSED"),
                          10, what="python channel error/closed")


async def test_access_token_refresh_keeps_channel_open(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    join_ref, _ = await sock.join(topic, {"config": {"broadcast": {"self": True}},
                                          "access_token": mint_jwt(exp=time.time() + 3)})
    await sock.push(topic, "access_token", {"access_token": mint_jwt(exp_in=3600)}, join_ref=join_ref)
    await asyncio.sleep(4.5)
    await sock.push(topic, "broadcast", {"type": "broadcast", "event": "still", "payload": {}},
                    join_ref=join_ref)
    got = await sock.recv_until(lambda m: m.get("event") in ("broadcast", "phx_close", "system"), 5)
    assert got["event"] == "broadcast", f"channel did not survive the refresh: {got.get('raw')}"
    # access_token pushes get no reply
    assert not [m for m in sock.backlog if m.get("event") == "phx_reply"], sock.backlog


async def test_access_token_push_with_expired_token_closes_channel(server, raw_factory):
    sock = await raw_factory(server, "1.0.0")
    topic = "realtime:" + unique_topic()
    join_ref, _ = await sock.join(topic)
    await sock.push(topic, "access_token", {"access_token": mint_jwt(exp_in=-50)}, join_ref=join_ref)
    sysmsg = await sock.recv_until(lambda m: m.get("event") == "system", 10)
    assert re.fullmatch(r"Token has expired \d+ seconds ago", sysmsg["payload"]["message"]), sysmsg
    close = await sock.recv_until(lambda m: m.get("event") == "phx_close", 5)
    assert close["ref"] == join_ref


async def test_js_set_auth_refresh_keeps_receiving(server, js_factory):
    topic = unique_topic()
    js = await js_factory("js", "2.0.0")
    await js.connect(server, accessToken=mint_jwt(exp=time.time() + 4))
    await js.joined(topic, {"broadcast": {"self": True}}, system=True)
    await js.cmd("set_auth", token=mint_jwt(exp_in=3600))
    await asyncio.sleep(5)
    mark = js.log.mark()
    assert await js.send(topic, "after", {"ok": True}) == "ok"
    await js.log.wait_for(is_broadcast("after", topic), 5, start=mark)
    assert not js.log.find(lambda e: e["type"] == "status" and e["status"] == "CLOSED"), js.log.events


async def test_jwt_secret_constant_matches_demo_keys():
    import jwt as pyjwt

    for key in (ANON_KEY, SERVICE_ROLE_KEY):
        pyjwt.decode(key, JWT_SECRET, algorithms=["HS256"])
