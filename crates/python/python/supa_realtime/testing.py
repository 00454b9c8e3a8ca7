"""A real realtime server for tests, without Docker.

:func:`start_server` runs the server that ships in this wheel (``python -m
supa_realtime.server``) as a child process on a free port and returns a
:class:`RealtimeServer` with its project URL and API keys, once it answers. In memory by
default; give ``database_url`` (a PostgreSQL with ``wal_level=logical``) for
postgres_changes and private channels authorized by RLS. The pytest plugin's
``realtime_server`` fixture is built on it; use this module directly elsewhere::

    from supa_realtime.testing import start_server

    with start_server() as server:
        supabase = create_client(server.url, server.anon_key)

The server is started with test-friendly limits (joins and events per second raised, error
backoffs of 100 ms); pass ``extra_args`` to change any flag of ``supa-realtime-server serve``.
Keys are JWTs signed with ``jwt_secret`` (the Supabase CLI's local secret by default, so the
CLI's demo keys work too); :meth:`RealtimeServer.token` mints more, e.g. a user's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional, Sequence

#: The Supabase CLI's local JWT secret.
DEFAULT_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"

_TEST_FLAGS = {
    "--max-joins-per-second": "10000",
    "--max-events-per-second": "100000",
    "--channel-error-backoff-ms": "100",
    "--connect-error-backoff-ms": "100",
}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_jwt(claims: Mapping[str, Any], secret: str = DEFAULT_JWT_SECRET) -> str:
    """An HS256 JWT of ``claims`` signed with ``secret`` (what GoTrue issues, for tests)."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64url(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    signature = _b64url(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return f"{header}.{body}.{signature}"


class ServerError(RuntimeError):
    """The server did not start (its log's tail is in the message)."""


@dataclass
class RealtimeServer:
    """A running server: ``url`` is the project URL to give ``create_client`` (realtime at
    ``<url>/realtime/v1``), ``realtime_url`` the WebSocket endpoint for the realtime-only
    clients."""

    port: int
    jwt_secret: str
    anon_key: str
    service_role_key: str
    database_url: Optional[str]
    log_path: Path
    _proc: "subprocess.Popen[bytes]" = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def realtime_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1"

    def token(self, role: str = "authenticated", sub: Optional[str] = None, expires_in: int = 3600,
              **claims: Any) -> str:
        """A JWT signed with the server's secret: ``role``, ``sub`` (user id), ``exp`` in
        ``expires_in`` seconds (negative: already expired), plus any other ``claims``."""
        now = int(time.time())
        body: Dict[str, Any] = {"role": role, "iat": now, "exp": now + expires_in, **claims}
        if sub is not None:
            body["sub"] = sub
        return mint_jwt(body, self.jwt_secret)

    def log(self) -> str:
        """What the server logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM: it closes its sockets; killed after ``timeout`` s)."""
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> "RealtimeServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(proc: "subprocess.Popen[bytes]", port: int, log: IO[bytes], deadline: float) -> bool:
    """True once /api/ping answers; False if the process exited first."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/ping", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.01)
    raise ServerError(f"the server did not answer within the timeout; log:\n{_tail(log)}")


def _wait_database(server: RealtimeServer, deadline: float) -> None:
    """Until /api/health says the database side is ready: migrated (private channels),
    database broadcast and postgres_changes streaming. Joins before that are refused."""
    health: Any = None
    while time.monotonic() < deadline and server.running:
        try:
            with urllib.request.urlopen(f"{server.url}/api/health", timeout=2) as r:
                health = json.loads(r.read())
            db = health.get("database") or {}
            pc = health.get("postgres_changes") or {}
            if db.get("ready") is True and db.get("broadcast_streaming") is True and pc.get("state") == "streaming":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise ServerError(f"the database side of the server is not ready: {health}; log:\n{server.log()[-3000:]}")


def _tail(log: IO[bytes]) -> str:
    try:
        return Path(log.name).read_text(errors="replace")[-3000:]
    except OSError:
        return ""


def start_server(database_url: Optional[str] = None, *, jwt_secret: str = DEFAULT_JWT_SECRET,
                 extra_args: Sequence[str] = (), timeout: float = 30.0,
                 env: Optional[Mapping[str, str]] = None) -> RealtimeServer:
    """Start a server on a free port and wait until it answers (see the module doc)."""
    now = int(time.time())
    far = now + 10 * 365 * 24 * 3600
    anon = mint_jwt({"iss": "supabase-demo", "role": "anon", "iat": now, "exp": far}, jwt_secret)
    service = mint_jwt({"iss": "supabase-demo", "role": "service_role", "iat": now, "exp": far}, jwt_secret)
    child_env = dict(os.environ if env is None else env)
    # Only what is passed here configures it: a DATABASE_URL (or REDIS_URL) of the test
    # environment must not turn the in-memory default into a database server (or a cluster node).
    for var in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "REALTIME_ADDR"):
        child_env.pop(var, None)
    attempts = 3  # another process may take the free port between the probe and the bind
    for attempt in range(attempts):
        port = _free_port()
        args: List[str] = [sys.executable, "-m", "supa_realtime.server", "serve",
                           "--addr", f"127.0.0.1:{port}", "--jwt-secret", jwt_secret]
        flags = dict(_TEST_FLAGS)
        for k in list(flags):
            if k in extra_args:
                del flags[k]
        for k, v in flags.items():
            args += [k, v]
        if database_url:
            args += ["--database-url", database_url]
        args += list(extra_args)
        log = tempfile.NamedTemporaryFile(prefix=f"supa-realtime-server-{port}-", suffix=".log", delete=False)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=child_env)
        deadline = time.monotonic() + timeout
        if _wait_ready(proc, port, log, deadline):
            server = RealtimeServer(port, jwt_secret, anon, service, database_url, Path(log.name), proc)
            if database_url:
                try:
                    _wait_database(server, deadline)
                except BaseException:
                    server.stop()
                    raise
            return server
        if attempt == attempts - 1 or "in use" not in _tail(log).lower():
            raise ServerError(f"the server exited with status {proc.returncode}; log:\n{_tail(log)}")
    raise AssertionError("unreachable")


__all__ = ["DEFAULT_JWT_SECRET", "RealtimeServer", "ServerError", "mint_jwt", "start_server"]
