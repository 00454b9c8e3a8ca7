"""Stand-ins for the Supabase services that cannot be installed here (PostgREST, GoTrue),
behind one project URL, as Supabase's API gateway puts them.

`Gateway` listens on one port and routes by path, as Kong does in a Supabase project:

* `/realtime/v1/...` -> the real realtime server (bytes spliced both ways, so the WebSocket
  upgrade and every frame are the server's own);
* `/rest/v1/<table>` -> a PostgREST stand-in: `GET` with `select=*` and `<col>=eq.<value>`
  filters, `POST` of a row or a list of rows (`Prefer: return=representation` answers with
  them), over an in-memory table. That is PostgREST's documented API for those calls, nothing
  more; each request's `Authorization` header is recorded.
* `/auth/v1/...` -> a GoTrue stand-in: `POST /token?grant_type=password` (a user of
  `users`, password checked) and `grant_type=refresh_token` answer a session whose
  `access_token` is an HS256 JWT (`sub`, `role: authenticated`, `email`, `exp`, `session_id`)
  signed with the realtime server's secret, as GoTrue signs with the project's JWT secret;
  `GET /user` and `POST /logout` (204) as documented.

Nothing else is served (404).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit

from supa_realtime.testing import mint_jwt


class Gateway:
    def __init__(self, realtime_port: int, jwt_secret: str) -> None:
        self.realtime_port = realtime_port
        self.jwt_secret = jwt_secret
        self.tables: Dict[str, List[Dict[str, Any]]] = {}
        self.users: Dict[str, Dict[str, Any]] = {}  # email -> {"id", "password"}
        self.refresh_tokens: Dict[str, str] = {}  # refresh token -> email
        self.rest_auth_headers: List[str] = []
        # WebSocket upgrades to realtime (REST calls through /realtime/v1 are not sockets).
        self.realtime_connections = 0
        self.realtime_rest_calls = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "Gateway":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("gateway did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_user(self, email: str, password: str) -> str:
        uid = str(uuid.uuid4())
        self.users[email] = {"id": uid, "password": password}
        return uid

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._conn, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Stopped: close the listener and every connection before the loop goes.
        server.close()
        tasks = asyncio.all_tasks(self._loop)
        for t in tasks:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    # -- HTTP ------------------------------------------------------------------------------------
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = line.split(" ", 2)
                if target.startswith("/realtime/"):
                    await self._splice(head, reader, writer)
                    return
                headers = {k.strip().lower(): v.strip() for k, v in
                           (h.split(":", 1) for h in header_lines if ":" in h)}
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, payload = self._handle(method, target, headers, body)
                data = b"" if payload is None else json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(data)}\r\n\r\n".encode() + data
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _splice(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if b"\r\nupgrade: websocket" in head.lower():
            self.realtime_connections += 1
        else:
            self.realtime_rest_calls += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.realtime_port)
        up_writer.write(head)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def _handle(self, method: str, target: str, headers: Dict[str, str], body: bytes) -> Tuple[int, Any]:
        parts = urlsplit(target)
        query = parse_qsl(parts.query)
        if parts.path.startswith("/rest/v1/"):
            self.rest_auth_headers.append(headers.get("authorization", ""))
            return self._rest(method, parts.path[len("/rest/v1/"):], query, headers, body)
        if parts.path.startswith("/auth/v1/"):
            return self._auth(method, parts.path[len("/auth/v1/"):], dict(query), headers, body)
        return 404, {"message": "not found"}

    # -- PostgREST -------------------------------------------------------------------------------
    def _rest(self, method: str, table: str, query: List[Tuple[str, str]], headers: Dict[str, str],
              body: bytes) -> Tuple[int, Any]:
        rows = self.tables.setdefault(table, [])
        if method == "GET":
            out = rows
            for col, cond in query:
                if col == "select":
                    continue
                op, _, value = cond.partition(".")
                if op != "eq":
                    return 400, {"message": f"operator {op} is not in this stand-in"}
                out = [r for r in out if str(r.get(col)) == value]
            return 200, out
        if method == "POST":
            new = json.loads(body or b"null")
            new = new if isinstance(new, list) else [new]
            for r in new:
                r.setdefault("id", len(rows) + 1)
                rows.append(r)
            return (201, new) if "return=representation" in headers.get("prefer", "") else (201, None)
        return 405, {"message": f"{method} is not in this stand-in"}

    # -- GoTrue ----------------------------------------------------------------------------------
    def _session(self, email: str) -> Dict[str, Any]:
        user = self.users[email]
        now = int(time.time())
        access = mint_jwt({"sub": user["id"], "role": "authenticated", "aud": "authenticated", "email": email,
                           "iat": now, "exp": now + 3600, "session_id": str(uuid.uuid4())}, self.jwt_secret)
        refresh = uuid.uuid4().hex
        self.refresh_tokens[refresh] = email
        return {"access_token": access, "token_type": "bearer", "expires_in": 3600, "expires_at": now + 3600,
                "refresh_token": refresh, "user": self._user(email)}

    def _user(self, email: str) -> Dict[str, Any]:
        return {"id": self.users[email]["id"], "aud": "authenticated", "role": "authenticated", "email": email,
                "app_metadata": {"provider": "email"}, "user_metadata": {}, "created_at": "2026-01-01T00:00:00Z"}

    def _auth(self, method: str, path: str, query: Dict[str, str], headers: Dict[str, str],
              body: bytes) -> Tuple[int, Any]:
        data = json.loads(body or b"{}")
        if method == "POST" and path == "token" and query.get("grant_type") == "password":
            user = self.users.get(data.get("email", ""))
            if user is None or user["password"] != data.get("password"):
                return 400, {"code": 400, "error_code": "invalid_credentials", "msg": "Invalid login credentials"}
            return 200, self._session(data["email"])
        if method == "POST" and path == "token" and query.get("grant_type") == "refresh_token":
            email = self.refresh_tokens.pop(data.get("refresh_token", ""), None)
            if email is None:
                return 400, {"code": 400, "error_code": "refresh_token_not_found", "msg": "Invalid Refresh Token"}
            return 200, self._session(email)
        if method == "GET" and path == "user":
            token = headers.get("authorization", "").removeprefix("Bearer ")
            email = next((e for e in self.users if e in _claims(token).get("email", "")), None)
            return (200, self._user(email)) if email else (401, {"msg": "invalid JWT"})
        if method == "POST" and path == "logout":
            return 204, None
        return 404, {"msg": f"{method} /{path} is not in this stand-in"}


def _claims(token: str) -> Dict[str, Any]:
    import base64

    try:
        body = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))
    except (IndexError, ValueError):
        return {}


def psql(url: str, sql: str) -> str:
    """Run SQL with psql (the server creates the realtime schema; policies are the test's)."""
    import glob
    import shutil
    import subprocess

    binary = shutil.which("psql") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)), None)
    if binary is None:
        raise RuntimeError("psql is not installed")
    out = subprocess.run([binary, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed: {out.stderr}")
    return out.stdout


__all__ = ["Gateway", "psql"]
