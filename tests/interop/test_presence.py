"""Presence across realtime-js (vsn 1 and 2) and the Python client (PROTOCOL §6)."""

from __future__ import annotations

import asyncio

import pytest

from interop_support import unique_topic

pytestmark = pytest.mark.asyncio


def _pconf(key: str) -> dict:
    return {"presence": {"key": key, "enabled": True}, "broadcast": {"self": False}}


def _state_has(state: dict, key: str, **fields) -> bool:
    metas = state.get(key)
    if not metas:
        return False
    return any(all(m.get(k) == v for k, v in fields.items()) for m in metas)


async def wait_state(peer, topic, pred, timeout=10.0, start=0, what="presence state"):
    return await peer.log.wait_for(
        # only "sync" events: join/leave callbacks run in the middle of applying a diff
        lambda e: e["type"] == "presence" and e["event"] == "sync" and e["topic"] == topic
        and pred(e["state"]),
        timeout, start=start, what=f"{what} at {peer.name}")


async def _trio(server, js_factory, py_factory, topic):
    v1 = await js_factory("js-v1", "1.0.0")
    v2 = await js_factory("js-v2", "2.0.0")
    await v1.connect(server)
    await v2.connect(server)
    py = await py_factory().connect(server)
    await v1.joined(topic, _pconf("alice"), presence=True)
    await v2.joined(topic, _pconf("bob"), presence=True)
    await py.joined(topic, _pconf("carol"), presence=True)
    assert await v1.cmd("track", topic=topic, payload={"user": "alice", "client": "js-v1"}) == "ok"
    assert await v2.cmd("track", topic=topic, payload={"user": "bob", "client": "js-v2"}) == "ok"
    await py.channels[topic].track({"user": "carol", "client": "py"})
    everyone = {"alice": "js-v1", "bob": "js-v2", "carol": "py"}

    def full(state):
        return all(_state_has(state, k, user=k, client=c) for k, c in everyone.items())

    for p in (v1, v2, py):
        await wait_state(p, topic, full, what="all three tracked")
    return v1, v2, py


async def test_presence_js_and_python_see_each_other(server, js_factory, py_factory):
    topic = unique_topic()
    v1, v2, py = await _trio(server, js_factory, py_factory, topic)

    for p in (v1, v2, py):
        # join events for the other two keys
        for key in {"alice", "bob", "carol"}:
            joins = p.log.find(lambda e, key=key: e["type"] == "presence" and e["event"] == "join"
                               and e["key"] == key)
            assert joins, f"{p.name} saw no join for {key}"
            new = joins[-1]["new"]
            assert len(new) == 1 and new[0]["user"] == key, joins[-1]
            assert isinstance(new[0].get("presence_ref"), str) and new[0]["presence_ref"], new[0]
            assert "phx_ref" not in new[0] and "phx_ref_prev" not in new[0], new[0]

    state = await v2.cmd("presence_state", topic=topic)
    assert set(state) == {"alice", "bob", "carol"}, state
    for key, metas in state.items():
        assert len(metas) == 1, f"{key}: {metas}"
    assert set(py.channels[topic].presence_state()) == {"alice", "bob", "carol"}


async def test_presence_leave_on_untrack(server, js_factory, py_factory):
    topic = unique_topic()
    v1, v2, py = await _trio(server, js_factory, py_factory, topic)
    marks = {p: p.log.mark() for p in (v1, v2, py)}

    assert await v1.cmd("untrack", topic=topic) == "ok"
    for p in (v2, py):
        ev = await p.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "leave"
                                  and e["key"] == "alice", 10, start=marks[p], what="leave alice")
        assert ev["left"][0]["user"] == "alice"
        await wait_state(p, topic, lambda s: "alice" not in s and "bob" in s and "carol" in s,
                         start=marks[p], what="alice gone")

    marks = {p: p.log.mark() for p in (v1, v2, py)}
    await py.channels[topic].untrack()
    for p in (v1, v2):
        await p.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "leave"
                             and e["key"] == "carol", 10, start=marks[p], what="leave carol")
        await wait_state(p, topic, lambda s: set(s) == {"bob"}, start=marks[p], what="only bob")


async def test_presence_leave_when_js_socket_dies(server, js_factory, py_factory):
    topic = unique_topic()
    v1, v2, py = await _trio(server, js_factory, py_factory, topic)
    marks = {p: p.log.mark() for p in (v1, py)}

    await v2.kill()  # SIGKILL: TCP connection dropped, no close frame, no phx_leave
    for p in (v1, py):
        await p.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "leave"
                             and e["key"] == "bob", 15, start=marks[p], what="leave bob after kill")
        await wait_state(p, topic, lambda s: set(s) == {"alice", "carol"}, start=marks[p])


async def test_presence_leave_when_clients_disconnect(server, js_factory, py_factory):
    topic = unique_topic()
    v1, v2, py = await _trio(server, js_factory, py_factory, topic)

    mark = v2.log.mark()
    await py.close()  # Python client closes its socket
    await v2.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "leave"
                          and e["key"] == "carol", 15, start=mark, what="leave carol after close")

    mark = v2.log.mark()
    assert await v1.cmd("disconnect") == "ok"  # realtime-js clean disconnect
    await v2.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "leave"
                          and e["key"] == "alice", 15, start=mark, what="leave alice after disconnect")
    await wait_state(v2, topic, lambda s: set(s) == {"bob"}, start=mark)


async def test_presence_leave_when_channel_unsubscribed(server, js_factory, py_factory):
    topic = unique_topic()
    v1, v2, py = await _trio(server, js_factory, py_factory, topic)
    mark = py.log.mark()
    assert await v2.cmd("unsubscribe", topic=topic) == "ok"
    await py.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "leave"
                          and e["key"] == "bob", 10, start=mark, what="leave bob after phx_leave")


async def test_second_track_replaces_meta_under_same_key(server, js_factory, py_factory):
    topic = unique_topic()
    v1, v2, py = await _trio(server, js_factory, py_factory, topic)
    marks = {p: p.log.mark() for p in (v1, v2, py)}

    assert await v1.cmd("track", topic=topic, payload={"user": "alice", "status": "away"}) == "ok"
    for p in (v2, py, v1):
        st = await wait_state(p, topic, lambda s: _state_has(s, "alice", status="away"),
                              start=marks[p], what="alice away")
        st = st["state"]
        assert len(st["alice"]) == 1, f"{p.name}: two metas for one key after re-track: {st['alice']}"
        assert "client" not in st["alice"][0], f"{p.name}: old meta fields survived: {st['alice']}"

    # Python re-tracks too
    marks = {p: p.log.mark() for p in (v1, v2)}
    await py.channels[topic].track({"user": "carol", "status": "busy"})
    for p in (v1, v2):
        st = await wait_state(p, topic, lambda s: _state_has(s, "carol", status="busy"),
                              start=marks[p], what="carol busy")
        assert len(st["state"]["carol"]) == 1, st["state"]["carol"]


async def test_identical_retrack_is_a_no_op(server, js_factory):
    topic = unique_topic()
    a = await js_factory("a", "2.0.0")
    b = await js_factory("b", "1.0.0")
    await a.connect(server)
    await b.connect(server)
    await a.joined(topic, _pconf("a"), presence=True)
    await b.joined(topic, _pconf("b"), presence=True)
    assert await a.cmd("track", topic=topic, payload={"v": 1}) == "ok"
    await wait_state(b, topic, lambda s: _state_has(s, "a", v=1))
    mark = b.log.mark()
    assert await a.cmd("track", topic=topic, payload={"v": 1}) == "ok"
    await b.log.assert_none(lambda e: e["type"] == "presence" and e["event"] in ("join", "leave"),
                            1.0, start=mark, what="presence diff after identical re-track")


async def test_same_key_on_two_connections_has_two_metas(server, js_factory, py_factory):
    topic = unique_topic()
    a1 = await js_factory("a1", "2.0.0")
    a2 = await js_factory("a2", "1.0.0")
    watcher = await js_factory("watcher", "2.0.0")
    for p in (a1, a2, watcher):
        await p.connect(server)
    await a1.joined(topic, _pconf("shared"), presence=True)
    await a2.joined(topic, _pconf("shared"), presence=True)
    await watcher.joined(topic, _pconf("watcher"), presence=True)
    assert await a1.cmd("track", topic=topic, payload={"tab": 1}) == "ok"
    assert await a2.cmd("track", topic=topic, payload={"tab": 2}) == "ok"
    await wait_state(watcher, topic, lambda s: len(s.get("shared", [])) == 2
                     and {m["tab"] for m in s["shared"]} == {1, 2})
    mark = watcher.log.mark()
    await a1.kill()
    ev = await wait_state(watcher, topic, lambda s: len(s.get("shared", [])) == 1, start=mark, timeout=15)
    assert ev["state"]["shared"][0]["tab"] == 2


async def test_late_joiner_gets_snapshot(server, js_factory, py_factory):
    topic = unique_topic()
    early = await js_factory("early", "2.0.0")
    await early.connect(server)
    await early.joined(topic, _pconf("early"), presence=True)
    assert await early.cmd("track", topic=topic, payload={"who": "early"}) == "ok"
    await asyncio.sleep(0.2)

    late_js = await js_factory("late-v1", "1.0.0")
    await late_js.connect(server)
    await late_js.joined(topic, _pconf("late-js"), presence=True)
    await wait_state(late_js, topic, lambda s: _state_has(s, "early", who="early"), what="snapshot")

    late_py = await py_factory().connect(server)
    await late_py.joined(topic, _pconf("late-py"), presence=True)
    await wait_state(late_py, topic, lambda s: _state_has(s, "early", who="early"), what="snapshot")


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_presence_wire_format(server, raw_factory, vsn):
    topic = "realtime:" + unique_topic()
    sock = await raw_factory(server, vsn)
    payload = {"config": {"broadcast": {"self": False}, "presence": {"key": "k1", "enabled": True},
                          "postgres_changes": [], "private": False}}
    join_ref, reply = await sock.join(topic, payload)
    assert reply["payload"] == {"status": "ok", "response": {"postgres_changes": []}}, reply
    st = await sock.recv_until(lambda m: m.get("event") == "presence_state", 5, what="presence_state")
    assert st["topic"] == topic and st["payload"] == {}, st
    assert st["ref"] is None
    if vsn == "2.0.0":
        assert st["join_ref"] == join_ref, f"presence_state is a channel push with join_ref: {st['raw']}"
    else:
        assert "join_ref" not in st["raw"], f"V1 output never has join_ref: {st['raw']}"

    ref = await sock.push(topic, "presence", {"type": "presence", "event": "track",
                                              "payload": {"name": "x"}}, join_ref=join_ref)
    r = await sock.recv_until(lambda m: m.get("event") == "phx_reply" and m.get("ref") == ref, 5)
    assert r["payload"] == {"status": "ok", "response": {}}, r
    diff = await sock.recv_until(lambda m: m.get("event") == "presence_diff", 5, what="presence_diff")
    assert diff["ref"] is None
    if vsn == "2.0.0":
        assert diff["join_ref"] is None, diff["raw"]
    d = diff["payload"]
    assert set(d) == {"joins", "leaves"} and d["leaves"] == {}, d
    metas = d["joins"]["k1"]["metas"]
    assert len(metas) == 1 and metas[0]["name"] == "x" and isinstance(metas[0]["phx_ref"], str), metas
    first_ref = metas[0]["phx_ref"]

    # update: leaves has the old meta, joins the new one with phx_ref_prev
    ref = await sock.push(topic, "presence", {"type": "presence", "event": "track",
                                              "payload": {"name": "y"}}, join_ref=join_ref)
    await sock.recv_until(lambda m: m.get("event") == "phx_reply" and m.get("ref") == ref, 5)
    diff = await sock.recv_until(lambda m: m.get("event") == "presence_diff", 5, what="update diff")
    d = diff["payload"]
    assert d["leaves"]["k1"]["metas"][0]["phx_ref"] == first_ref, d
    new_meta = d["joins"]["k1"]["metas"][0]
    assert new_meta["name"] == "y" and new_meta.get("phx_ref_prev") == first_ref, d
    assert new_meta["phx_ref"] != first_ref

    # untrack
    ref = await sock.push(topic, "presence", {"type": "presence", "event": "untrack"}, join_ref=join_ref)
    await sock.recv_until(lambda m: m.get("event") == "phx_reply" and m.get("ref") == ref, 5)
    diff = await sock.recv_until(lambda m: m.get("event") == "presence_diff", 5, what="untrack diff")
    assert diff["payload"]["joins"] == {} and "k1" in diff["payload"]["leaves"], diff

    # non-map payload
    ref = await sock.push(topic, "presence", {"type": "presence", "event": "track", "payload": [1]},
                          join_ref=join_ref)
    r = await sock.recv_until(lambda m: m.get("event") == "phx_reply" and m.get("ref") == ref, 5)
    assert r["payload"] == {"status": "error",
                            "response": {"reason": "Presence track payload must be a map"}}, r


async def test_presence_without_key_gets_generated_key(server, raw_factory):
    topic = "realtime:" + unique_topic()
    a = await raw_factory(server, "2.0.0")
    jr, _ = await a.join(topic, {"config": {"presence": {"key": "", "enabled": True}}})
    ref = await a.push(topic, "presence", {"type": "presence", "event": "track", "payload": {"a": 1}},
                       join_ref=jr)
    await a.recv_until(lambda m: m.get("ref") == ref, 5)
    diff = await a.recv_until(lambda m: m.get("event") == "presence_diff", 5)
    keys = list(diff["payload"]["joins"])
    assert len(keys) == 1 and keys[0], diff


async def test_presence_diffs_reach_subscribers_without_presence_enabled(server, raw_factory):
    """PROTOCOL §6.1: on public channels presence_diff goes to every subscriber regardless of
    presence.enabled (only the initial presence_state depends on it)."""
    topic = "realtime:" + unique_topic()
    quiet = await raw_factory(server, "1.0.0")
    tracker = await raw_factory(server, "2.0.0")
    await quiet.join(topic, {"config": {"presence": {"key": "", "enabled": False}}})
    jr, _ = await tracker.join(topic, {"config": {"presence": {"key": "t", "enabled": False}}})
    ref = await tracker.push(topic, "presence", {"type": "presence", "event": "track", "payload": {"x": 1}},
                             join_ref=jr)
    r = await tracker.recv_until(lambda m: m.get("ref") == ref, 5)
    assert r["payload"] == {"status": "ok", "response": {}}, "track on a presence-disabled channel must work"
    diff = await quiet.recv_until(lambda m: m.get("event") == "presence_diff", 5)
    assert "t" in diff["payload"]["joins"], diff["raw"]
    assert not [m for m in quiet.backlog if m.get("event") == "presence_state"], quiet.backlog


async def test_untrack_without_track_is_ok(server, raw_factory):
    sock = await raw_factory(server, "2.0.0")
    topic = "realtime:" + unique_topic()
    jr, _ = await sock.join(topic, {"config": {"presence": {"key": "u", "enabled": True}}})
    ref = await sock.push(topic, "presence", {"type": "presence", "event": "untrack"}, join_ref=jr)
    r = await sock.recv_until(lambda m: m.get("ref") == ref and m.get("event") == "phx_reply", 5)
    assert r["payload"] == {"status": "ok", "response": {}}, r["raw"]


async def test_python_adds_presence_callbacks_after_joining(server, js_factory, py_factory):
    """realtime-py leaves and rejoins (join_ref null both times) when presence callbacks are
    added to a joined channel; afterwards it must get the snapshot and live diffs."""
    topic = unique_topic()
    js = await js_factory("js", "2.0.0")
    await js.connect(server)
    await js.joined(topic, _pconf("js-user"), presence=True)
    assert await js.cmd("track", topic=topic, payload={"who": "js"}) == "ok"

    py = await py_factory().connect(server)
    await py.joined(topic, {"broadcast": {"self": False}}, events=["after-rejoin"])
    mark = py.log.mark()
    py.on_presence(topic)  # triggers unsubscribe + subscribe inside the Python client
    await wait_state(py, topic, lambda s: _state_has(s, "js-user", who="js"), 10, start=mark,
                     what="snapshot after presence resubscribe")
    ch = py.channels[topic]
    for _ in range(50):
        if ch.is_joined:
            break
        await asyncio.sleep(0.1)
    assert ch.is_joined, ch.state
    # broadcasts still flow to the rejoined Python channel
    m = py.log.mark()
    assert await js.send(topic, "after-rejoin", {"ok": 1}) == "ok"
    await py.log.wait_for(lambda e: e["type"] == "broadcast" and e["event"] == "after-rejoin", 10, start=m)
    # and a later track is seen live
    m = py.log.mark()
    assert await js.cmd("track", topic=topic, payload={"who": "js", "v": 2}) == "ok"
    await wait_state(py, topic, lambda s: _state_has(s, "js-user", v=2), 10, start=m)
