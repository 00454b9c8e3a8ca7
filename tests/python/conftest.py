"""Fixtures for the supa_realtime (Python package) suite: a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

ANON_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9"
    ".CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
)
SERVICE_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0"
    ".EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
)
JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    here = Path(__file__).resolve().parent
    for item in items:
        if here in Path(str(item.fspath)).resolve().parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(90))


def server_binary() -> Path:
    env = os.environ.get("REALTIME_SERVER_BIN")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path(__file__).resolve().parents[2] / "target")
    return Path(target) / "debug" / "supa-realtime-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A supa-realtime-server process on a free port."""

    def __init__(self, extra: Optional[Dict[str, str]] = None) -> None:
        self.port = free_port()
        self.flags = {
            "--channel-error-backoff-ms": "100",
            "--connect-error-backoff-ms": "100",
            "--max-events-per-second": "100000",
            "--max-joins-per-second": "10000",
        }
        self.flags.update(extra or {})
        self.log = tempfile.NamedTemporaryFile(prefix=f"pyrealtime-server-{self.port}-", suffix=".log", delete=False)
        self.proc: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    @property
    def url(self) -> str:
        """Project-style URL (the package appends /realtime/v1/websocket)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """Realtime ws URL as the official client wants it."""
        return f"ws://127.0.0.1:{self.port}/realtime/v1"

    def start(self) -> "Server":
        binary = server_binary()
        if not binary.exists():
            pytest.skip(f"server binary {binary} missing: cargo build -p supa-realtime-server or set REALTIME_SERVER_BIN")
        args = [str(binary), "serve", "--addr", f"127.0.0.1:{self.port}"]
        for k, v in self.flags.items():
            args += [k, v]
        env = dict(os.environ)
        if "--database-url" not in self.flags:
            env.pop("DATABASE_URL", None)
        if "--redis-url" not in self.flags:
            env.pop("REDIS_URL", None)
        env.setdefault("LOG_LEVEL", "info")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/ping", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not answer /api/ping: {self.tail()}")

    def tail(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Server]:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("postgres_changes tests need a database: set DATABASE_URL (scripts/postgres.sh prints it)")
    srv = Server({"--database-url": url}).start()
    yield srv
    srv.stop()


@pytest.fixture
def clients() -> Iterator[List[object]]:
    """Collects clients a test creates; closes them afterwards."""
    made: List[object] = []
    yield made
    for c in made:
        try:
            close = getattr(c, "close")
            r = close()
            if hasattr(r, "__await__"):
                pass  # async clients are closed by their tests
        except Exception:
            pass


def wait_for(pred: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


async def await_for(pred: Callable[[], object], timeout: float = 5.0, interval: float = 0.02) -> bool:
    import asyncio

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(interval)
    return bool(pred())


def mint_jwt(claims: Dict[str, object], secret: str = JWT_SECRET) -> str:
    import jwt

    return str(jwt.encode(claims, secret, algorithm="HS256"))
