"""postgres_changes with the official clients as subscribers (issue 3; PROTOCOL §4.4–4.7, §5).

A real PostgreSQL (pg_support), one server per module on its own slot and publication; every
test makes its own tables. realtime-js (vsn 1.0.0 and 2.0.0, via interop/peer.mjs) is checked on
what its callback gets after its transform (eventType/new/old), the official Python client on the
raw payload (data.type/record/old_record, ids).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest

from interop_support import log_dir  # noqa: E402
import pytest_asyncio

from interop_support import ANON_KEY, unique_topic
from pg_support import (
    PgServer,
    apsql,
    drop_stale_slots,
    new_uuid,
    psql,
    require_database,
    user_jwt,
)

pytestmark = pytest.mark.asyncio

SLOT_PREFIX = "ipc"
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WAIT = 15.0
QUIET = 1.5
SUBSCRIBED_PG = "Subscribed to PostgreSQL"
VSNS = ["1.0.0", "2.0.0"]


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def pg(request):
    """(server, database url, publication) — the server streams the module's own publication."""
    url = require_database()
    drop_stale_slots(url, SLOT_PREFIX)
    pgs = PgServer(url, SLOT_PREFIX, log_dir(request))
    srv = pgs.start()
    made: list[str] = []
    yield srv, url, pgs.publication, made
    alive = srv.alive()
    pgs.stop()
    if made:
        try:
            psql(url, "".join(f"DROP TABLE IF EXISTS {t} CASCADE;" for t in made))
        except RuntimeError:
            pass
    if not alive:
        pytest.fail(f"server died during {request.node.name}:\n{srv.log_tail()}")


@pytest.fixture(scope="module")
def server(pg):
    return pg[0]


@pytest_asyncio.fixture
async def make_table(pg):
    """`await make_table("(id int primary key, ...)", rls_sql=...)` -> qualified table name;
    the table is in the server's publication and SELECT-able by anon and authenticated."""
    _, url, publication, made = pg

    async def make(columns: str, *, schema: str = "public", name: str | None = None,
                   extra_sql: str = "", grant: bool = True) -> str:
        name = name or f"ipc_{uuid.uuid4().hex[:10]}"
        qual = f"{schema}.{name}"
        made.append(qual)
        grant_sql = f"GRANT SELECT ON {qual} TO anon, authenticated;" if grant else ""
        await apsql(url, f"""
            CREATE TABLE {qual} {columns};
            {grant_sql}
            {extra_sql}
            ALTER PUBLICATION {publication} ADD TABLE {qual};
        """)
        return name

    return make


@pytest.fixture
def sql(pg):
    url = pg[1]

    async def run(statement: str):
        return await apsql(url, statement)

    return run


# ---------------------------------------------------------------------------------------------
# helpers


def norm_js(payload: dict) -> dict:
    """The JS callback payload with the commit timestamp checked and blanked."""
    p = dict(payload)
    ts = p.get("commit_timestamp")
    assert isinstance(ts, str) and TS_RE.match(ts), f"commit_timestamp {ts!r}"
    p["commit_timestamp"] = "TS"
    return p


def norm_py(payload: dict) -> dict:
    p = json.loads(json.dumps(payload, default=str))
    ts = p["data"].get("commit_timestamp")
    assert isinstance(ts, str) and TS_RE.match(ts), f"commit_timestamp {ts!r}"
    p["data"]["commit_timestamp"] = "TS"
    return p


def js_change(label: str | None = None, topic: str | None = None):
    return lambda e: e["type"] == "postgres_changes" and (label is None or e["label"] == label) and (
        topic is None or e["topic"] == topic)


def is_system(topic: str, status: str | None = None, message: str | None = None):
    return lambda e: e["type"] == "system" and e["topic"] == topic and (
        status is None or e["payload"]["status"] == status) and (
        message is None or e["payload"]["message"] == message)


async def js_subscriber(js_factory, server, vsn: str, bindings: dict[str, dict], *,
                        token: str | None = None, topic: str | None = None,
                        wait_pg: bool = True, tap: bool = False, name: str = "js"):
    """A realtime-js client with one channel and one postgres_changes listener per binding
    (label -> filter). `token` goes through the `accessToken` option callback."""
    topic = topic or unique_topic("pc")
    peer = await js_factory(f"{name}-{vsn}", vsn)
    kw = {}
    if token is not None:
        kw["accessTokenFn"] = token
    if tap:
        kw["tapFrames"] = True
    await peer.connect(server, **kw)
    await peer.cmd("channel", topic=topic, config={})
    await peer.cmd("on_system", topic=topic)
    for label, flt in bindings.items():
        await peer.cmd("on_postgres_changes", topic=topic, label=label, filter=flt)
    mark = peer.log.mark()
    await peer.cmd("subscribe", topic=topic)
    st = await peer.log.wait_for(lambda e: e["type"] == "status" and e["topic"] == topic, WAIT,
                                 start=mark, what="subscribe status")
    assert st["status"] == "SUBSCRIBED", st
    if wait_pg:
        ev = await peer.log.wait_for(is_system(topic), WAIT, start=mark, what="postgres_changes system")
        assert ev["payload"] == {"extension": "postgres_changes", "status": "ok",
                                 "message": SUBSCRIBED_PG, "channel": topic}, ev
    return peer, topic


def py_on_system(peer, topic: str) -> None:
    """System messages (pydantic models in the Python client) as plain dicts."""
    def cb(p):
        d = p.model_dump() if hasattr(p, "model_dump") else dict(p)
        peer.log.push_nowait({"type": "system", "topic": topic, "payload": json.loads(json.dumps(d, default=str))})
    peer.channels[topic].on_system(cb)


async def py_subscriber(py_factory, server, bindings: dict[str, dict], *, token: str = ANON_KEY,
                        topic: str | None = None, wait_pg: bool = True):
    """The official Python client with one channel and a postgres_changes callback per binding
    (label -> {"event", "schema"?, "table"?, "filter"?}). Returns (peer, topic, {label: id})."""
    from realtime.types import RealtimePostgresChangesListenEvent as Ev

    topic = topic or unique_topic("pcpy")
    peer = await py_factory("py").connect(server, apikey=token)
    ch = peer.channel(topic, {})
    for label, b in bindings.items():
        def cb(payload, label=label):
            peer.log.push_nowait({"type": "postgres_changes", "topic": topic, "label": label,
                                  "payload": json.loads(json.dumps(payload, default=str))})
        ch.on_postgres_changes(Ev(b["event"]), cb, table=b.get("table"), schema=b.get("schema"),
                               filter=b.get("filter"))
    py_on_system(peer, topic)
    mark = peer.log.mark()

    def status_cb(status, err):
        peer.log.push_nowait({"type": "status", "topic": topic,
                              "status": str(getattr(status, "value", status)),
                              "error": None if err is None else str(err)})

    await asyncio.wait_for(ch.subscribe(status_cb), WAIT)
    st = await peer.log.wait_for(lambda e: e["type"] == "status", WAIT, start=mark, what="py status")
    assert st["status"] == "SUBSCRIBED", st
    if wait_pg:
        ev = await peer.log.wait_for(is_system(topic), WAIT, start=mark, what="py system")
        assert ev["payload"]["message"] == SUBSCRIBED_PG, ev
    ids = {label: cb.id for label, cb in zip(bindings, ch.postgres_changes_callbacks)}
    assert all(isinstance(i, int) for i in ids.values()), ids
    return peer, topic, ids


# ---------------------------------------------------------------------------------------------
# INSERT / UPDATE / DELETE


@pytest.mark.parametrize("vsn", VSNS)
async def test_insert_update_delete_js_and_python(server, make_table, sql, js_factory, py_factory, vsn):
    t = await make_table("(id int8 PRIMARY KEY, title text, done bool DEFAULT false)")
    binding = {"event": "*", "schema": "public", "table": t}
    js, _ = await js_subscriber(js_factory, server, vsn, {"all": binding})
    py, _, pyids = await py_subscriber(py_factory, server, {"all": binding})
    columns = [{"name": "id", "type": "int8"}, {"name": "title", "type": "text"},
               {"name": "done", "type": "bool"}]

    # INSERT
    jm, pm = js.log.mark(), py.log.mark()
    await sql(f"INSERT INTO {t} (id, title) VALUES (1, 'first')")
    ev = await js.log.wait_for(js_change("all"), WAIT, start=jm, what="js insert")
    assert norm_js(ev["payload"]) == {
        "schema": "public", "table": t, "commit_timestamp": "TS", "eventType": "INSERT",
        "new": {"id": 1, "title": "first", "done": False}, "old": {}, "errors": None}
    ev = await py.log.wait_for(js_change("all"), WAIT, start=pm, what="py insert")
    assert norm_py(ev["payload"]) == {"ids": [pyids["all"]], "data": {
        "schema": "public", "table": t, "commit_timestamp": "TS", "type": "INSERT",
        "errors": None, "columns": columns, "record": {"id": 1, "title": "first", "done": False}}}

    # UPDATE: old carries the replica identity (primary key)
    jm, pm = js.log.mark(), py.log.mark()
    await sql(f"UPDATE {t} SET title = 'second', done = true WHERE id = 1")
    ev = await js.log.wait_for(js_change("all"), WAIT, start=jm, what="js update")
    assert norm_js(ev["payload"]) == {
        "schema": "public", "table": t, "commit_timestamp": "TS", "eventType": "UPDATE",
        "new": {"id": 1, "title": "second", "done": True}, "old": {"id": 1}, "errors": None}
    ev = await py.log.wait_for(js_change("all"), WAIT, start=pm, what="py update")
    assert norm_py(ev["payload"]) == {"ids": [pyids["all"]], "data": {
        "schema": "public", "table": t, "commit_timestamp": "TS", "type": "UPDATE",
        "errors": None, "columns": columns, "record": {"id": 1, "title": "second", "done": True},
        "old_record": {"id": 1}}}

    # DELETE
    jm, pm = js.log.mark(), py.log.mark()
    await sql(f"DELETE FROM {t} WHERE id = 1")
    ev = await js.log.wait_for(js_change("all"), WAIT, start=jm, what="js delete")
    assert norm_js(ev["payload"]) == {
        "schema": "public", "table": t, "commit_timestamp": "TS", "eventType": "DELETE",
        "new": {}, "old": {"id": 1}, "errors": None}
    ev = await py.log.wait_for(js_change("all"), WAIT, start=pm, what="py delete")
    assert norm_py(ev["payload"]) == {"ids": [pyids["all"]], "data": {
        "schema": "public", "table": t, "commit_timestamp": "TS", "type": "DELETE",
        "errors": None, "columns": columns, "old_record": {"id": 1}}}

    # exactly one callback per change
    await js.log.assert_none(js_change(), QUIET, start=jm + 1, what="duplicate js change")
    assert len(js.log.find(js_change())) == 3
    assert len(py.log.find(js_change())) == 3


@pytest.mark.parametrize("vsn", VSNS)
async def test_replica_identity_full_gives_the_whole_old_row(server, make_table, sql, js_factory, vsn):
    t = await make_table("(id int PRIMARY KEY, title text)", extra_sql="")
    await sql(f"ALTER TABLE {t} REPLICA IDENTITY FULL; INSERT INTO {t} VALUES (1, 'x')")
    js, _ = await js_subscriber(js_factory, server, vsn, {"u": {"event": "UPDATE", "schema": "public", "table": t}})
    await sql(f"UPDATE {t} SET title = 'y' WHERE id = 1")
    ev = await js.log.wait_for(js_change("u"), WAIT, what="update")
    assert ev["payload"]["old"] == {"id": 1, "title": "x"}
    assert ev["payload"]["new"] == {"id": 1, "title": "y"}


# ---------------------------------------------------------------------------------------------
# filters and bindings


@pytest.mark.parametrize("vsn", VSNS)
async def test_filters_eq_and_in_show_only_matching_rows(server, make_table, sql, js_factory, py_factory, vsn):
    t = await make_table("(id int PRIMARY KEY, title text)")
    bindings = {
        "eq": {"event": "INSERT", "schema": "public", "table": t, "filter": "id=eq.2"},
        "in": {"event": "INSERT", "schema": "public", "table": t, "filter": "title=in.(b,c)"},
    }
    js, _ = await js_subscriber(js_factory, server, vsn, bindings)
    py, _, _ = await py_subscriber(py_factory, server, bindings)
    await sql(f"INSERT INTO {t} VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
    # a sentinel row, matched by no filter but the last: everything before it has arrived
    await sql(f"INSERT INTO {t} VALUES (5, 'c')")
    for peer, key in ((js, "new"), (py, None)):
        await peer.log.wait_for(
            lambda e: e["type"] == "postgres_changes" and e["label"] == "in" and (
                e["payload"][key]["id"] if key else e["payload"]["data"]["record"]["id"]) == 5,
            WAIT, what="sentinel row")
        await asyncio.sleep(0.3)

        def ids(label, key=key, peer=peer):
            out = []
            for e in peer.log.find(js_change(label)):
                out.append(e["payload"][key]["id"] if key else e["payload"]["data"]["record"]["id"])
            return out

        assert ids("eq") == [2], f"{peer.name}: eq filter got rows {ids('eq')}"
        assert ids("in") == [2, 3, 5], f"{peer.name}: in filter got rows {ids('in')}"


@pytest.mark.parametrize("vsn", VSNS)
async def test_schema_only_binding_sees_every_table_of_the_schema(server, make_table, sql, js_factory,
                                                                  py_factory, vsn):
    schema = f"ipc_s_{uuid.uuid4().hex[:8]}"
    await sql(f"CREATE SCHEMA {schema}; GRANT USAGE ON SCHEMA {schema} TO anon, authenticated;")
    try:
        a = await make_table("(id int PRIMARY KEY)", schema=schema, name="alpha")
        b = await make_table("(id int PRIMARY KEY, v text)", schema=schema, name="beta")
        other = await make_table("(id int PRIMARY KEY)")
        js, _ = await js_subscriber(js_factory, server, vsn, {"s": {"event": "*", "schema": schema}})
        py, _, _ = await py_subscriber(py_factory, server, {"s": {"event": "*", "schema": schema}})
        await sql(f"INSERT INTO {other} VALUES (1); INSERT INTO {schema}.{a} VALUES (1);"
                  f"INSERT INTO {schema}.{b} VALUES (2, 'z'); UPDATE {schema}.{b} SET v = 'w'")
        await js.log.wait_for(lambda e: e["type"] == "postgres_changes" and e["payload"]["eventType"] == "UPDATE",
                              WAIT, what="js update on beta")
        await py.log.wait_for(lambda e: e["type"] == "postgres_changes"
                              and e["payload"]["data"]["type"] == "UPDATE", WAIT, what="py update on beta")
        await asyncio.sleep(0.3)
        got_js = [(e["payload"]["schema"], e["payload"]["table"], e["payload"]["eventType"], e["payload"]["new"])
                  for e in js.log.find(js_change())]
        assert got_js == [(schema, "alpha", "INSERT", {"id": 1}), (schema, "beta", "INSERT", {"id": 2, "v": "z"}),
                          (schema, "beta", "UPDATE", {"id": 2, "v": "w"})]
        got_py = [(e["payload"]["data"]["schema"], e["payload"]["data"]["table"], e["payload"]["data"]["type"])
                  for e in py.log.find(js_change())]
        assert got_py == [(schema, "alpha", "INSERT"), (schema, "beta", "INSERT"), (schema, "beta", "UPDATE")]
    finally:
        await sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.mark.parametrize("vsn", VSNS)
async def test_two_listeners_fire_from_one_message(server, make_table, sql, js_factory, vsn):
    t = await make_table("(id int PRIMARY KEY, title text)")
    js, topic = await js_subscriber(js_factory, server, vsn, {
        "ins": {"event": "INSERT", "schema": "public", "table": t},
        "all": {"event": "*", "schema": "public", "table": t},
        "upd": {"event": "UPDATE", "schema": "public", "table": t, "filter": "id=eq.1"},
    }, tap=True)
    await sql(f"INSERT INTO {t} VALUES (1, 'one')")
    a = await js.log.wait_for(js_change("ins"), WAIT, what="INSERT listener")
    b = await js.log.wait_for(js_change("all"), WAIT, what="* listener")
    assert a["payload"] == b["payload"]
    assert a["payload"]["new"] == {"id": 1, "title": "one"}
    await sql(f"UPDATE {t} SET title = 'uno' WHERE id = 1")
    u = await js.log.wait_for(js_change("upd"), WAIT, what="UPDATE listener")
    await js.log.wait_for(lambda e: js_change("all")(e) and e["payload"]["eventType"] == "UPDATE", WAIT)
    assert u["payload"]["new"] == {"id": 1, "title": "uno"}
    await asyncio.sleep(QUIET)
    assert [e["label"] for e in js.log.find(js_change())].count("ins") == 1
    assert [e["label"] for e in js.log.find(js_change())].count("all") == 2
    # on the wire: one postgres_changes frame per change, carrying the ids of every match
    frames = []
    for e in js.log.find(lambda e: e["type"] == "frame" and not e["binary"]):
        msg = json.loads(e["text"])
        event, payload = (msg[3], msg[4]) if isinstance(msg, list) else (msg["event"], msg["payload"])
        if event == "postgres_changes":
            frames.append(payload)
    assert len(frames) == 2, frames
    assert [len(p["ids"]) for p in frames] == [2, 2], frames


# ---------------------------------------------------------------------------------------------
# RLS




async def _rls_table(make_table, sql) -> str:
    t = await make_table("(id int PRIMARY KEY, owner uuid, body text)")
    await sql(f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;"
              f"CREATE POLICY owner_reads ON {t} FOR SELECT TO authenticated USING (auth.uid() = owner);")
    return t


@pytest.mark.parametrize("vsn", VSNS)
async def test_rls_anon_and_other_users_never_see_the_row(server, make_table, sql, js_factory, py_factory, vsn):
    """RLS `auth.uid() = owner`: no row reaches a subscriber the policy hides it from. The DELETEs
    at the end (which bypass RLS, reduced to the primary key) reach everyone and mark the point by
    which every earlier change has been offered."""
    t = await _rls_table(make_table, sql)
    me, other = new_uuid(), new_uuid()
    binding = {"event": "*", "schema": "public", "table": t}
    mine, _ = await js_subscriber(js_factory, server, vsn, {"b": binding}, token=user_jwt(me), name="mine")
    theirs, _ = await js_subscriber(js_factory, server, vsn, {"b": binding}, token=user_jwt(other), name="theirs")
    anon, _ = await js_subscriber(js_factory, server, vsn, {"b": binding}, name="anon")
    py_anon, _, _ = await py_subscriber(py_factory, server, {"b": binding})
    py_other, _, _ = await py_subscriber(py_factory, server, {"b": binding}, token=user_jwt(other))

    await sql(f"INSERT INTO {t} VALUES (1, '{me}', 'secret')")
    await sql(f"UPDATE {t} SET body = 'still secret' WHERE id = 1")
    await sql(f"DELETE FROM {t} WHERE id = 1")
    for peer in (mine, theirs, anon):
        ev = await peer.log.wait_for(lambda e: js_change("b")(e) and e["payload"]["eventType"] == "DELETE",
                                     WAIT, what="the DELETE (bypasses RLS)")
        assert norm_js(ev["payload"]) == {"schema": "public", "table": t, "commit_timestamp": "TS",
                                          "eventType": "DELETE", "new": {}, "old": {"id": 1}, "errors": None}
    for peer in (py_anon, py_other):
        ev = await peer.log.wait_for(js_change("b"), WAIT, what="the DELETE (python)")
        assert ev["payload"]["data"]["type"] == "DELETE"
        assert ev["payload"]["data"]["old_record"] == {"id": 1}
    await asyncio.sleep(0.3)
    for peer in (theirs, anon):
        got = [e["payload"]["eventType"] for e in peer.log.find(js_change())]
        assert got == ["DELETE"], f"{peer.name} saw a row the policy hides: {got}"
    for peer in (py_anon, py_other):
        got = [e["payload"]["data"]["type"] for e in peer.log.find(js_change())]
        assert got == ["DELETE"], f"python saw a row the policy hides: {got}"


@pytest.mark.parametrize("vsn", VSNS)
async def test_rls_owner_receives_each_of_their_rows(server, make_table, sql, js_factory, py_factory, vsn):
    """An `authenticated` subscriber whose `sub` owns the row gets every INSERT and UPDATE of it
    (JS through the `accessToken` callback, Python with the user's JWT), committed one
    transaction at a time."""
    t = await _rls_table(make_table, sql)
    me, other = new_uuid(), new_uuid()
    binding = {"event": "*", "schema": "public", "table": t}
    mine, _ = await js_subscriber(js_factory, server, vsn, {"b": binding}, token=user_jwt(me), name="mine")
    py_mine, _, _ = await py_subscriber(py_factory, server, {"b": binding}, token=user_jwt(me))
    n = 100
    for i in range(1, n + 1):
        owner = me if i % 5 else other
        await sql(f"INSERT INTO {t} VALUES ({i}, '{owner}', 'row {i}')")
    await sql(f"UPDATE {t} SET body = 'changed' WHERE id = 1")
    ev = await mine.log.wait_for(lambda e: js_change("b")(e) and e["payload"]["eventType"] == "UPDATE", WAIT,
                                 what="the owner's UPDATE")
    assert ev["payload"]["new"] == {"id": 1, "owner": me, "body": "changed"}
    assert ev["payload"]["old"] == {"id": 1}
    await py_mine.log.wait_for(lambda e: js_change("b")(e) and e["payload"]["data"]["type"] == "UPDATE", WAIT,
                               what="the owner's UPDATE (python)")
    await asyncio.sleep(0.3)
    want = [i for i in range(1, n + 1) if i % 5]
    got_js = [e["payload"]["new"]["id"] for e in mine.log.find(js_change()) if e["payload"]["eventType"] == "INSERT"]
    got_py = [e["payload"]["data"]["record"]["id"] for e in py_mine.log.find(js_change())
              if e["payload"]["data"]["type"] == "INSERT"]
    assert got_js == want, f"js owner missed rows {sorted(set(want) - set(got_js))}"
    assert got_py == want, f"python owner missed rows {sorted(set(want) - set(got_py))}"
    first = next(e for e in mine.log.find(js_change()) if e["payload"]["new"].get("id") == 1)
    assert norm_js(first["payload"]) == {"schema": "public", "table": t, "commit_timestamp": "TS",
                                         "eventType": "INSERT", "new": {"id": 1, "owner": me, "body": "row 1"},
                                         "old": {}, "errors": None}


# ---------------------------------------------------------------------------------------------
# typed values


@pytest.mark.parametrize("vsn", VSNS)
async def test_values_arrive_typed(server, make_table, sql, js_factory, py_factory, vsn):
    t = await make_table("(id int PRIMARY KEY, b bool, i int4, big int8, n numeric(10,2), f float8, j jsonb,"
                         " arr int4[], tarr text[], ts timestamptz, u uuid, nul text)")
    binding = {"event": "INSERT", "schema": "public", "table": t}
    js, _ = await js_subscriber(js_factory, server, vsn, {"b": binding})
    py, _, _ = await py_subscriber(py_factory, server, {"b": binding})
    await sql(f"""INSERT INTO {t} VALUES (1, true, 42, 9007199254740991, 12.50, 2.25,
                  '{{"a": [1, "x"], "n": null}}', '{{1,2,3}}', '{{"a b","c,d"}}',
                  '2024-02-03 04:05:06.789+02', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL)""")
    want = {"id": 1, "b": True, "i": 42, "big": 9007199254740991, "n": 12.5, "f": 2.25,
            "j": {"a": [1, "x"], "n": None}, "arr": [1, 2, 3], "tarr": ["a b", "c,d"],
            "ts": "2024-02-03T02:05:06.789+00:00", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "nul": None}
    ev = await js.log.wait_for(js_change("b"), WAIT, what="typed insert (js)")
    assert ev["payload"]["new"] == want
    # the raw payload (Python does no conversion): typed JSON straight from the server
    ev = await py.log.wait_for(js_change("b"), WAIT, what="typed insert (py)")
    data = ev["payload"]["data"]
    assert data["record"] == want
    assert {c["name"]: c["type"] for c in data["columns"]} == {
        "id": "int4", "b": "bool", "i": "int4", "big": "int8", "n": "numeric", "f": "float8",
        "j": "jsonb", "arr": "_int4", "tarr": "_text", "ts": "timestamptz", "u": "uuid", "nul": "text"}


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("vsn", VSNS)
@pytest.mark.parametrize("flt,message", [
    ("id=in.1,2", "Error parsing `filter` params: `in` filter value must be wrapped by parentheses"),
    ("foo=hey", 'Error parsing `filter` params: ["foo", "hey"]'),
])
async def test_invalid_filter_gives_system_error(server, make_table, js_factory, vsn, flt, message):
    t = await make_table("(id int PRIMARY KEY)")
    js, topic = await js_subscriber(js_factory, server, vsn,
                                    {"bad": {"event": "*", "schema": "public", "table": t, "filter": flt}},
                                    wait_pg=False)
    ev = await js.log.wait_for(is_system(topic), WAIT, what="system error")
    assert ev["payload"] == {"extension": "postgres_changes", "status": "error", "message": message,
                             "channel": topic}
    # the channel itself stays joined
    st = await js.cmd("state")
    assert st["channels"][topic] == "joined", st


async def test_table_not_in_publication_gives_system_error(server, sql, js_factory):
    t = f"ipc_np_{uuid.uuid4().hex[:8]}"
    await sql(f"CREATE TABLE {t} (id int PRIMARY KEY); GRANT SELECT ON {t} TO anon")
    try:
        js, topic = await js_subscriber(js_factory, server, "2.0.0",
                                        {"x": {"event": "*", "schema": "public", "table": t}}, wait_pg=False)
        ev = await js.log.wait_for(is_system(topic), WAIT, what="system error")
        assert ev["payload"] == {
            "extension": "postgres_changes", "status": "error", "channel": topic,
            "message": "Unable to subscribe to changes with given parameters. Please check Realtime is "
                       f"enabled for the given connect parameters: [event: *, schema: public, table: {t}, "
                       "filters: [], select: nil]"}
    finally:
        await sql(f"DROP TABLE {t}")


@pytest.mark.parametrize("vsn", VSNS)
async def test_two_megabyte_row_gets_413_in_js(server, make_table, sql, js_factory, vsn):
    t = await make_table("(id int PRIMARY KEY, small text, big text)")
    js, _ = await js_subscriber(js_factory, server, vsn, {"b": {"event": "*", "schema": "public", "table": t}})
    await sql(f"INSERT INTO {t} VALUES (1, 'tiny', repeat('x', 2 * 1024 * 1024))")
    ev = await js.log.wait_for(js_change("b"), 30, what="2 MB insert")
    p = norm_js(ev["payload"])
    assert p["errors"] == ["Error 413: Payload Too Large"]
    assert p["eventType"] == "INSERT"
    assert p["new"] == {"id": 1, "small": "tiny"}
    # the next ordinary row is normal again
    await sql(f"INSERT INTO {t} VALUES (2, 'a', 'b')")
    ev = await js.log.wait_for(lambda e: js_change("b")(e) and e["payload"]["new"].get("id") == 2, WAIT)
    assert ev["payload"]["errors"] is None
    assert ev["payload"]["new"] == {"id": 2, "small": "a", "big": "b"}
