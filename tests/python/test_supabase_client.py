"""The full client: `supa_realtime.create_client` is a `supabase.Client` whose database, auth,
storage and functions are the official packages' and whose realtime is ours, sync and async.

PostgREST and GoTrue cannot be installed here: the database and auth calls go to the small
stand-ins of `standins.py` (their documented API for the calls used), behind one project URL
that also routes `/realtime/v1` to the real realtime server, as Supabase's gateway does.
Realtime is always the real server.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Iterator, List

import pytest
import realtime
import supabase as official

import supa_realtime
from conftest import ANON_KEY, JWT_SECRET, await_for, wait_for
from standins import Gateway, psql
from supa_realtime import AsyncClientOptions, ClientOptions, create_async_client, create_client
from supa_realtime.testing import RealtimeServer, start_server


@pytest.fixture
def gateway(server: Any) -> Iterator[Gateway]:
    gw = Gateway(server.port, JWT_SECRET).start()
    yield gw
    gw.stop()


def test_create_client_is_the_official_client_and_opens_no_socket(gateway: Gateway) -> None:
    supabase = create_client(gateway.url, ANON_KEY)
    assert isinstance(supabase, official.Client) and isinstance(supabase, supa_realtime.Client)
    for attr in ("table", "from_", "rpc", "schema", "postgrest", "auth", "storage", "functions"):
        assert getattr(supabase, attr) is not None, attr
    assert isinstance(supabase.realtime, supa_realtime.SyncRealtimeClient)
    supabase.table("countries").select("*").execute()
    channel = supabase.channel("not-yet")
    channel.on("broadcast", {"event": "x"}, print)
    channel.untrack()
    channel.unsubscribe()
    supabase.realtime.set_auth(None)
    time.sleep(0.3)
    assert gateway.realtime_connections == 0 and not supabase.realtime.is_connected
    assert channel.status == "IDLE" and supabase.get_channels() == [channel]
    channel.subscribe()
    assert gateway.realtime_connections == 1 and supabase.realtime.is_connected
    supabase.close()


def test_send_on_a_never_subscribed_channel_uses_rest_and_opens_no_socket(server: Any, gateway: Gateway) -> None:
    # The listener talks to the server directly, so the gateway counts only the full client's
    # sockets: sending through REST must open none.
    got: List[Any] = []
    listener = supa_realtime.RealtimeClient(server.url, ANON_KEY)
    room = listener.channel("rest-news")
    room.on("broadcast", {"event": "hello"}, got.append).subscribe()
    supabase = create_client(gateway.url, ANON_KEY)
    try:
        news = supabase.channel("rest-news")
        news.send("hello", {"n": 1})
        news.send_broadcast("hello", {"n": 2})
        assert wait_for(lambda: got == [{"n": 1}, {"n": 2}]), got
        assert gateway.realtime_rest_calls == 2
        assert gateway.realtime_connections == 0 and not supabase.realtime.is_connected
        assert news.status == "IDLE"
    finally:
        supabase.close()
        listener.close()


@pytest.mark.asyncio
async def test_async_send_on_a_never_subscribed_channel_uses_rest(server: Any, gateway: Gateway) -> None:
    got: List[Any] = []
    listener = supa_realtime.RealtimeClient(server.url, ANON_KEY)
    room = listener.channel("rest-news-async")
    room.on("broadcast", {"event": "hello"}, got.append).subscribe()
    supabase = await create_async_client(gateway.url, ANON_KEY)
    try:
        await supabase.channel("rest-news-async").send("hello", {"n": 3})
        assert await await_for(lambda: got == [{"n": 3}]), got
        assert gateway.realtime_rest_calls == 1
        assert gateway.realtime_connections == 0 and not supabase.realtime.is_connected
    finally:
        await supabase.close()
        listener.close()


def test_sync_program_uses_table_and_realtime_on_one_client(gateway: Gateway) -> None:
    supabase = create_client(gateway.url, ANON_KEY)
    try:
        orders: List[Any] = []
        room = supabase.channel("orders", {"broadcast": {"self": True}})
        room.on("broadcast", {"event": "new-order"}, orders.append).subscribe()
        row = supabase.table("orders").insert({"item": "tea", "qty": 2}).execute().data[0]
        room.send("new-order", row)
        assert wait_for(lambda: orders == [row]), orders
        assert supabase.table("orders").select("*").eq("item", "tea").execute().data == [row]
        assert gateway.rest_auth_headers[-1] == f"Bearer {ANON_KEY}"
    finally:
        supabase.close()


@pytest.mark.asyncio
async def test_async_program_uses_table_and_realtime_on_one_client(gateway: Gateway) -> None:
    supabase = await create_async_client(gateway.url, ANON_KEY)
    assert isinstance(supabase, official.AsyncClient)
    try:
        orders: List[Any] = []
        room = supabase.channel("async-orders", {"config": {"broadcast": {"self": True}}})
        room.on_broadcast("new-order", lambda m: orders.append(m["payload"]))
        await room.subscribe()
        row = (await supabase.table("orders").insert({"item": "coffee"}).execute()).data[0]
        await room.send_broadcast("new-order", row)
        assert await await_for(lambda: orders == [row]), orders
        assert (await supabase.table("orders").select("*").eq("item", "coffee").execute()).data == [row]
        await supabase.remove_channel(room)
        assert supabase.get_channels() == []
    finally:
        await supabase.close()


def test_official_client_options_are_accepted_as_they_are(server: Any) -> None:
    # upstream's RealtimeClientOptions are in seconds: a 0.2 s heartbeat is answered soon
    supabase = create_client(server.url, ANON_KEY, ClientOptions(realtime={"hb_interval": 0.2}))  # type: ignore[typeddict-item]
    try:
        supabase.channel("beats").subscribe()
        assert wait_for(lambda: supabase.realtime.heartbeat_latency is not None, 3.0)
    finally:
        supabase.close()
    # this package's options (ms) under "options", or as a plain dict
    opts = ClientOptions(realtime={"options": {"offline_buffer": 0}})  # type: ignore[typeddict-unknown-key]
    create_client(server.url, ANON_KEY, opts).close()
    create_client(server.url, ANON_KEY, {"hb_interval": 30000}).close()
    with pytest.raises(TypeError, match="unknown realtime option"):
        create_client(server.url, ANON_KEY, {"schema": "public"})
    with pytest.raises(TypeError, match="unknown realtime option"):
        create_client(server.url, ANON_KEY, ClientOptions(realtime={"hb_intervall": 5}))  # type: ignore[typeddict-unknown-key]
    with pytest.raises(TypeError, match="options must be"):
        create_client(server.url, ANON_KEY, 42)  # type: ignore[arg-type]
    with pytest.raises(official.SupabaseException):
        create_client("ws://127.0.0.1:1/realtime/v1", ANON_KEY)


def test_official_exception_and_state_names_catch_ours(server: Any) -> None:
    supabase = create_client(server.url, ANON_KEY)
    try:
        states: List[Any] = []
        channel = supabase.channel("left-room")
        channel.subscribe(lambda state, err: states.append(state))
        assert states == [realtime.RealtimeSubscribeStates.SUBSCRIBED]
        assert states[0] is realtime.RealtimeSubscribeStates.SUBSCRIBED
        channel.unsubscribe()
        try:
            channel.send("message", {"text": "nobody hears this"})
        except realtime.NotConnectedError as e:
            caught: Any = e
        else:
            pytest.fail("send on a left channel did not raise")
        assert isinstance(caught, supa_realtime.NotConnectedError) and isinstance(caught, supa_realtime.RealtimeError)
        assert str(caught)
    finally:
        supabase.close()

    expired = supa_realtime.testing.mint_jwt({"role": "anon", "exp": int(time.time()) - 60}, JWT_SECRET)
    refused = create_client(server.url, expired)
    try:
        try:
            refused.channel("any").subscribe()
        except realtime.AuthorizationError as e:
            assert isinstance(e, supa_realtime.AuthorizationError) and "expired" in str(e).lower(), e
        else:
            pytest.fail("an expired token joined")
    finally:
        refused.close()


# -- auth reaches realtime: sign in, refresh, existing session, sign out ---------------------------

POLICY = """
DROP POLICY IF EXISTS srpy_user_reads ON realtime.messages;
DROP POLICY IF EXISTS srpy_user_writes ON realtime.messages;
CREATE POLICY srpy_user_reads ON realtime.messages FOR SELECT TO authenticated
  USING (realtime.topic() = 'srpy-user-' || auth.uid()::text);
CREATE POLICY srpy_user_writes ON realtime.messages FOR INSERT TO authenticated
  WITH CHECK (realtime.topic() = 'srpy-user-' || auth.uid()::text);
"""
SLOT = "srpy_auth_slot"


@pytest.fixture(scope="module")
def rls_server() -> Iterator[RealtimeServer]:
    import os

    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.skip("private channels by RLS need a database: set DATABASE_URL (scripts/postgres.sh prints it)")
    drop = f"SELECT pg_drop_replication_slot('{SLOT}') FROM pg_replication_slots WHERE slot_name = '{SLOT}';"
    psql(url, drop)
    srv = start_server(url, jwt_secret=JWT_SECRET, extra_args=["--slot-name", SLOT, "--publication", "srpy_pub"])
    psql(url, POLICY)  # realtime.messages and auth.uid() exist once the server is up
    yield srv
    srv.stop()
    psql(url, drop)


def test_sign_in_authorizes_private_channel_and_sign_out_refuses_rejoin(rls_server: RealtimeServer) -> None:
    gw = Gateway(rls_server.port, rls_server.jwt_secret).start()
    try:
        uid = gw.add_user("alice@example.com", "correct horse")
        topic = f"srpy-user-{uid}"
        supabase = create_client(gw.url, rls_server.anon_key)

        # anonymous: RLS refuses the user's private channel
        anon_channel = supabase.channel(topic, {"config": {"private": True}})
        with pytest.raises(realtime.AuthorizationError):
            anon_channel.subscribe()
        supabase.remove_channel(anon_channel)

        # sign in: realtime joins with the user's token
        session = supabase.auth.sign_in_with_password({"email": "alice@example.com", "password": "correct horse"}).session
        assert session is not None and supabase.realtime.access_token == session.access_token
        got: List[Any] = []
        channel = supabase.channel(topic, {"config": {"private": True, "broadcast": {"self": True}}})
        channel.on("broadcast", {"event": "note"}, got.append).subscribe()
        assert channel.status == "SUBSCRIBED"
        channel.send("note", {"text": "only for alice"})
        assert wait_for(lambda: got == [{"text": "only for alice"}]), got
        supabase.table("notes").select("*").execute()
        assert gw.rest_auth_headers[-1] == f"Bearer {session.access_token}"

        # refresh: the new token replaces the old one; the channel stays joined
        refreshed = supabase.auth.refresh_session().session
        assert refreshed is not None and refreshed.access_token != session.access_token
        assert supabase.realtime.access_token == refreshed.access_token
        channel.send("note", {"text": "after refresh"})
        assert wait_for(lambda: len(got) == 2) and channel.status == "SUBSCRIBED", got

        # a client created over the stored session uses it from the first join, lazily
        second = create_client(gw.url, rls_server.anon_key, ClientOptions(storage=supabase.auth._storage))
        stored = second.auth.get_session()
        assert stored is not None and stored.user.id == uid
        assert second.realtime.access_token == stored.access_token and not second.realtime.is_connected
        second.channel(topic, {"config": {"private": True}}).subscribe()
        second.close()

        # sign out: back to the anon key; rejoining the private channel is refused
        supabase.auth.sign_out()
        assert supabase.realtime.access_token == rls_server.anon_key
        channel.unsubscribe()
        try:
            channel.subscribe()
        except realtime.AuthorizationError as e:
            assert "permission" in str(e).lower() or "unauthorized" in str(e).lower(), e
        else:
            pytest.fail("the private channel rejoined after sign out")
        supabase.close()
    finally:
        gw.stop()


@pytest.mark.asyncio
async def test_async_sign_in_reaches_realtime_before_the_next_join(rls_server: RealtimeServer) -> None:
    gw = Gateway(rls_server.port, rls_server.jwt_secret).start()
    try:
        uid = gw.add_user(f"bob-{uuid.uuid4().hex[:6]}@example.com", "pw")
        email = next(e for e, u in gw.users.items() if u["id"] == uid)
        supabase = await create_async_client(gw.url, rls_server.anon_key)
        await supabase.auth.sign_in_with_password({"email": email, "password": "pw"})
        channel = supabase.channel(f"srpy-user-{uid}", {"config": {"private": True}})
        await channel.subscribe()  # no await in between: the token must already be realtime's
        assert channel.status == "SUBSCRIBED"
        # a client created over the stored session starts with it
        second = await create_async_client(gw.url, rls_server.anon_key,
                                           AsyncClientOptions(storage=supabase.auth._storage))
        stored = await second.auth.get_session()
        assert stored is not None and second.realtime.access_token == stored.access_token
        await second.channel(f"srpy-user-{uid}", {"config": {"private": True}}).subscribe()
        await second.close()
        await supabase.auth.sign_out()
        await channel.unsubscribe()
        with pytest.raises(realtime.AuthorizationError):
            await channel.subscribe()
        await supabase.close()
    finally:
        gw.stop()


def test_a_new_session_reaches_joined_channels(rls_server: RealtimeServer) -> None:
    """Joined channels get the new access_token at once: signing in as another user makes the
    server check RLS again with it, and it closes the channel the new user may not read."""
    gw = Gateway(rls_server.port, rls_server.jwt_secret).start()
    try:
        alice = gw.add_user("alice2@example.com", "pw")
        gw.add_user("carol@example.com", "pw")
        supabase = create_client(gw.url, rls_server.anon_key)
        supabase.auth.sign_in_with_password({"email": "alice2@example.com", "password": "pw"})
        closed: List[Any] = []
        channel = supabase.channel(f"srpy-user-{alice}", {"config": {"private": True}})
        channel.on_close(lambda reason: closed.append(reason))
        channel.subscribe()
        assert channel.status == "SUBSCRIBED"
        supabase.auth.sign_in_with_password({"email": "carol@example.com", "password": "pw"})
        assert wait_for(lambda: channel.status == "CLOSED", 10.0), channel.status
        assert wait_for(lambda: len(closed) == 1, 5.0), closed
        assert "no longer have permission" in str(closed[0]) and channel.status_reason == closed[0]
        supabase.close()
    finally:
        gw.stop()
