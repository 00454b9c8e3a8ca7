"""Every sync usage example of the spec (seed/realtime-python-api.txt), run as written on the
full client (`supa_realtime.create_client`, a `supabase.Client`), with the spec's own imports
(`from realtime import AuthorizationError, NotConnectedError`: the official classes, which
ours subclass) and only the client creation pointing at the local server, checking it does
what its text says."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, List

import pytest

from conftest import ANON_KEY, mint_jwt, wait_for
from support import Out
from realtime import AuthorizationError, NotConnectedError

from supa_realtime import create_client


@pytest.fixture
def supabase(server: Any) -> Any:
    client = create_client(server.url, ANON_KEY)
    yield client
    client.close()


@pytest.fixture
def peer(server: Any) -> Any:
    """Another user of the same project."""
    client = create_client(server.url, ANON_KEY)
    yield client
    client.close()


def test_channel_management(supabase: Any, capsys: Any) -> None:
    out = Out(capsys)
    # Create a channel
    channel = supabase.channel("room-1")
    # Create channel with options
    channel = supabase.channel("game-lobby", {
    "presence": {"key": "user_id"},
    "broadcast": {"self": True}
    })
    # List all channels
    channels = supabase.get_channels()
    print(f"Active channels: {len(channels)}")
    out.wait("Active channels: 2")
    assert [c.topic for c in channels] == ["realtime:room-1", "realtime:game-lobby"]
    # the options reach the join: broadcast.self delivers our own message, presence key
    channel.subscribe()
    seen: List[Any] = []
    channel.on("broadcast", {"event": "ping"}, seen.append)
    channel.send("ping", {"n": 1})
    assert wait_for(lambda: seen == [{"n": 1}])
    channel.track({"online": True})
    assert wait_for(lambda: list(channel.presence_state()) == ["user_id"])
    # Remove specific channel
    supabase.remove_channel(channel)
    assert [c.topic for c in supabase.get_channels()] == ["realtime:room-1"]
    # Remove all channels
    supabase.remove_all_channels()
    assert supabase.get_channels() == []


@pytest.mark.asyncio
async def test_async_channel_management(server: Any) -> None:
    from supa_realtime import create_async_client

    url, key = server.url, ANON_KEY
    # Async channel management
    async def manage_async_channels():
        client = await create_async_client(url, key)
        channel = client.channel("async-room")
        assert client.get_channels() == [channel]
        # Remove async channel
        await client.remove_channel(channel)
        await client.remove_all_channels()
        assert client.get_channels() == []
        await client.close()
    await manage_async_channels()


def test_broadcast_examples(supabase: Any, peer: Any, capsys: Any) -> None:
    out = Out(capsys)
    # the other user listens on both rooms
    received: List[Any] = []
    peer_room = peer.channel("chat-room")
    peer_room.on("broadcast", {"event": "*"}, lambda payload, message: received.append((message["event"], payload)))
    peer_room.subscribe()
    peer_multi = peer.channel("multi-chat")
    peer_multi.subscribe()

    # Set up broadcast listener
    def handle_broadcast(payload):
        print(f"Received broadcast: {payload}")
    channel = supabase.channel("chat-room")
    channel.on("broadcast", {"event": "message"}, handle_broadcast)
    channel.subscribe()
    # Send broadcast messages
    channel.send("message", {
    "user": "john_doe",
    "text": "Hello everyone!",
    "timestamp": "2023-12-01T10:00:00Z"
    })
    # Broadcast with different event types
    channel.send("user_typing", {
    "user": "john_doe",
    "typing": True
    })
    channel.send("system_notification", {
    "type": "maintenance",
    "message": "System will restart in 5 minutes"
    })
    assert wait_for(lambda: len(received) == 3), received
    assert received == [
        ("message", {"user": "john_doe", "text": "Hello everyone!", "timestamp": "2023-12-01T10:00:00Z"}),
        ("user_typing", {"user": "john_doe", "typing": True}),
        ("system_notification", {"type": "maintenance", "message": "System will restart in 5 minutes"}),
    ]
    # the listener receives what the other user sends
    peer_room.send("message", {"user": "jane", "text": "hi john"})
    out.wait_line("Received broadcast: {", "'user': 'jane'", "'text': 'hi john'")

    # Multiple event types on same channel
    def handle_messages(payload):
        print(f"Message: {payload['text']} from {payload['user']}")
    def handle_typing(payload):
        print(f"{payload['user']} is {'typing' if payload['typing'] else 'stopped typing'}")
    channel = supabase.channel("multi-chat")
    channel.on("broadcast", {"event": "message"}, handle_messages)
    channel.on("broadcast", {"event": "typing"}, handle_typing)
    channel.subscribe()
    peer_multi.send("message", {"user": "jane", "text": "Hello"})
    peer_multi.send("typing", {"user": "jane", "typing": True})
    peer_multi.send("typing", {"user": "jane", "typing": False})
    out.wait("Message: Hello from jane")
    out.wait("jane is typing")
    out.wait("jane is stopped typing")
    # own messages are not echoed (broadcast.self defaults to False)
    channel.send("message", {"user": "john", "text": "mine"})
    time.sleep(0.3)
    assert "from john" not in out.read()


def test_presence_examples(supabase: Any, peer: Any, capsys: Any) -> None:
    out = Out(capsys)
    # Track user presence
    def handle_presence(payload):
        print(f"Presence update: {payload}")
    channel = supabase.channel("user-presence")
    channel.on("presence", {"event": "sync"}, handle_presence)
    channel.on("presence", {"event": "join"}, lambda p: print(f"User joined: {p}"))
    channel.on("presence", {"event": "leave"}, lambda p: print(f"User left: {p}"))
    channel.subscribe()
    out.wait_line("Presence update: {", "'event': 'sync'", "'presences': {}")
    # Start tracking current user
    channel.track({
    "user_id": "user123",
    "username": "john_doe",
    "status": "online",
    "last_seen": "2023-12-01T10:00:00Z"
    })
    out.wait_line("User joined: {", "'event': 'join'", "'username': 'john_doe'")
    assert wait_for(lambda: [p["status"] for ps in channel.presence_state().values() for p in ps] == ["online"])
    # Update presence state
    channel.track({
    "user_id": "user123",
    "username": "john_doe",
    "status": "away",
    "activity": "In a meeting"
    })
    assert wait_for(lambda: [p["status"] for ps in channel.presence_state().values() for p in ps] == ["away"])
    out.wait("'activity': 'In a meeting'")
    # Stop tracking
    channel.untrack()
    out.wait_line("User left: {", "'event': 'leave'", "'username': 'john_doe'")
    assert wait_for(lambda: channel.presence_state() == {})

    # Detailed presence tracking
    def handle_sync(payload):
        """Handle complete presence state sync"""
        users_online = payload.get("presences", {})
        print(f"Users online: {len(users_online)}")
        for user_id, presence_data in users_online.items():
            for presence in presence_data:
                print(f"User {presence['username']}: {presence['status']}")
    def handle_join(payload):
        """Handle user joining"""
        user_data = payload["presence"]
        print(f"{user_data['username']} joined the channel")
    def handle_leave(payload):
        """Handle user leaving"""
        user_data = payload["presence"]
        print(f"{user_data['username']} left the channel")
    channel = supabase.channel("game-lobby")
    channel.on("presence", {"event": "sync"}, handle_sync)
    channel.on("presence", {"event": "join"}, handle_join)
    channel.on("presence", {"event": "leave"}, handle_leave)
    channel.subscribe()
    # Track game player status
    channel.track({
    "user_id": "player1",
    "username": "Alice",
    "status": "ready",
    "character": "mage",
    "level": 15
    })
    out.wait("Alice joined the channel")
    out.wait("Users online: 1")
    out.wait("User Alice: ready")
    # another player joins and leaves
    other = peer.channel("game-lobby", {"presence": {"key": "player2"}})
    other.subscribe()
    other.track({"user_id": "player2", "username": "Bob", "status": "waiting"})
    out.wait("Bob joined the channel")
    out.wait("Users online: 2")
    other.untrack()
    out.wait("Bob left the channel")


def test_channel_configuration_examples(supabase: Any) -> None:
    # Configure channel with custom options
    channel_options = {
    "auto_reconnect": True,
    "hb_interval": 30000, # 30 seconds
    "max_retries": 5,
    "initial_backoff": 1.0
    }
    channel = supabase.channel("reliable-channel", channel_options)
    # Different configurations for different use cases
    # High-frequency trading data
    trading_channel = supabase.channel("trading-data", {
    "hb_interval": 5000, # 5 seconds for quick detection
    "max_retries": 10, # More retries for critical data
    "auto_reconnect": True
    })
    # Chat application
    chat_channel = supabase.channel("chat", {
    "hb_interval": 60000, # 1 minute is fine for chat
    "max_retries": 3, # Fewer retries for user experience
    "auto_reconnect": True
    })
    # Gaming leaderboard
    game_channel = supabase.channel("leaderboard", {
    "hb_interval": 15000, # 15 seconds for game updates
    "max_retries": 5,
    "auto_reconnect": True
    })
    assert channel.params == channel_options
    assert trading_channel.params["hb_interval"] == 5000
    for ch in (channel, trading_channel, chat_channel, game_channel):
        ch.subscribe()
        assert ch.status == "SUBSCRIBED"
    with pytest.raises(TypeError):
        supabase.channel("bad-options", {"max_retries": "many"})


def test_connection_handling_examples(server: Any, supabase: Any, capsys: Any) -> None:
    out = Out(capsys)
    def handle_error(error):
        print(f"Channel error: {error}")
        # Implement error recovery logic
    def handle_close():
        print("Channel closed")
        # Clean up resources or attempt reconnection
    def handle_connection_state(state):
        print(f"Connection state: {state}")
        if state == "connected":
            print("Successfully connected to realtime")
        elif state == "disconnected":
            print("Lost connection to realtime")
    # Set up connection handlers
    channel = supabase.channel("monitored-channel")
    channel.on_error(handle_error)
    channel.on_close(handle_close)
    # Monitor overall realtime connection
    supabase.realtime.on_open(lambda: print("Realtime connection opened"))
    supabase.realtime.on_close(lambda: print("Realtime connection closed"))
    supabase.realtime.on_error(lambda e: print(f"Realtime error: {e}"))
    # like the official clients, the socket opens when a channel is first subscribed
    time.sleep(0.2)
    assert not supabase.realtime.is_connected and "Realtime connection opened" not in out.read()
    # Graceful shutdown
    def cleanup_realtime():
        """Clean up all realtime resources"""
        try:
            supabase.remove_all_channels()
            print("All channels removed successfully")
        except Exception as e:
            print(f"Error during cleanup: {e}")
    # Connection with retry logic
    def connect_with_retry(channel, max_attempts=3):
        """Connect channel with retry logic"""
        for attempt in range(max_attempts):
            try:
                channel.subscribe()
                print(f"Connected on attempt {attempt + 1}")
                break
            except Exception as e:
                print(f"Attempt {attempt + 1} failed: {e}")
                if attempt == max_attempts - 1:
                    print("Max attempts reached, giving up")
                    raise
                time.sleep(2 ** attempt) # Exponential backoff
    connect_with_retry(channel)
    out.wait("Connected on attempt 1")
    out.wait("Realtime connection opened")
    channel.unsubscribe()
    out.wait("Channel closed")
    supabase.realtime.close()
    out.wait("Realtime connection closed")
    supabase.realtime.connect()
    assert wait_for(lambda: out.read().count("Realtime connection opened") == 2), out.text
    cleanup_realtime()
    out.wait("All channels removed successfully")

    # errors: a client whose token is refused
    expired = mint_jwt({"role": "anon", "exp": int(time.time()) - 60})
    bad = create_client(server.url, expired)
    try:
        bad.realtime.on_error(lambda e: print(f"Realtime error: {e}"))
        ch = bad.channel("monitored-channel")
        ch.on_error(handle_error)
        with pytest.raises(AuthorizationError):
            connect_with_retry(ch, max_attempts=2)
        out.wait("Attempt 1 failed:")
        out.wait("Max attempts reached, giving up")
        assert "Realtime error:" in out.read() or "Channel error:" in out.read()
    finally:
        bad.close()


def test_error_handling_examples(server: Any, capsys: Any) -> None:
    out = Out(capsys)
    # a client whose token has expired: it may not access any channel
    supabase = create_client(server.url, mint_jwt({"role": "anon", "exp": int(time.time()) - 60}))
    try:
        try:
            channel = supabase.channel("restricted-channel")
            channel.subscribe()
        except AuthorizationError:
            print("Not authorized to access this channel")
        except Exception as e:
            print(f"Failed to subscribe: {e}")
        try:
            channel.send("message", {"text": "Hello"})
        except NotConnectedError:
            print("Channel not connected, attempting to reconnect...")
            try:
                channel.subscribe()
                channel.send("message", {"text": "Hello"})
            except Exception as e:
                print(f"Reconnection failed: {e}")
        out.wait("Not authorized to access this channel")
        out.wait("Channel not connected, attempting to reconnect...")
        out.wait("Reconnection failed: ")
        assert "Failed to subscribe" not in out.read()
    finally:
        supabase.close()

    out = Out(capsys)
    supabase = create_client(server.url, ANON_KEY)
    try:
        # Robust error handling
        def safe_channel_operation(channel, operation, *args, **kwargs):
            """Safely perform channel operations with error handling"""
            try:
                return operation(*args, **kwargs)
            except NotConnectedError:
                print("Reconnecting channel...")
                try:
                    channel.subscribe()
                    return operation(*args, **kwargs)
                except Exception as e:
                    print(f"Reconnection failed: {e}")
                    raise
            except AuthorizationError:
                print("Authorization error - check permissions")
                raise
            except Exception as e:
                print(f"Unexpected error: {e}")
                raise
        # Usage
        channel = supabase.channel("safe-channel")
        safe_channel_operation(channel, channel.subscribe)
        safe_channel_operation(channel, channel.send, "message", {"text": "Hello"})
        assert channel.status == "SUBSCRIBED"
        # a channel that was left: the send raises NotConnectedError and the helper rejoins
        channel.unsubscribe()
        safe_channel_operation(channel, channel.send, "message", {"text": "Hello again"})
        out.wait("Reconnecting channel...")
        assert channel.status == "SUBSCRIBED"
        assert "failed" not in out.read() and "Unexpected" not in out.read()
    finally:
        supabase.close()


def test_realtime_manager_chat(server: Any, peer: Any, capsys: Any) -> None:
    """The RealtimeManager example's chat part (the database part needs DATABASE_URL, see
    test_postgres.py)."""
    out = Out(capsys)
    supabase = create_client(server.url, ANON_KEY)
    RealtimeManager = _realtime_manager_class()
    watcher_msgs: List[Any] = []
    watcher = peer.channel("chat-general")
    watcher.on("broadcast", {"event": "message"}, watcher_msgs.append)
    watcher.on("presence", {"event": "join"}, lambda p: watcher_msgs.append(("join", p["presence"]["username"])))
    watcher.subscribe()

    realtime = RealtimeManager(supabase)
    # Set up chat room
    chat_channel = realtime.setup_chat_room("general")
    # Join and send messages
    realtime.join_chat_room("general", {"id": "user1", "username": "Alice"})
    realtime.send_chat_message("general", "Alice", "Hello everyone!")
    out.wait("Alice joined the chat")
    assert wait_for(lambda: len(watcher_msgs) == 2), watcher_msgs
    assert ("join", "Alice") in watcher_msgs
    msg = [m for m in watcher_msgs if isinstance(m, dict)][0]
    assert msg["user"] == "Alice" and msg["text"] == "Hello everyone!" and datetime.fromisoformat(msg["timestamp"])
    # The manager's handler reads payload.get("message", {}): with the payload being what
    # the sender sent (the spec's clearer broadcast examples), a message sent the way
    # send_chat_message sends it prints "[None]: None"; one that nests it prints it.
    watcher.send("message", {"message": {"user": "Bob", "text": "hi Alice"}})
    out.wait("[Bob]: hi Alice")
    assert chat_channel.status == "SUBSCRIBED"
    # Cleanup when done
    realtime.cleanup()
    assert supabase.get_channels() == [] and realtime.channels == {}
    supabase.close()


def _realtime_manager_class() -> Any:
    class RealtimeManager:
        """Comprehensive real-time functionality manager"""
        def __init__(self, supabase_client):
            self.client = supabase_client
            self.channels = {}
        def setup_database_sync(self, table_name):
            """Set up real-time database synchronization"""
            channel = self.client.channel(f"db-{table_name}")
            def handle_insert(payload):
                print(f"New {table_name}: {payload['new']}")
            def handle_update(payload):
                print(f"Updated {table_name}: {payload['new']}")
            def handle_delete(payload):
                print(f"Deleted {table_name}: {payload['old']}")
            channel.on("postgres_changes", {
            "event": "INSERT",
            "schema": "public",
            "table": table_name
            }, handle_insert)
            channel.on("postgres_changes", {
            "event": "UPDATE",
            "schema": "public",
            "table": table_name
            }, handle_update)
            channel.on("postgres_changes", {
            "event": "DELETE",
            "schema": "public",
            "table": table_name
            }, handle_delete)
            channel.subscribe()
            self.channels[f"db-{table_name}"] = channel
        def setup_chat_room(self, room_id):
            """Set up chat room with messages and presence"""
            channel = self.client.channel(f"chat-{room_id}")
            # Message handling
            def handle_message(payload):
                msg = payload.get("message", {})
                print(f"[{msg.get('user')}]: {msg.get('text')}")
            channel.on("broadcast", {"event": "message"}, handle_message)
            # Presence handling
            def handle_user_join(payload):
                user = payload.get("presence", {})
                print(f"{user.get('username')} joined the chat")
            def handle_user_leave(payload):
                user = payload.get("presence", {})
                print(f"{user.get('username')} left the chat")
            channel.on("presence", {"event": "join"}, handle_user_join)
            channel.on("presence", {"event": "leave"}, handle_user_leave)
            channel.subscribe()
            self.channels[f"chat-{room_id}"] = channel
            return channel
        def send_chat_message(self, room_id, user, message):
            """Send message to chat room"""
            channel = self.channels.get(f"chat-{room_id}")
            if channel:
                channel.send("message", {
                "user": user,
                "text": message,
                "timestamp": datetime.now().isoformat()
                })
        def join_chat_room(self, room_id, user_info):
            """Join chat room with user presence"""
            channel = self.channels.get(f"chat-{room_id}")
            if channel:
                channel.track({
                "user_id": user_info["id"],
                "username": user_info["username"],
                "status": "online"
                })
        def cleanup(self):
            """Clean up all channels"""
            self.client.remove_all_channels()
            self.channels.clear()
    return RealtimeManager


realtime_manager_class = _realtime_manager_class
