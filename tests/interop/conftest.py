"""Fixtures for the interop suite (real server process + official clients as peers)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from interop_support import log_dir as _log_dir  # noqa: E402
from interop_support import (  # noqa: E402
    ANON_KEY,
    JsPeer,
    PyPeer,
    RawSocket,
    ServerProcess,
    mint_jwt,
)

DEFAULT_TEST_TIMEOUT = int(os.environ.get("INTEROP_TEST_TIMEOUT", "90"))


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


@pytest.fixture(scope="module")
def server(request):
    """One server per test module with the default test flags (small backoffs, big limits)."""
    srv = ServerProcess(log_dir=_log_dir(request)).start()
    yield srv
    alive = srv.alive()
    code = srv.stop()
    if not alive:
        pytest.fail(f"server died during {request.node.name} (exit {code}):\n{srv.log_tail()}")


@pytest.fixture
def server_factory(request):
    """Start a dedicated server with extra flags: `server_factory({"--max-payload-size-kb": "1"})`."""
    started: list[ServerProcess] = []

    def make(flags: dict[str, str] | None = None) -> ServerProcess:
        srv = ServerProcess(flags, log_dir=_log_dir(request)).start()
        started.append(srv)
        return srv

    yield make
    dead = [s for s in started if not s.alive()]
    for s in started:
        s.stop()
    if dead:
        pytest.fail(f"server died during the test:\n{dead[0].log_tail()}")


@pytest.fixture(autouse=True)
def _server_still_up(request):
    """After every test that used the module server: it must still answer /api/ping."""
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").assert_alive()


@pytest_asyncio.fixture
async def js_factory(request):
    """Creates realtime-js peers: `await js_factory("alice", "2.0.0")` (not yet connected)."""
    peers: list[JsPeer] = []

    async def make(name: str, vsn: str = "2.0.0") -> JsPeer:
        peer = await JsPeer(name, vsn, log_dir=_log_dir(request)).start()
        peers.append(peer)
        return peer

    yield make
    for p in peers:
        await p.close()


@pytest_asyncio.fixture
async def py_factory():
    """Creates official Python clients (realtime.AsyncRealtimeClient wrappers)."""
    peers: list[PyPeer] = []

    def make(name: str = "py") -> PyPeer:
        p = PyPeer(name)
        peers.append(p)
        return p

    yield make
    for p in peers:
        await p.close()


@pytest_asyncio.fixture
async def raw_factory():
    """Opens raw WebSocket connections: `await raw_factory(server, "2.0.0")`."""
    socks: list[RawSocket] = []

    async def make(srv: ServerProcess, vsn: str = "2.0.0", apikey: str | None = ANON_KEY) -> RawSocket:
        s = await RawSocket.connect(srv, vsn=vsn, apikey=apikey)
        socks.append(s)
        return s

    yield make
    for s in socks:
        await s.close()


@pytest.fixture
def jwt_minter():
    return mint_jwt


@pytest_asyncio.fixture
async def js_v1(server, js_factory):
    """A realtime-js client speaking vsn 1.0.0, connected to the module server."""
    peer = await js_factory("js-v1", "1.0.0")
    await peer.connect(server)
    return peer


@pytest_asyncio.fixture
async def js_v2(server, js_factory):
    """A realtime-js client speaking vsn 2.0.0, connected to the module server."""
    peer = await js_factory("js-v2", "2.0.0")
    await peer.connect(server)
    return peer


@pytest_asyncio.fixture
async def py_client(server, py_factory):
    """The official Python client (realtime.AsyncRealtimeClient), connected to the module server."""
    return await py_factory("py").connect(server)
