"""Upstream's features and abuse handling with the official clients (issue 13): the
private-only setting, `broadcast.replication_ready` without a database, and a flooding socket
that must not starve the official clients around it. (replication_ready and send_binary with a
database are in test_private_channels.py.)"""

from __future__ import annotations

import json

import pytest

from interop_support import is_broadcast, mint_jwt, unique_topic

pytestmark = pytest.mark.asyncio

PRIVATE_ONLY = "PrivateOnly: This project only allows private channels"


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_private_only_refuses_public_channels_of_both_clients(server_factory, js_factory, py_factory, vsn):
    srv = server_factory({"--private-only": "true"})
    js = await js_factory(f"js-{vsn}", vsn)
    await js.connect(srv)
    ev = await js.join(unique_topic("pub"), {"private": False})
    assert ev["status"] == "CHANNEL_ERROR", ev
    assert PRIVATE_ONLY in (ev["error"] or ""), ev
    # A private channel is fine (no database: service_role may use it).
    service = await js_factory(f"svc-{vsn}", vsn)
    await service.connect(srv, accessToken=mint_jwt(role="service_role"))
    await service.joined(unique_topic("priv"), {"private": True})
    py = await py_factory("py").connect(srv)
    ev = await py.join(unique_topic("pub"), {})
    assert ev["status"] == "CHANNEL_ERROR", ev
    assert json.loads(ev["error"]) == {"reason": PRIVATE_ONLY}, ev


async def test_replication_ready_without_a_database_is_upstreams_timeout_error(server, js_factory):
    js = await js_factory("js", "2.0.0")
    await js.connect(server)
    topic = unique_topic("ready")
    await js.joined(topic, {"broadcast": {"replication_ready": True}}, system=True)
    ev = await js.log.wait_for(lambda e: e["type"] == "system" and e["topic"] == topic, 10,
                               what="replication_ready system message")
    assert ev["payload"] == {"extension": "system", "status": "error",
                             "message": "Replication connection was not established in time",
                             "channel": topic}, ev


async def test_a_flooding_socket_is_shut_down_and_official_clients_keep_receiving(
        server_factory, raw_factory, js_factory, py_factory):
    srv = server_factory({"--max-events-per-second": "5"})  # 300 events per 60 s, per socket
    flooder = await raw_factory(srv, "2.0.0")
    ref, _ = await flooder.join("realtime:void")
    calm = unique_topic("calm")
    sender = await js_factory("sender", "2.0.0")
    await sender.connect(srv)
    await sender.joined(calm)
    js = await js_factory("bystander-js", "1.0.0")
    await js.connect(srv)
    await js.joined(calm)
    py = await py_factory("bystander-py").connect(srv)
    await py.joined(calm, {}, events=["talk"])
    for i in range(3000):
        await flooder.push("realtime:void", "broadcast",
                           {"type": "broadcast", "event": "spam", "payload": {"i": i}}, join_ref=ref, ref=None)
    sys = await flooder.recv_until(lambda m: m.get("event") == "system", 20, what="the flooder is told")
    assert sys["payload"]["message"] == "Too many messages per second", sys
    assert sys["payload"]["channel"] == "void", sys
    for i in range(30):
        assert await sender.send(calm, "talk", {"i": i}) == "ok"
    await js.log.wait_for(lambda e: len(js.log.find(is_broadcast("talk", calm))) >= 30, 20,
                          what="js bystander gets all 30")
    await py.log.wait_for(lambda e: len(py.log.find(is_broadcast("talk", calm))) >= 30, 20,
                          what="python bystander gets all 30")
    assert [e["payload"]["payload"]["i"] for e in js.log.find(is_broadcast("talk", calm))] == list(range(30))
