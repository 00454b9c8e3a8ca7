"""Private channels with the official clients (issue 7; PROTOCOL §4.2 step 9, §7.3–7.5, §8.6, §9.2,
§10.6): RLS policies on realtime.messages decide who joins, reads, writes and tracks presence;
realtime.send / broadcast_changes reach subscribers; replay; a token refresh that loses
permission closes the channel.

realtime-js authenticates through the `accessToken` option callback of RealtimeClient (the way
supabase-js wires it), the Python client with the user's JWT as its token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from interop_support import log_dir  # noqa: E402
import pytest_asyncio

from interop_support import ANON_KEY, is_broadcast, is_status
from pg_support import PgServer, apsql, drop_stale_slots, new_uuid, psql, require_database, user_jwt

pytestmark = pytest.mark.asyncio

SLOT_PREFIX = "ipv"
WAIT = 15.0
VSNS = ["1.0.0", "2.0.0"]

# Permission comes from a claim of the user's JWT (`ipy_perm`) on topics `ipy-...`, plus
# per-user topics `ipy-user-<uid>` (like private_channels.rs, with names of our own so both can
# share a database: permissive policies are ORed).
#   rw: broadcast + presence read and write    r: read only
#   bw: broadcast read/write, presence read     none / anon: nothing
POLICIES = """
BEGIN;
SELECT pg_advisory_xact_lock(727275);
DROP POLICY IF EXISTS ipy_select ON realtime.messages;
DROP POLICY IF EXISTS ipy_insert ON realtime.messages;
CREATE POLICY ipy_select ON realtime.messages FOR SELECT TO authenticated USING (
  (realtime.topic() LIKE 'ipy-%' AND (auth.jwt() ->> 'ipy_perm') IN ('rw', 'r', 'bw'))
  OR realtime.topic() = 'ipy-user-' || auth.uid()::text);
CREATE POLICY ipy_insert ON realtime.messages FOR INSERT TO authenticated WITH CHECK (
  (realtime.topic() LIKE 'ipy-%' AND ((auth.jwt() ->> 'ipy_perm') = 'rw'
      OR ((auth.jwt() ->> 'ipy_perm') = 'bw' AND extension = 'broadcast')))
  OR realtime.topic() = 'ipy-user-' || auth.uid()::text);
COMMIT;
"""


def perm_jwt(perm: str, sub: str | None = None) -> str:
    return user_jwt(sub or new_uuid(), ipy_perm=perm)


def topic_name(kind: str = "t") -> str:
    return f"ipy-{kind}-{uuid.uuid4().hex[:10]}"


def unauthorized(topic: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {topic}"


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def pg(request):
    url = require_database()
    drop_stale_slots(url, SLOT_PREFIX)
    pgs = PgServer(url, SLOT_PREFIX, log_dir(request))
    srv = pgs.start()
    psql(url, POLICIES)  # roles, auth.jwt() and realtime.messages exist once the server is ready
    yield srv, url
    alive = srv.alive()
    pgs.stop()
    if not alive:
        pytest.fail(f"server died during {request.node.name}:\n{srv.log_tail()}")


@pytest.fixture(scope="module")
def server(pg):
    return pg[0]


@pytest.fixture
def sql(pg):
    url = pg[1]

    async def run(statement: str):
        return await apsql(url, statement)

    return run


async def js_private(js_factory, server, vsn: str, topic: str, token: str | None, *,
                     config: dict | None = None, presence: bool = False, tap: bool = False,
                     manual_token: bool = False, name: str = "js", expect: str | None = "SUBSCRIBED"):
    """realtime-js on a private channel. The user's JWT reaches the client through the
    `accessToken` callback (or setAuth(token) with manual_token); the socket's apikey is anon."""
    peer = await js_factory(f"{name}-{vsn}", vsn)
    kw = {}
    if token is not None:
        kw["accessToken" if manual_token else "accessTokenFn"] = token
    if tap:
        kw["tapFrames"] = True
    await peer.connect(server, **kw)
    cfg = {"private": True, **(config or {})}
    mark = peer.log.mark()
    await peer.join(topic, cfg, presence=presence, system=True, wait=False)
    if expect is None:
        return peer
    st = await peer.log.wait_for(lambda e: e["type"] == "status" and e["topic"] == topic, WAIT,
                                 start=mark, what=f"subscribe status on {topic}")
    assert st["status"] == expect, st
    return peer


async def py_private(py_factory, server, topic: str, token: str, *, events=("*",), config: dict | None = None,
                     expect: str = "SUBSCRIBED"):
    peer = await py_factory("py").connect(server, apikey=token)
    ev = await peer.join(topic, {"private": True, **(config or {})}, events=list(events))
    assert ev["status"] == expect, ev
    return peer, ev


# ---------------------------------------------------------------------------------------------
# join, broadcast, refusal


@pytest.mark.parametrize("vsn", VSNS)
async def test_authorized_js_user_broadcasts_to_authorized_python_user(server, js_factory, py_factory, vsn):
    topic = topic_name("rw")
    sender = await js_private(js_factory, server, vsn, topic, perm_jwt("rw"), name="sender")
    other_js = await js_private(js_factory, server, "2.0.0" if vsn == "1.0.0" else "1.0.0", topic,
                                perm_jwt("r"), name="reader")
    py, _ = await py_private(py_factory, server, topic, perm_jwt("rw"), events=["chat"])
    assert await sender.send(topic, "chat", {"n": 1, "text": "hé"}) == "ok"
    ev = await py.log.wait_for(is_broadcast("chat", topic), WAIT, what="python receives")
    assert ev["payload"] == {"event": "chat", "payload": {"n": 1, "text": "hé"}}
    ev = await other_js.log.wait_for(is_broadcast("chat", topic), WAIT, what="js reader receives")
    assert ev["payload"] == {"type": "broadcast", "event": "chat", "payload": {"n": 1, "text": "hé"}}
    # and back: Python (authorized writer) to the JS users
    m = sender.log.mark()
    await py.channels[topic].send_broadcast("reply", {"ok": True})
    ev = await sender.log.wait_for(is_broadcast("reply", topic), WAIT, start=m, what="js receives python")
    assert ev["payload"] == {"type": "broadcast", "event": "reply", "payload": {"ok": True}}


@pytest.mark.parametrize("vsn", VSNS)
async def test_unauthorized_users_are_refused_with_the_exact_reason(server, js_factory, py_factory, vsn):
    topic = topic_name("rw")
    for name, token in (("noperm", perm_jwt("none")), ("anon", None)):
        js = await js_private(js_factory, server, vsn, topic, token, name=name, expect="CHANNEL_ERROR")
        st = js.log.find(is_status("CHANNEL_ERROR", topic))[0]
        assert st["error"] == unauthorized(topic), st
        assert js.log.find(is_status("SUBSCRIBED", topic)) == []
    _, ev = await py_private(py_factory, server, topic, perm_jwt("none"), expect="CHANNEL_ERROR")
    assert json.loads(ev["error"]) == {"reason": unauthorized(topic)}, ev
    # The public room of the same name is another room: joining it is fine and shows nothing
    # of the private one.
    pub = await js_factory(f"public-{vsn}", vsn)
    await pub.connect(server)
    await pub.joined(topic, {"private": False})
    writer = await js_private(js_factory, server, vsn, topic, perm_jwt("rw"), name="writer")
    py_reader, _ = await py_private(py_factory, server, topic, perm_jwt("r"), events=["secret"])
    assert await writer.send(topic, "secret", {"s": 1}) == "ok"
    await py_reader.log.wait_for(is_broadcast("secret", topic), WAIT, what="private reader")
    await pub.log.assert_none(is_broadcast(), 0.5, what="private message on the public room")


@pytest.mark.parametrize("vsn", VSNS)
async def test_read_only_users_broadcasts_are_not_delivered(server, js_factory, py_factory, vsn):
    topic = topic_name("ro")
    reader = await js_private(js_factory, server, vsn, topic, perm_jwt("r"), name="reader",
                              config={"broadcast": {"ack": True}})
    py, _ = await py_private(py_factory, server, topic, perm_jwt("rw"), events=["*"])
    writer = await js_private(js_factory, server, vsn, topic, perm_jwt("rw"), name="writer")
    # no write permission: dropped, and no reply even with ack -> the client times out
    res = await reader.cmd("send", topic=topic, event="nope", payload={"x": 1}, opts={"timeout": 2000})
    assert res == "timed out", res
    await py.log.assert_none(is_broadcast(), 0.5, what="read-only user's broadcast (python)")
    await writer.log.assert_none(is_broadcast(), 0.1, what="read-only user's broadcast (js)")
    # reading works
    assert await writer.send(topic, "yes", {"x": 2}) == "ok"
    ev = await reader.log.wait_for(is_broadcast("yes", topic), WAIT, what="reader reads")
    assert ev["payload"]["payload"] == {"x": 2}


@pytest.mark.parametrize("vsn", VSNS)
async def test_presence_read_write_split(server, js_factory, vsn):
    topic = topic_name("pr")
    # bw: may read presence but not track
    watcher = await js_private(js_factory, server, vsn, topic, perm_jwt("bw"), name="watcher", presence=True)
    await watcher.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "sync", WAIT,
                               what="presence state for a presence reader")
    res = await watcher.cmd("track", topic=topic, payload={"who": "watcher"})
    assert res == "error", f"track without presence write resolved {res!r}"
    # rw: may track; the reader sees it
    tracker = await js_private(js_factory, server, vsn, topic, perm_jwt("rw"), name="tracker", presence=True)
    m = watcher.log.mark()
    assert await tracker.cmd("track", topic=topic, payload={"who": "tracker"}) == "ok"
    ev = await watcher.log.wait_for(lambda e: e["type"] == "presence" and e["event"] == "join", WAIT,
                                    start=m, what="join seen by the presence reader")
    assert [{k: v for k, v in p.items() if k != "presence_ref"} for p in ev["new"]] == [{"who": "tracker"}]
    await asyncio.sleep(0.3)
    state = await watcher.cmd("presence_state", topic=topic)
    metas = [p for ps in state.values() for p in ps]
    assert [p["who"] for p in metas] == ["tracker"], f"the refused track must not be present: {state}"
    # r: no presence write either
    r = await js_private(js_factory, server, vsn, topic, perm_jwt("r"), name="r", presence=True)
    assert await r.cmd("track", topic=topic, payload={"who": "r"}) == "error"


# ---------------------------------------------------------------------------------------------
# broadcast from the database


def _is_kind4(event: str):
    def pred(e):
        if e["type"] != "frame" or not e["binary"] or e["kind"] != 4:
            return False
        raw = bytes.fromhex(e["hex"])
        tl, el = raw[1], raw[2]
        return raw[5 + tl:5 + tl + el].decode() == event
    return pred


def _kind4_meta(frame: dict) -> dict:
    raw = bytes.fromhex(frame["hex"])
    tl, el, ml = raw[1], raw[2], raw[3]
    off = 5 + tl + el
    return json.loads(raw[off:off + ml])


async def test_realtime_send_reaches_js_v1_v2_and_python(server, sql, js_factory, py_factory):
    topic = topic_name("db")
    v2 = await js_private(js_factory, server, "2.0.0", topic, perm_jwt("r"), name="v2", tap=True)
    v1 = await js_private(js_factory, server, "1.0.0", topic, perm_jwt("r"), name="v1", tap=True)
    py, _ = await py_private(py_factory, server, topic, perm_jwt("r"), events=["from_sql"])
    denied = await js_private(js_factory, server, "2.0.0", topic, perm_jwt("none"), name="denied",
                              expect="CHANNEL_ERROR")
    await sql(f"SELECT realtime.send('{{\"x\": 1}}'::jsonb, 'from_sql', '{topic}', true)")
    ev = await v2.log.wait_for(is_broadcast("from_sql", topic), WAIT, what="v2 gets the db broadcast")
    got = ev["payload"]
    msg_id = got["meta"]["id"]
    uuid.UUID(msg_id)
    assert got == {"type": "broadcast", "event": "from_sql", "payload": {"x": 1, "id": msg_id},
                   "meta": {"id": msg_id}}
    frame = v2.log.find(_is_kind4("from_sql"))
    assert frame, "v2 must get the database broadcast as a binary kind-4 frame"
    assert _kind4_meta(frame[0]) == {"id": msg_id}
    ev = await v1.log.wait_for(is_broadcast("from_sql", topic), WAIT, what="v1 gets the db broadcast")
    assert ev["payload"] == got
    assert not v1.log.find(lambda e: e["type"] == "frame" and e["binary"]), "v1 never gets binary frames"
    ev = await py.log.wait_for(is_broadcast("from_sql", topic), WAIT, what="python gets the db broadcast")
    assert ev["payload"] == {"event": "from_sql", "payload": {"x": 1, "id": msg_id}, "meta": {"id": msg_id}}
    await denied.log.assert_none(is_broadcast(), 0.3, what="broadcast to a refused user")
    # a public send reaches the public room only
    pub = await js_factory("pub", "2.0.0")
    await pub.connect(server)
    await pub.joined(topic, {"private": False})
    m = v2.log.mark()
    await sql(f"SELECT realtime.send('{{\"y\": 2}}'::jsonb, 'pub_sql', '{topic}', false)")
    ev = await pub.log.wait_for(is_broadcast("pub_sql", topic), WAIT, what="public db broadcast")
    assert ev["payload"]["payload"]["y"] == 2
    await v2.log.assert_none(is_broadcast("pub_sql"), 0.3, start=m, what="public send on the private room")


async def test_broadcast_changes_trigger_reaches_js_and_python(server, sql, js_factory, py_factory):
    topic = topic_name("trg")
    table = f"ipy_bc_{uuid.uuid4().hex[:8]}"
    await sql(f"""
        CREATE TABLE public.{table} (id int PRIMARY KEY, title text);
        CREATE FUNCTION public.{table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM realtime.broadcast_changes('{topic}', TG_OP, TG_OP, TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD);
        RETURN NULL; END $$;
        CREATE TRIGGER {table}_bc AFTER INSERT OR UPDATE OR DELETE ON public.{table}
          FOR EACH ROW EXECUTE FUNCTION public.{table}_notify();""")
    try:
        v2 = await js_private(js_factory, server, "2.0.0", topic, perm_jwt("r"), name="v2", tap=True)
        v1 = await js_private(js_factory, server, "1.0.0", topic, perm_jwt("r"), name="v1")
        py, _ = await py_private(py_factory, server, topic, perm_jwt("r"), events=["INSERT", "UPDATE", "DELETE"])
        await sql(f"INSERT INTO public.{table} VALUES (1, 'hello'); UPDATE public.{table} SET title = 'bye';"
                  f"DELETE FROM public.{table}")
        base = {"table": table, "schema": "public"}
        want = {
            "INSERT": {**base, "operation": "INSERT", "record": {"id": 1, "title": "hello"}, "old_record": None},
            "UPDATE": {**base, "operation": "UPDATE", "record": {"id": 1, "title": "bye"},
                       "old_record": {"id": 1, "title": "hello"}},
            "DELETE": {**base, "operation": "DELETE", "record": None, "old_record": {"id": 1, "title": "bye"}},
        }
        for op, body in want.items():
            for peer in (v2, v1):
                ev = await peer.log.wait_for(is_broadcast(op, topic), WAIT, what=f"{op} at {peer.name}")
                got = ev["payload"]
                mid = got["meta"]["id"]
                assert got == {"type": "broadcast", "event": op, "payload": {**body, "id": mid}, "meta": {"id": mid}}
            ev = await py.log.wait_for(is_broadcast(op, topic), WAIT, what=f"{op} at python")
            mid = ev["payload"]["meta"]["id"]
            assert ev["payload"] == {"event": op, "payload": {**body, "id": mid}, "meta": {"id": mid}}
        assert len(v2.log.find(lambda e: _is_kind4("INSERT")(e) or _is_kind4("UPDATE")(e)
                               or _is_kind4("DELETE")(e))) == 3
        # in order
        assert [e["event"] for e in v1.log.find(is_broadcast(topic=topic))] == ["INSERT", "UPDATE", "DELETE"]
    finally:
        await sql(f"DROP TABLE public.{table}; DROP FUNCTION public.{table}_notify();")


# ---------------------------------------------------------------------------------------------
# replay


@pytest.mark.parametrize("vsn", VSNS)
async def test_replay_returns_stored_messages_oldest_first(server, sql, js_factory, py_factory, vsn):
    topic = topic_name("rp")
    since = int((time.time() - 60) * 1000)
    for i in range(3):
        await sql(f"SELECT realtime.send(jsonb_build_object('i', {i}), 'stored', '{topic}', true)")
    replay = {"broadcast": {"replay": {"since": since, "limit": 2}}}
    js = await js_private(js_factory, server, vsn, topic, perm_jwt("r"), config=replay, name="replayer")
    await js.log.wait_for(lambda e: len(js.log.find(is_broadcast("stored", topic))) >= 2,
                          WAIT, what="two replayed messages")
    got = [e["payload"] for e in js.log.find(is_broadcast("stored", topic))]
    assert [g["payload"]["i"] for g in got] == [1, 2], got
    for g in got:
        mid = g["meta"]["id"]
        assert g == {"type": "broadcast", "event": "stored", "payload": {"i": g["payload"]["i"], "id": mid},
                     "meta": {"id": mid, "replayed": True}}
    # Python (its channel config is passed through as given)
    py, _ = await py_private(py_factory, server, topic, perm_jwt("r"), events=["stored"], config=replay)
    await py.log.wait_for(lambda e: len(py.log.find(is_broadcast("stored"))) >= 2, WAIT, what="python replay")
    pgot = [e["payload"] for e in py.log.find(is_broadcast("stored", topic))]
    assert [(g["payload"]["i"], g["meta"].get("replayed")) for g in pgot] == [(1, True), (2, True)], pgot
    # a live message afterwards is not marked replayed
    await asyncio.sleep(0.3)
    await sql(f"SELECT realtime.send(jsonb_build_object('i', 3), 'stored', '{topic}', true)")
    ev = await js.log.wait_for(lambda e: is_broadcast("stored", topic)(e) and e["payload"]["payload"]["i"] == 3,
                               WAIT, what="live message after replay")
    assert "replayed" not in ev["payload"]["meta"]
    assert len(js.log.find(is_broadcast("stored", topic))) == 3


async def test_replay_without_read_permission_is_refused(server, sql, js_factory):
    topic = topic_name("rp")
    replay = {"broadcast": {"replay": {"since": int(time.time() * 1000) - 1000}}}
    js = await js_private(js_factory, server, "2.0.0", topic, perm_jwt("none"), config=replay,
                          expect="CHANNEL_ERROR")
    assert js.log.find(is_status("CHANNEL_ERROR", topic))[0]["error"] == unauthorized(topic)


# ---------------------------------------------------------------------------------------------
# token refresh


@pytest.mark.parametrize("vsn", VSNS)
async def test_token_refresh_that_loses_permission_closes_the_channel(server, js_factory, vsn):
    me = new_uuid()
    topic = f"ipy-user-{me}"
    js = await js_private(js_factory, server, vsn, topic, user_jwt(me), manual_token=True, name="me")
    # the same user with a fresh token: still allowed, nothing happens
    m = js.log.mark()
    await js.cmd("set_auth", token=user_jwt(me, exp_in=1800))
    await js.log.assert_none(lambda e: e["type"] in ("system", "status"), 0.7, start=m,
                             what="reaction to a token of the same user")
    assert (await js.cmd("state"))["channels"][topic] == "joined"
    # another user's token: permission lost -> system error, then the channel is closed
    m = js.log.mark()
    await js.cmd("set_auth", token=user_jwt(new_uuid()))
    ev = await js.log.wait_for(lambda e: e["type"] == "system" and e["topic"] == topic, WAIT, start=m,
                               what="system error")
    assert ev["payload"] == {
        "extension": "system", "status": "error", "channel": topic,
        "message": f"You no longer have permission to read from this Channel topic: {topic}"}
    st = await js.log.wait_for(lambda e: e["type"] == "status" and e["topic"] == topic, WAIT, start=m,
                               what="status after the refresh")
    assert st["status"] == "CLOSED", st
    assert (await js.cmd("state"))["channels"][topic] == "closed"


async def test_access_token_callback_token_is_used_for_join(server, js_factory):
    """With only the `accessToken` callback (the socket's apikey is anon) the join carries the
    user's JWT: the private join succeeds for the user and the refresh is picked up on setAuth()."""
    me = new_uuid()
    topic = f"ipy-user-{me}"
    js = await js_private(js_factory, server, "2.0.0", topic, user_jwt(me), name="cb")
    m = js.log.mark()
    await js.cmd("set_access_token_fn", token=user_jwt(new_uuid()), refresh=True)
    ev = await js.log.wait_for(lambda e: e["type"] == "system" and e["topic"] == topic, WAIT, start=m,
                               what="system error after the callback's token changed")
    assert ev["payload"]["message"] == f"You no longer have permission to read from this Channel topic: {topic}"
    await js.log.wait_for(is_status("CLOSED", topic), WAIT, start=m, what="CLOSED")


# ---------------------------------------------------------------------------------------------
# upstream features: binary database broadcasts, replication_ready (issue 13)


async def test_send_binary_reaches_js_v2_live_and_by_replay(server, sql, js_factory):
    topic = topic_name("bin")
    since = int((time.time() - 60) * 1000)
    js = await js_private(js_factory, server, "2.0.0", topic, perm_jwt("r"), name="bin")
    await sql(f"SELECT realtime.send_binary('\\x00ff10'::bytea, 'bin_sql', '{topic}', true)")
    ev = await js.log.wait_for(is_broadcast("bin_sql", topic), WAIT, what="binary db broadcast")
    assert ev["payload"]["payload"] == {"__binary__": "00ff10"}, ev
    late = await js_private(js_factory, server, "2.0.0", topic, perm_jwt("r"), name="late",
                            config={"broadcast": {"replay": {"since": since}}})
    ev = await late.log.wait_for(is_broadcast("bin_sql", topic), WAIT, what="binary replay")
    assert ev["payload"]["payload"] == {"__binary__": "00ff10"}, ev
    assert ev["payload"]["meta"]["replayed"] is True, ev


@pytest.mark.parametrize("vsn", VSNS)
async def test_replication_ready_reaches_realtime_js(server, js_factory, vsn):
    topic = topic_name("ready")
    js = await js_factory(f"ready-{vsn}", vsn)
    await js.connect(server)
    await js.joined(topic, {"broadcast": {"replication_ready": True}}, system=True)
    ev = await js.log.wait_for(lambda e: e["type"] == "system" and e["topic"] == topic, WAIT,
                               what="replication_ready system message")
    assert ev["payload"] == {"extension": "system", "status": "ok",
                             "message": "Replication connection established", "channel": topic}, ev
