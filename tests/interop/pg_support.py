"""Database fixtures for the interop tests that need PostgreSQL (postgres_changes, private
channels): the database URL, SQL through `psql`, and a server process started on the database
with a replication slot and publication of its own, dropped again when the module ends.

The database is `DATABASE_URL`, else the one `scripts/postgres.sh start` prints (PostgreSQL 15 +
wal2json on 127.0.0.1:54329). Without one the tests skip, unless `REQUIRE_POSTGRES=1`.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import time
import uuid
from typing import Any

import httpx
import pytest

from interop_support import REPO_ROOT, ServerProcess, mint_jwt

_URL: str | None = None
_URL_TRIED = False


def database_url() -> str | None:
    global _URL, _URL_TRIED
    if _URL_TRIED:
        return _URL
    _URL_TRIED = True
    url = os.environ.get("DATABASE_URL")
    if not url:
        try:
            out = subprocess.run(
                ["bash", str(REPO_ROOT / "scripts" / "postgres.sh"), "start"],
                capture_output=True, text=True, timeout=600,
            )
            last = (out.stdout.strip().splitlines() or [""])[-1]
            if out.returncode == 0 and last.startswith("DATABASE_URL="):
                url = last.split("=", 1)[1]
        except (OSError, subprocess.SubprocessError):
            url = None
    _URL = url or None
    return _URL


def require_database() -> str:
    url = database_url()
    if url is None:
        msg = "no PostgreSQL: set DATABASE_URL or make scripts/postgres.sh work"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return url


def _psql_binary() -> str:
    found = shutil.which("psql")
    if found:
        return found
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True):
        return cand
    raise RuntimeError("psql is not installed")


def psql(url: str, sql: str, timeout: float = 60.0) -> list[list[str]]:
    """Runs SQL (several statements allowed) in one session; returns the rows of the output
    (unaligned, tab separated). Raises on any SQL error."""
    out = subprocess.run(
        [_psql_binary(), "-X", "-q", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-"],
        input=sql, capture_output=True, text=True, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"psql failed ({out.returncode}): {out.stderr.strip()}\nSQL: {sql[:500]}")
    return [line.split("\t") for line in out.stdout.splitlines() if line != ""]


async def apsql(url: str, sql: str, timeout: float = 60.0) -> list[list[str]]:
    return await asyncio.to_thread(psql, url, sql, timeout)


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def user_jwt(sub: str, role: str = "authenticated", exp_in: float = 3600, **claims: Any) -> str:
    return mint_jwt(role=role, sub=sub, exp_in=exp_in, **claims)


def new_uuid() -> str:
    return str(uuid.uuid4())


class PgServer:
    """A server process on the database with its own slot and publication."""

    def __init__(self, url: str, prefix: str, log_dir, flags: dict[str, str] | None = None):
        self.url = url
        tag = f"{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.slot = f"{prefix}_{tag}"
        self.publication = f"{prefix}_pub_{tag}"
        all_flags = {"--database-url": url, "--slot-name": self.slot, "--publication": self.publication}
        all_flags.update(flags or {})
        self.proc = ServerProcess(all_flags, log_dir=log_dir)

    def start(self, timeout: float = 60.0) -> ServerProcess:
        self.proc.start()
        deadline = time.monotonic() + timeout
        health: Any = None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{self.proc.http_url}/api/health", timeout=2.0).json()
                db = health.get("database") or {}
                pc = health.get("postgres_changes") or {}
                if db.get("ready") is True and db.get("broadcast_streaming") is True \
                        and pc.get("state") == "streaming":
                    return self.proc
            except (httpx.HTTPError, ValueError):
                pass
            if not self.proc.alive():
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"database side of the server not ready: {health}\n{self.proc.log_tail()}")

    def stop(self) -> int | None:
        code = self.proc.stop()
        # The postgres_changes slot is permanent: drop it (and the publication) now.
        subprocess.run(
            [str(self.proc.binary), "cleanup-postgres", "--database-url", self.url,
             "--slot-name", self.slot, "--publication", self.publication],
            capture_output=True, text=True, timeout=60,
        )
        try:
            psql(self.url, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           f"WHERE slot_name = {sql_literal(self.slot)} AND NOT active;")
        except RuntimeError:
            pass
        return code


def drop_stale_slots(url: str, prefix: str) -> None:
    """Slots of earlier, killed runs of this suite (inactive, same prefix) keep WAL forever."""
    try:
        psql(url, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                  f"WHERE NOT active AND slot_name LIKE {sql_literal(prefix + '_%')} "
                  f"AND slot_name NOT LIKE {sql_literal(prefix + '_' + str(os.getpid()) + '_%')};")
    except RuntimeError:
        pass
