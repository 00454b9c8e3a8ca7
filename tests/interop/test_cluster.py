"""Cluster mode: three server processes meet through a real redis-server.

The official clients are the peers: realtime-js (vsn 1.0.0 and 2.0.0) on node 1, the
official Python client on node 2, REST broadcasts to node 3. Faults are real: a node is
killed with SIGKILL, Redis is shut down for 5 s during traffic and started again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from interop_support import ANON_KEY, ServerProcess, free_port, is_broadcast, unique_topic
from interop_support import log_dir as _log_dir

pytestmark = pytest.mark.asyncio

# Short lease so the dead-node test is quick: leaves are due within lease + 1 s sweep.
LEASE_MS = 3000
LEAVE_BOUND_S = LEASE_MS / 1000 + 1


class Redis:
    """A private redis-server (append-only file, so a graceful restart keeps the history)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="supa-realtime-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip()

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.cli("shutdown")
        if self.proc is not None:
            self.proc.wait(timeout=10)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis():
    if shutil.which("redis-server") is None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail("REQUIRE_REDIS=1 but redis-server is not installed (scripts/redis.sh)")
        pytest.skip("redis-server not installed (run scripts/redis.sh)")
    r = Redis().start()
    yield r
    r.close()


@pytest.fixture
def nodes(request, redis):
    """Three cluster nodes. A test may kill one; the others must still be alive at the end."""
    flags = {"--redis-url": redis.url, "--cluster-presence-ttl-ms": str(LEASE_MS)}
    started = [ServerProcess(flags, log_dir=_log_dir(request)).start() for _ in range(3)]
    yield started
    killed = getattr(request.node, "killed_nodes", set())
    dead = [s for i, s in enumerate(started) if i not in killed and not s.alive()]
    for s in started:
        s.stop()
    if dead:
        pytest.fail(f"a node died during the test:\n{dead[0].log_tail()}")


def cluster_status(node: ServerProcess) -> dict:
    return httpx.get(f"{node.http_url}/api/health", timeout=5).json()["cluster"]


async def wait_status(node: ServerProcess, pred, what: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        s = cluster_status(node)
        if pred(s):
            return s
        assert time.monotonic() < deadline, f"cluster never got {what}: {s}"
        await asyncio.sleep(0.1)


def _conf(key: str) -> dict:
    return {"presence": {"key": key, "enabled": True}, "broadcast": {"self": False}}


def _has(state: dict, key: str) -> bool:
    return bool(state.get(key))


async def wait_presence(peer, topic, pred, timeout=15.0, start=0, what="presence"):
    return await peer.log.wait_for(
        lambda e: e["type"] == "presence" and e["event"] == "sync" and e["topic"] == topic
        and pred(e["state"]), timeout, start=start, what=f"{what} at {peer.name}")


@pytest_asyncio.fixture
async def trio(nodes, js_factory, py_factory):
    """realtime-js 1.0.0 and 2.0.0 on node 1, the Python client on node 2, all tracked."""
    topic = unique_topic("cluster")
    v1 = await js_factory("js-v1", "1.0.0")
    v2 = await js_factory("js-v2", "2.0.0")
    await v1.connect(nodes[0])
    await v2.connect(nodes[0])
    py = await py_factory("py").connect(nodes[1])
    events = ["from-v1", "from-v2", "from-py", "rest", "tick"]
    await v1.joined(topic, _conf("alice"), presence=True)
    await v2.joined(topic, _conf("bob"), presence=True)
    await py.joined(topic, _conf("carol"), events=events, presence=True)
    assert await v1.cmd("track", topic=topic, payload={"who": "alice"}) == "ok"
    assert await v2.cmd("track", topic=topic, payload={"who": "bob"}) == "ok"
    await py.channels[topic].track({"who": "carol"})
    for p in (v1, v2, py):
        await wait_presence(p, topic, lambda s: all(_has(s, k) for k in ("alice", "bob", "carol")),
                            what="everyone tracked")
    return topic, v1, v2, py


async def test_official_clients_on_different_nodes_see_each_other(nodes, trio):
    topic, v1, v2, py = trio
    peers = {"js-v1": v1, "js-v2": v2, "py": py}
    marks = {n: p.log.mark() for n, p in peers.items()}
    assert await v1.send(topic, "from-v1", {"n": 1, "s": "ü"}) == "ok"
    assert await v2.send(topic, "from-v2", {"n": 2}) == "ok"
    await py.channels[topic].send_broadcast("from-py", {"n": 3})
    senders = {"from-v1": "js-v1", "from-v2": "js-v2", "from-py": "py"}
    for event, sender in senders.items():
        for name, peer in peers.items():
            if name != sender:
                ev = await peer.log.wait_for(is_broadcast(event, topic), 10, start=marks[name],
                                             what=f"{event} at {name}")
                assert ev["payload"]["event"] == event

    # REST to node 3, which has no client: everyone on nodes 1 and 2 gets it, once.
    mark = {n: p.log.mark() for n, p in peers.items()}
    body = {"messages": [{"topic": topic, "event": "rest", "payload": {"via": "node3"}}]}
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{nodes[2].http_url}/api/broadcast", json=body,
                            headers={"apikey": ANON_KEY})
    assert r.status_code == 202, r.text
    for name, peer in peers.items():
        ev = await peer.log.wait_for(is_broadcast("rest", topic), 10, start=mark[name],
                                     what=f"rest at {name}")
        assert ev["payload"]["payload"] == {"via": "node3"}
    await asyncio.sleep(0.5)
    for name, peer in peers.items():
        for event, sender in senders.items():
            expected = 0 if name == sender else 1
            got = peer.log.find(is_broadcast(event, topic), marks[name])
            assert len(got) == expected, f"{name} got {event} {len(got)} times"
        assert len(peer.log.find(is_broadcast("rest", topic), mark[name])) == 1

    # One presence state for the channel, whichever node a client is on.
    status = await wait_status(nodes[0], lambda s: s["nodes_seen"] == 3, "3 nodes")
    assert status["redis_connected"] is True


async def test_killed_node_presences_leave_within_the_bound(request, nodes, trio):
    topic, v1, v2, py = trio
    mark = py.log.mark()
    request.node.killed_nodes = {0}
    nodes[0].proc.kill()  # SIGKILL: no goodbye, no untrack
    t0 = time.monotonic()
    await wait_presence(py, topic, lambda s: not _has(s, "alice") and not _has(s, "bob")
                        and _has(s, "carol"), timeout=LEAVE_BOUND_S + 10, start=mark,
                        what="node 1's presences gone")
    took = time.monotonic() - t0
    print(f"\n[measured] SIGKILLed node's presences left after {took:.2f} s (lease {LEASE_MS} ms)")
    # The stated bound, plus slack for a loaded machine.
    assert took <= LEAVE_BOUND_S + 3, f"leaves took {took:.1f} s (bound {LEAVE_BOUND_S} s)"
    leaves = [e for e in py.log.find(lambda e: e["type"] == "presence" and e["event"] == "leave",
                                     mark)]
    assert {e["key"] for e in leaves} >= {"alice", "bob"}, leaves


async def test_redis_down_5s_during_traffic(nodes, redis, trio):
    topic, v1, v2, py = trio
    m_v2, m_py = v2.log.mark(), py.log.mark()
    sent = 0

    async def send_some(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            assert await v1.send(topic, "tick", {"i": sent}) == "ok"
            sent += 1
            await asyncio.sleep(0.1)

    await send_some(10)
    redis.stop()
    t_down = time.monotonic()
    await send_some(30)  # ~3 s with Redis gone
    # Local delivery went on: js-v2 on the same node has every tick already.
    await v2.log.wait_for(lambda e: is_broadcast("tick", topic)(e) and e["payload"]["payload"]["i"] == sent - 1,
                          5, start=m_v2, what="local ticks while Redis is down")
    # REST cannot cross while Redis is down: an error, never a 202.
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{nodes[2].http_url}/api/broadcast", headers={"apikey": ANON_KEY},
                            json={"messages": [{"topic": topic, "event": "rest", "payload": {}}]})
    assert r.status_code == 503, r.text
    await asyncio.sleep(max(0.0, 5 - (time.monotonic() - t_down)))
    redis.start()
    t_up = time.monotonic()

    def ticks(peer, mark):
        return [e["payload"]["payload"]["i"] for e in peer.log.find(is_broadcast("tick", topic), mark)]

    # What crossed nodes is recovered: the Python client on node 2 gets every tick, in order.
    await py.log.wait_for(lambda e: is_broadcast("tick", topic)(e) and e["payload"]["payload"]["i"] == sent - 1,
                          20, start=m_py, what="the outage's ticks at py")
    print(f"\n[measured] ticks made during the outage reached node 2 {time.monotonic() - t_up:.2f} s "
          "after Redis was back")
    await send_some(10)
    await py.log.wait_for(lambda e: is_broadcast("tick", topic)(e) and e["payload"]["payload"]["i"] == sent - 1,
                          20, start=m_py, what="all ticks at py")
    await asyncio.sleep(0.5)
    assert ticks(v2, m_v2) == list(range(sent)), "local: every tick once, in order"
    assert ticks(py, m_py) == list(range(sent)), "remote: every tick once, in order"
    # Presence converges: everyone still sees everyone.
    for p in (v1, v2, py):
        await wait_presence(p, topic, lambda s: all(_has(s, k) for k in ("alice", "bob", "carol")),
                            start=0, what="presence after the outage")
    status = await wait_status(nodes[0], lambda s: s["redis_connected"], "Redis back")
    assert status["published_late"] >= 30, status
    assert status["channels_errored"] == 0, status


def _health(proc):
    return httpx.get(f"{proc.http_url}/api/health", timeout=5.0).json()


class ClusterPgServer:
    """A cluster node on the database: ready when its feed streams the shared slot or stands
    by for it (another node holds the lease), and the same for database broadcasts (one node
    streams the cluster's `<slot>_messages` slot)."""

    def __init__(self, url, prefix, log_dir, flags):
        from pg_support import PgServer
        self.inner = PgServer(url, prefix, log_dir, flags)
        self.proc = self.inner.proc
        self.inner.slot = flags["--slot-name"]

    def start(self, timeout: float = 60.0):
        self.proc.start()
        deadline = time.monotonic() + timeout
        health = None
        while time.monotonic() < deadline:
            try:
                health = _health(self.proc)
                db = health.get("database") or {}
                pc = health.get("postgres_changes") or {}
                cluster = health.get("cluster") or {}
                owner = cluster.get("slot_owner") or {}
                messages = cluster.get("db_broadcast_reader") or {}
                if db.get("ready") is True and messages.get("node") \
                        and pc.get("state") in ("streaming", "standby") and owner.get("node"):
                    return self.proc
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"cluster node not ready: {health}\n{self.proc.log_tail()}")

    def stop(self):
        from pg_support import psql, sql_literal
        code = self.inner.stop()
        # the cluster's database-broadcast slot is permanent too
        try:
            psql(self.inner.url, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                 f"WHERE slot_name = {sql_literal(self.inner.slot + '_messages')} AND NOT active;")
        except RuntimeError:
            pass
        return code


async def test_database_changes_reach_subscribers_on_every_node_once(request, redis, js_factory,
                                                                      py_factory):
    """postgres_changes in cluster mode: three nodes share one slot; the node holding its lease
    reads it for the subscribers of every node (the others stand by), so each subscriber gets
    every change once. Database broadcasts (realtime.send) reach each node's channels once
    (one node streams realtime.messages for the cluster and publishes through Redis)."""
    from pg_support import PgServer, apsql, drop_stale_slots, require_database
    from test_postgres_changes import js_change, js_subscriber, py_subscriber

    url = require_database()
    drop_stale_slots(url, "icl")
    publication = f"icl_pub_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    slot = f"icl_slot_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    flags = {"--redis-url": redis.url, "--publication": publication, "--slot-name": slot}
    pg_nodes = []
    table = f"icl_{uuid.uuid4().hex[:10]}"
    try:
        for _ in range(3):
            pgs = ClusterPgServer(url, "icl", _log_dir(request), flags)
            pgs.start()
            pg_nodes.append(pgs)
        readers = [h["cluster"]["slot_owner"]["this_node"] for h in (_health(p.proc) for p in pg_nodes)]
        assert readers.count(True) == 1, f"one slot reader for the cluster: {readers}"
        await apsql(url, f"""
            CREATE TABLE public.{table} (id int8 PRIMARY KEY);
            GRANT SELECT ON public.{table} TO anon, authenticated;
            ALTER PUBLICATION {publication} ADD TABLE public.{table};
        """)
        binding = {"event": "INSERT", "schema": "public", "table": table}
        js1, _ = await js_subscriber(js_factory, pg_nodes[0].proc, "2.0.0", {"in": binding}, name="js1")
        py2, _, _ = await py_subscriber(py_factory, pg_nodes[1].proc, {"in": binding})
        js3, _ = await js_subscriber(js_factory, pg_nodes[2].proc, "1.0.0", {"in": binding}, name="js3")
        n = 200
        await apsql(url, f"INSERT INTO public.{table} SELECT generate_series(1, {n})")

        def ids(peer, key):
            return sorted(int(e["payload"][key]["id"]) if key == "new" else int(e["payload"]["data"]["record"]["id"])
                          for e in peer.log.find(js_change("in")))

        for peer, key in ((js1, "new"), (py2, "data"), (js3, "new")):
            await peer.log.wait_for(lambda e, peer=peer, key=key: len(ids(peer, key)) >= n, 30,
                                    what=f"{n} changes at {peer.name}")
        await asyncio.sleep(1.0)
        for peer, key in ((js1, "new"), (py2, "data"), (js3, "new")):
            assert ids(peer, key) == list(range(1, n + 1)), f"{peer.name}: every change once"

        # Database broadcasts: one node streams realtime.messages, every node delivers.
        deadline = time.monotonic() + 20
        while True:
            streaming = [(_health(p.proc)["database"] or {}).get("broadcast_streaming") for p in pg_nodes]
            if streaming.count(True) == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert streaming.count(True) == 1, f"one database-broadcast reader: {streaming}"
        topic = unique_topic("cldb")
        a = await js_factory("dbb-a", "2.0.0")
        await a.connect(pg_nodes[0].proc)
        await a.joined(topic, {"private": False})
        b = await py_factory("dbb-b").connect(pg_nodes[1].proc)
        await b.joined(topic, {"private": False}, events=["dbb"])
        for i in range(5):
            await apsql(url, f"SELECT realtime.send(jsonb_build_object('i', {i}), 'dbb', '{topic}', false)")
        for peer in (a, b):
            await peer.log.wait_for(lambda e, peer=peer: len(peer.log.find(is_broadcast("dbb", topic))) >= 5,
                                    20, what=f"database broadcasts at {peer.name}")
        await asyncio.sleep(1.0)
        for peer in (a, b):
            got = sorted(e["payload"]["payload"]["i"] for e in peer.log.find(is_broadcast("dbb", topic)))
            assert got == list(range(5)), f"{peer.name}: every database broadcast once: {got}"
    finally:
        for pgs in pg_nodes:
            pgs.stop()
        await apsql(url, f"DROP TABLE IF EXISTS public.{table}; DROP PUBLICATION IF EXISTS {publication};")
