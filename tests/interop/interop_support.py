"""Helpers for the interop suite: the server process, the realtime-js peer, the
official Python client, raw WebSocket/HTTP access and JWT minting.

Everything here talks to a real `supa-realtime-server` process over loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import websockets

REPO_ROOT = Path(__file__).resolve().parents[2]
INTEROP_DIR = REPO_ROOT / "interop"
PEER_SCRIPT = INTEROP_DIR / "peer.mjs"

JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
ANON_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24i"
    "LCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
)
SERVICE_ROLE_KEY = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZp"
    "Y2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
)

# Flags every test server gets unless a test overrides them: tiny error backoffs
# and generous limits, so only the tests about a limit ever hit it.
DEFAULT_SERVER_FLAGS: dict[str, str] = {
    "--channel-error-backoff-ms": "100",
    "--connect-error-backoff-ms": "100",
    "--max-events-per-second": "100000",
    "--max-joins-per-second": "100000",
    "--max-presence-events-per-second": "100000",
    "--client-presence-max-calls": "1000",
    "--max-concurrent-users": "10000",
}


def unique_topic(prefix: str = "room") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------------------------
# JWT


def mint_jwt(
    *,
    secret: str = JWT_SECRET,
    role: str | None = "anon",
    exp_in: float | None = 3600,
    exp: float | None = None,
    algorithm: str = "HS256",
    **claims: Any,
) -> str:
    """HS256 token. `exp_in` seconds from now (negative = already expired);
    `exp_in=None` and `exp=None` leave `exp` out; `role=None` leaves `role` out."""
    body: dict[str, Any] = {"iss": "interop-tests", "iat": int(time.time()) - 5}
    if role is not None:
        body["role"] = role
    if exp is not None:
        body["exp"] = int(exp)
    elif exp_in is not None:
        body["exp"] = int(time.time() + exp_in)
    body.update(claims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short HMAC keys for HS384/HS512 are intended here
        return pyjwt.encode(body, secret, algorithm=algorithm)


# ---------------------------------------------------------------------------------------------
# Server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> Path:
    env = os.environ.get("REALTIME_SERVER_BIN")
    if env:
        return Path(env)
    target = os.environ.get("CARGO_TARGET_DIR")
    target_dir = Path(target) if target else REPO_ROOT / "target"
    if not target_dir.is_absolute():
        target_dir = REPO_ROOT / target_dir
    return target_dir / "debug" / "supa-realtime-server"


class ServerProcess:
    def __init__(self, flags: dict[str, str] | None = None, log_dir: Path | None = None):
        merged = dict(DEFAULT_SERVER_FLAGS)
        merged.update(flags or {})
        self.flags = merged
        self.port = free_port()
        self.binary = server_binary()
        self.log_dir = log_dir or Path(os.environ.get("INTEROP_LOG_DIR", "/tmp/interop-logs"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"server-{self.port}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}"

    @property
    def realtime_http(self) -> str:
        """Project-style base URL the clients append `/websocket` or `/api/...` to."""
        return f"http://{self.host}/realtime/v1"

    @property
    def realtime_ws(self) -> str:
        return f"ws://{self.host}/realtime/v1"

    def ws_url(self, *, apikey: str | None = ANON_KEY, vsn: str | None = "1.0.0",
               path: str = "/realtime/v1/websocket", extra: str = "") -> str:
        params = []
        if apikey is not None:
            params.append(f"apikey={apikey}")
        if vsn is not None:
            params.append(f"vsn={vsn}")
        if extra:
            params.append(extra)
        query = ("?" + "&".join(params)) if params else ""
        return f"ws://{self.host}{path}{query}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        if not self.binary.exists():
            raise RuntimeError(
                f"server binary {self.binary} does not exist: build it with "
                "`cargo build -p supa-realtime-server` or set REALTIME_SERVER_BIN"
            )
        args = [str(self.binary), "serve", "--addr", self.host]
        for k, v in self.flags.items():
            args += [k, v]
        env = dict(os.environ)
        env.setdefault("LOG_LEVEL", "info")
        env.setdefault("NO_COLOR", "1")
        env.pop("DATABASE_URL", None) if "--database-url" not in self.flags else None
        env.pop("REDIS_URL", None) if "--redis-url" not in self.flags else None
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode} during startup:\n{self.log_tail()}"
                )
            try:
                r = httpx.get(f"{self.http_url}/api/ping", timeout=1.0)
                if r.status_code == 200:
                    return self
                last_err = RuntimeError(f"/api/ping answered {r.status_code}: {r.text}")
            except httpx.HTTPError as e:
                last_err = e
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become ready in {timeout}s ({last_err}):\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self) -> None:
        if not self.alive():
            code = self.proc.returncode if self.proc else None
            raise AssertionError(f"server process died (exit {code}):\n{self.log_tail()}")
        r = httpx.get(f"{self.http_url}/api/ping", timeout=5.0)
        assert r.status_code == 200, f"/api/ping answered {r.status_code}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self._log.close()
        return self.proc.returncode


# ---------------------------------------------------------------------------------------------
# Event collection shared by the JS peer and the Python client wrapper


class EventLog:
    """Append-only list of event dicts with async waiting."""

    def __init__(self, name: str):
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._cond = asyncio.Condition()

    def mark(self) -> int:
        return len(self.events)

    async def push(self, ev: dict[str, Any]) -> None:
        async with self._cond:
            self.events.append(ev)
            self._cond.notify_all()

    def push_nowait(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        loop = asyncio.get_running_loop()
        loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def find(self, pred: Callable[[dict[str, Any]], bool], start: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events[start:] if _safe(pred, e)]

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 10.0, start: int = 0,
        what: str = "event",
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._cond:
            while True:
                for e in self.events[start:]:
                    if _safe(pred, e):
                        return e
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    recent = json.dumps(self.events[start:][-15:], default=str)[:4000]
                    raise AssertionError(
                        f"[{self.name}] timed out after {timeout}s waiting for {what}; "
                        f"events since mark: {recent}"
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._cond.wait(), remaining)

    async def assert_none(
        self, pred: Callable[[dict[str, Any]], bool], duration: float = 1.0, start: int = 0,
        what: str = "event",
    ) -> None:
        await asyncio.sleep(duration)
        found = self.find(pred, start)
        assert not found, f"[{self.name}] unexpected {what}: {json.dumps(found, default=str)[:2000]}"


def _safe(pred: Callable[[dict[str, Any]], bool], e: dict[str, Any]) -> bool:
    try:
        return bool(pred(e))
    except (KeyError, TypeError, IndexError, AttributeError):
        return False


def is_broadcast(event: str | None = None, topic: str | None = None) -> Callable[[dict], bool]:
    def pred(e: dict) -> bool:
        if e.get("type") != "broadcast":
            return False
        if topic is not None and e.get("topic") != topic:
            return False
        return event is None or e.get("event") == event

    return pred


def is_status(status: str, topic: str | None = None) -> Callable[[dict], bool]:
    return lambda e: e.get("type") == "status" and e.get("status") == status and (
        topic is None or e.get("topic") == topic
    )


# ---------------------------------------------------------------------------------------------
# realtime-js peer (interop/peer.mjs)


class PeerError(Exception):
    pass


class JsPeer:
    """One Node process running one realtime-js RealtimeClient."""

    def __init__(self, name: str, vsn: str, log_dir: Path | None = None):
        self.name = name
        self.vsn = vsn
        self.log = EventLog(name)
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        log_dir = log_dir or Path(os.environ.get("INTEROP_LOG_DIR", "/tmp/interop-logs"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"peer-{name}-{uuid.uuid4().hex[:6]}.stderr"

    async def start(self) -> JsPeer:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed")
        if not (INTEROP_DIR / "node_modules" / "@supabase" / "realtime-js").exists():
            raise RuntimeError("interop/node_modules is missing: run `npm ci` in interop/")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = await asyncio.create_subprocess_exec(
            node, str(PEER_SCRIPT), cwd=str(INTEROP_DIR),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._stderr,
            limit=64 * 1024 * 1024,
        )
        self._reader = asyncio.create_task(self._read_loop())
        await self.log.wait_for(lambda e: e["type"] == "ready", 20, what="peer ready")
        return self

    async def _read_loop(self) -> None:
        assert self.proc and self.proc.stdout
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.log.push({"type": "exited"})
                for fut in self._pending.values():
                    if not fut.done():
                        fut.set_exception(PeerError(f"{self.name}: peer process exited"))
                return
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                ev = {"type": "garbage", "line": line.decode(errors="replace")}
            ev["_t"] = time.monotonic()
            if ev.get("type") == "result" and ev.get("id") in self._pending:
                fut = self._pending.pop(ev["id"])
                if not fut.done():
                    fut.set_result(ev)
            await self.log.push(ev)

    async def cmd(self, cmd: str, timeout: float = 30.0, check: bool = True, **kw: Any) -> Any:
        if self.proc is None or self.proc.stdin is None or self.proc.returncode is not None:
            raise PeerError(f"{self.name}: peer is not running")
        self._next_id += 1
        cid = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        self.proc.stdin.write((json.dumps({"id": cid, "cmd": cmd, **kw}) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            res = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self._pending.pop(cid, None)
            raise PeerError(f"{self.name}: command {cmd} got no result in {timeout}s") from None
        if check and not res.get("ok"):
            raise PeerError(f"{self.name}: command {cmd} failed: {res.get('error')}")
        return res.get("result") if check else res

    # conveniences ------------------------------------------------------------------------

    async def connect(self, server: ServerProcess, apikey: str = ANON_KEY, **kw: Any) -> Any:
        return await self.cmd("connect", url=server.realtime_ws, apikey=apikey, vsn=self.vsn, **kw)

    async def join(
        self, topic: str, config: dict | None = None, *, broadcast: str | None = "*",
        presence: bool = False, system: bool = False, wait: bool = True,
        timeout: float = 15.0,
    ) -> dict:
        mark = self.log.mark()
        await self.cmd("channel", topic=topic, config=config or {})
        if broadcast is not None:
            await self.cmd("on_broadcast", topic=topic, event=broadcast)
        if presence:
            await self.cmd("on_presence", topic=topic)
        if system:
            await self.cmd("on_system", topic=topic)
        await self.cmd("subscribe", topic=topic)
        if not wait:
            return {}
        return await self.log.wait_for(
            lambda e: e["type"] == "status" and e["topic"] == topic,
            timeout, start=mark, what=f"subscribe status on {topic}",
        )

    async def joined(self, topic: str, config: dict | None = None, **kw: Any) -> None:
        ev = await self.join(topic, config, **kw)
        assert ev["status"] == "SUBSCRIBED", f"{self.name}: join {topic} -> {ev}"

    async def send(self, topic: str, event: str, payload: Any, **kw: Any) -> Any:
        return await self.cmd("send", topic=topic, event=event, payload=payload, **kw)

    async def kill(self) -> None:
        """SIGKILL the node process: its TCP connection dies without a close frame."""
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def close(self) -> None:
        if self.proc and self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        with contextlib.suppress(Exception):
            self._stderr.close()


# ---------------------------------------------------------------------------------------------
# Official Python client (`realtime` on PyPI)


class PyPeer:
    """Wraps realtime.AsyncRealtimeClient and records what it sees in an EventLog."""

    def __init__(self, name: str = "py"):
        self.name = name
        self.log = EventLog(name)
        self.client = None
        self.channels: dict[str, Any] = {}

    async def connect(self, server: ServerProcess, apikey: str = ANON_KEY, **kw: Any) -> PyPeer:
        from realtime import AsyncRealtimeClient

        kw.setdefault("auto_reconnect", False)
        kw.setdefault("max_retries", 1)
        self.client = AsyncRealtimeClient(server.realtime_http, apikey, **kw)
        await self.client.connect()
        return self

    def channel(self, topic: str, config: dict | None = None):
        params = None
        if config is not None:
            # Fill in what the Python client's own default config has, as users do.
            full = {"broadcast": {"ack": False, "self": False},
                    "presence": {"key": "", "enabled": False}, "private": False}
            for k, v in config.items():
                full[k] = {**full[k], **v} if isinstance(full.get(k), dict) and isinstance(v, dict) else v
            params = {"config": full}
        ch = self.client.channel(topic, params)
        self.channels[topic] = ch
        return ch

    def on_broadcast(self, topic: str, event: str) -> None:
        ch = self.channels[topic]

        def cb(payload: dict) -> None:
            self.log.push_nowait({"type": "broadcast", "topic": topic,
                                  "event": payload.get("event"), "payload": dict(payload)})

        ch.on_broadcast(event, cb)

    def on_presence(self, topic: str) -> None:
        ch = self.channels[topic]

        def state() -> dict:
            return json.loads(json.dumps(ch.presence_state(), default=str))

        ch.on_presence_sync(lambda: self.log.push_nowait(
            {"type": "presence", "topic": topic, "event": "sync", "state": state()}))
        ch.on_presence_join(lambda key, cur, new: self.log.push_nowait(
            {"type": "presence", "topic": topic, "event": "join", "key": key,
             "current": list(cur), "new": list(new), "state": state()}))
        ch.on_presence_leave(lambda key, cur, left: self.log.push_nowait(
            {"type": "presence", "topic": topic, "event": "leave", "key": key,
             "current": list(cur), "left": list(left), "state": state()}))

    def on_system(self, topic: str) -> None:
        ch = self.channels[topic]
        ch.on_system(lambda p: self.log.push_nowait(
            {"type": "system", "topic": topic, "payload": json.loads(json.dumps(p, default=str))}))

    async def join(self, topic: str, config: dict | None = None, *, events: list[str] | None = None,
                   presence: bool = False, timeout: float = 15.0) -> dict:
        """Subscribe and wait for the subscribe callback. `events`: broadcast events to listen to
        (Python has no wildcard)."""
        ch = self.channel(topic, config)
        for ev in events or []:
            self.on_broadcast(topic, ev)
        if presence:
            self.on_presence(topic)
        mark = self.log.mark()

        def status_cb(status, err) -> None:
            self.log.push_nowait({"type": "status", "topic": topic, "status": str(getattr(status, "value", status)),
                                  "error": None if err is None else str(err)})

        await asyncio.wait_for(ch.subscribe(status_cb), timeout)
        return await self.log.wait_for(lambda e: e["type"] == "status" and e["topic"] == topic,
                                       timeout, start=mark, what=f"status on {topic}")

    async def joined(self, topic: str, config: dict | None = None, **kw: Any) -> None:
        ev = await self.join(topic, config, **kw)
        assert ev["status"] == "SUBSCRIBED", f"{self.name}: join {topic} -> {ev}"

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 5)


# ---------------------------------------------------------------------------------------------
# Raw WebSocket


class RawSocket:
    """Byte-level client. `vsn` selects V1 objects or V2 arrays for `push`; `recv` normalises
    both to dicts {join_ref, ref, topic, event, payload, raw}; binary frames come back as
    {"binary": bytes}."""

    def __init__(self, ws, vsn: str):
        self.ws = ws
        self.vsn = vsn
        self.ref = 0
        self.backlog: list[dict] = []

    @classmethod
    async def connect(cls, server: ServerProcess, vsn: str = "2.0.0", apikey: str | None = ANON_KEY,
                      **kw: Any) -> RawSocket:
        ws = await websockets.connect(server.ws_url(apikey=apikey, vsn=vsn), max_size=None,
                                      open_timeout=10, ping_interval=None, **kw)
        return cls(ws, vsn)

    def next_ref(self) -> str:
        self.ref += 1
        return str(self.ref)

    def encode(self, join_ref: str | None, ref: str | None, topic: str, event: str, payload: Any) -> str:
        if self.vsn.startswith("2"):
            return json.dumps([join_ref, ref, topic, event, payload])
        msg = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        if join_ref is not None:
            msg["join_ref"] = join_ref
        return json.dumps(msg)

    async def push(self, topic: str, event: str, payload: Any, *, join_ref: str | None = None,
                   ref: str | None = "auto") -> str | None:
        if ref == "auto":
            ref = self.next_ref()
        await self.ws.send(self.encode(join_ref, ref, topic, event, payload))
        return ref

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    @staticmethod
    def decode(frame: str | bytes) -> dict:
        if isinstance(frame, bytes):
            return {"binary": frame}
        data = json.loads(frame)
        if isinstance(data, list):
            jr, ref, topic, event, payload = data[:5]
            return {"join_ref": jr, "ref": ref, "topic": topic, "event": event, "payload": payload,
                    "raw": data}
        return {"join_ref": data.get("join_ref"), "ref": data.get("ref"), "topic": data.get("topic"),
                "event": data.get("event"), "payload": data.get("payload"), "raw": data}

    async def recv(self, timeout: float = 10.0) -> dict:
        if self.backlog:
            return self.backlog.pop(0)
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        return self.decode(frame)

    async def recv_until(self, pred: Callable[[dict], bool], timeout: float = 10.0,
                         what: str = "frame") -> dict:
        """Returns the first matching frame; frames skipped on the way stay in the backlog."""
        for i, m in enumerate(self.backlog):
            if _safe(pred, m):
                return self.backlog.pop(i)
        deadline = asyncio.get_running_loop().time() + timeout
        seen: list[dict] = []
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {_short(seen)}")
            try:
                frame = await asyncio.wait_for(self.ws.recv(), remaining)
            except asyncio.TimeoutError:
                raise AssertionError(f"timed out waiting for {what}; got {_short(seen)}") from None
            m = self.decode(frame)
            if _safe(pred, m):
                self.backlog.extend(seen)
                return m
            seen.append(m)

    async def join(self, topic: str, payload: dict | None = None, *, expect_ok: bool = True,
                   timeout: float = 10.0) -> tuple[str, dict]:
        ref = self.next_ref()
        if payload is None:
            payload = {"config": {"broadcast": {"ack": False, "self": False},
                                  "presence": {"key": "", "enabled": False},
                                  "postgres_changes": [], "private": False}}
        await self.push(topic, "phx_join", payload, join_ref=ref, ref=ref)
        reply = await self.recv_until(
            lambda m: m.get("event") == "phx_reply" and m.get("ref") == ref, timeout,
            what=f"join reply for {topic}")
        if expect_ok:
            assert reply["payload"]["status"] == "ok", f"join {topic} failed: {reply}"
        return ref, reply

    async def heartbeat(self, timeout: float = 5.0) -> dict:
        ref = await self.push("phoenix", "heartbeat", {})
        return await self.recv_until(
            lambda m: m.get("topic") == "phoenix" and m.get("ref") == ref, timeout,
            what=f"heartbeat reply ref {ref}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 3)


def _short(frames: list[dict]) -> str:
    out = []
    for f in frames[-10:]:
        if "binary" in f:
            out.append({"binary": f["binary"][:64].hex()})
        else:
            out.append(f.get("raw"))
    return json.dumps(out, default=str)[:3000]


# ---------------------------------------------------------------------------------------------
# Raw HTTP upgrade (for handshake status codes and bodies)


async def raw_upgrade(server: ServerProcess, path_and_query: str, headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Sends a WebSocket upgrade request by hand and returns (status, headers, body) of the
    response. For a 101 the body is empty and the connection is dropped."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server.port), timeout)
    try:
        lines = [
            f"GET {path_and_query} HTTP/1.1",
            f"Host: {server.host}",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ")[1])
        hdrs: dict[str, str] = {}
        for h in header_lines:
            if ":" in h:
                k, v = h.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        body = b""
        if status != 101:
            if "content-length" in hdrs:
                n = int(hdrs["content-length"])
                body = await asyncio.wait_for(reader.readexactly(n), timeout) if n else b""
            elif hdrs.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader, timeout)
            else:
                body = await asyncio.wait_for(reader.read(), timeout)
        return status, hdrs, body
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader, timeout: float) -> bytes:
    body = b""
    while True:
        size_line = await asyncio.wait_for(reader.readline(), timeout)
        size = int(size_line.strip().split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return body
        body += await asyncio.wait_for(reader.readexactly(size), timeout)
        await reader.readline()


# ---------------------------------------------------------------------------------------------
# V2 binary frames (PROTOCOL.md §2.3)


def encode_user_broadcast_push(join_ref: str, ref: str, topic: str, event: str, payload: bytes,
                               *, json_encoding: bool = True, metadata: bytes = b"") -> bytes:
    jr, rf, tp, ev = (s.encode() for s in (join_ref, ref, topic, event))
    header = bytes([3, len(jr), len(rf), len(tp), len(ev), len(metadata), 1 if json_encoding else 0])
    return header + jr + rf + tp + ev + metadata + payload


def decode_user_broadcast(frame: bytes) -> dict:
    """Kind 4 (server -> client user broadcast)."""
    assert frame[0] == 4, f"expected kind 4, got kind {frame[0]}: {frame[:64].hex()}"
    tl, el, ml, enc = frame[1], frame[2], frame[3], frame[4]
    off = 5
    topic = frame[off:off + tl].decode()
    off += tl
    event = frame[off:off + el].decode()
    off += el
    meta = frame[off:off + ml]
    off += ml
    return {"topic": topic, "event": event, "metadata": meta, "encoding": enc, "payload": frame[off:]}


def log_dir(request) -> Path:
    """Where a test's server and peer logs go (INTEROP_LOG_DIR, else /tmp/interop-logs)."""
    base = Path(os.environ.get("INTEROP_LOG_DIR", "/tmp/interop-logs"))
    d = base / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")[:80]
    d.mkdir(parents=True, exist_ok=True)
    return d
