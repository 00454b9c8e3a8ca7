"""The spec's postgres_changes examples and the full RealtimeManager example, against a
server streaming changes from PostgreSQL. Needs DATABASE_URL (scripts/postgres.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any, Iterator, List

import pytest

from conftest import ANON_KEY, Server, wait_for
from support import Out
from supa_realtime import AsyncRealtimeClient, create_client

DDL = """
DROP PUBLICATION IF EXISTS pub_pyrt;
DROP TABLE IF EXISTS countries, users, messages;
CREATE TABLE countries (id int PRIMARY KEY, name text);
CREATE TABLE users (id int PRIMARY KEY, name text, status text);
CREATE TABLE messages (id int PRIMARY KEY, body text);
ALTER TABLE users REPLICA IDENTITY FULL;
GRANT SELECT ON countries, users, messages TO PUBLIC;
CREATE PUBLICATION pub_pyrt FOR TABLE countries, users, messages;
"""


def sql(statement: str) -> None:
    url = os.environ["DATABASE_URL"]
    r = subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-q", "-c", statement], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Server]:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("postgres_changes tests need a database: set DATABASE_URL (scripts/postgres.sh prints it)")
    if not shutil.which("psql"):
        pytest.skip("psql is needed to prepare the tables")
    sql("SELECT pg_drop_replication_slot('slot_pyrt') FROM pg_replication_slots WHERE slot_name = 'slot_pyrt';")
    sql(DDL)
    srv = Server({"--database-url": url, "--slot-name": "slot_pyrt", "--publication": "pub_pyrt"}).start()
    yield srv
    srv.stop()


@pytest.fixture
def supabase(pg_server: Server) -> Iterator[Any]:
    c = create_client(pg_server.url, ANON_KEY)
    yield c
    c.close()


def test_postgres_changes_examples(supabase: Any, capsys: Any) -> None:
    out = Out(capsys)
    # Subscribe to all changes in a table
    def handle_changes(payload):
        print(f"Change detected: {payload['eventType']}")
        print(f"Table: {payload['table']}")
        print(f"Data: {payload['new']}")
    channel = supabase.channel("table-changes")
    ready: List[Any] = []
    channel.on("system", {}, ready.append)  # the server says when the stream is ready
    channel.on(
    "postgres_changes",
    {
    "event": "*", # All events (INSERT, UPDATE, DELETE)
    "schema": "public", # Database schema
    "table": "countries" # Specific table
    },
    handle_changes
    )
    channel.subscribe()
    # Subscribe to specific event types
    def handle_inserts(payload):
        print(f"New record: {payload['new']}")
    def handle_updates(payload):
        print(f"Updated: {payload['old']} -> {payload['new']}")
    def handle_deletes(payload):
        print(f"Deleted: {payload['old']}")
    # Insert events
    supabase.channel("inserts").on(
    "postgres_changes",
    {"event": "INSERT", "schema": "public", "table": "users"},
    handle_inserts
    ).subscribe()
    # Update events
    supabase.channel("updates").on(
    "postgres_changes",
    {"event": "UPDATE", "schema": "public", "table": "users"},
    handle_updates
    ).subscribe()
    # Delete events
    supabase.channel("deletes").on(
    "postgres_changes",
    {"event": "DELETE", "schema": "public", "table": "users"},
    handle_deletes
    ).subscribe()
    # Filter by specific columns
    supabase.channel("user-status").on(
    "postgres_changes",
    {
    "event": "UPDATE",
    "schema": "public",
    "table": "users",
    "filter": "status=eq.active" # Only active users
    },
    lambda payload: print(f"Active user updated: {payload['new']['name']}")
    ).subscribe()

    assert wait_for(lambda: any(m["status"] == "ok" and m["extension"] == "postgres_changes" for m in ready), 15), ready
    time.sleep(0.5)
    sql("INSERT INTO countries VALUES (1, 'Norway'); UPDATE countries SET name = 'Sweden' WHERE id = 1;")
    out.wait("Change detected: INSERT")
    out.wait_line("Data: {", "'name': 'Norway'")
    out.wait("Change detected: UPDATE")
    out.wait("Table: countries")
    sql("INSERT INTO users VALUES (1, 'ann', 'idle'), (2, 'bob', 'idle');")
    out.wait_line("New record: {", "'name': 'ann'")
    sql("UPDATE users SET status = 'active' WHERE id = 1; UPDATE users SET status = 'away' WHERE id = 2;")
    out.wait_line("Updated: {", "'status': 'idle'", "-> {", "'status': 'active'")
    out.wait("Active user updated: ann")
    sql("DELETE FROM users WHERE id = 2;")
    out.wait_line("Deleted: {", "'id': 2")
    time.sleep(0.3)
    assert "Active user updated: bob" not in out.read()


def test_realtime_manager_end_to_end(pg_server: Server, capsys: Any) -> None:
    from test_spec_sync import realtime_manager_class

    out = Out(capsys)
    supabase = create_client(pg_server.url, ANON_KEY)
    RealtimeManager = realtime_manager_class()
    # Usage
    realtime = RealtimeManager(supabase)
    # Set up database sync
    realtime.setup_database_sync("messages")
    realtime.setup_database_sync("users")
    # Set up chat room
    chat_channel = realtime.setup_chat_room("general")
    # Join and send messages
    realtime.join_chat_room("general", {"id": "user1", "username": "Alice"})
    realtime.send_chat_message("general", "Alice", "Hello everyone!")
    out.wait("Alice joined the chat")
    sql("INSERT INTO messages VALUES (10, 'hi'); UPDATE messages SET body = 'hello' WHERE id = 10; DELETE FROM messages WHERE id = 10;")
    out.wait_line("New messages: {", "'body': 'hi'")
    out.wait_line("Updated messages: {", "'body': 'hello'")
    out.wait_line("Deleted messages: {", "'id': 10")
    sql("INSERT INTO users VALUES (30, 'cy', 'new');")
    out.wait_line("New users: {", "'name': 'cy'")
    # Cleanup when done
    realtime.cleanup()
    assert supabase.get_channels() == []
    supabase.close()


@pytest.mark.asyncio
async def test_official_on_postgres_changes(pg_server: Server) -> None:
    from conftest import await_for

    client = AsyncRealtimeClient(pg_server.ws_url, ANON_KEY)
    got: List[Any] = []
    ch = client.channel("official-pg")
    ch.on_postgres_changes("INSERT", got.append, table="countries", schema="public")
    await ch.subscribe()
    sql("INSERT INTO countries VALUES (77, 'Chile');")
    assert await await_for(lambda: len(got) == 1, 10), got
    data = got[0]["data"]
    assert data["type"] == "INSERT" and data["table"] == "countries" and data["record"] == {"id": 77, "name": "Chile"}
    assert got[0]["ids"] and {"name": "id", "type": "int4"} in data["columns"]
    await client.close()
