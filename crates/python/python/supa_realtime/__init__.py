"""Supabase Realtime for Python, on a Rust core.

Channels with broadcast, presence and postgres_changes; a sync client (callbacks on a
dispatcher thread) and an asyncio client (callbacks on the loop, ``async def`` awaited).
The socket is owned by the Rust client ``supa-realtime``: heartbeats with tracked
replies, reconnect forever, automatic rejoin of every channel. Frames are parsed in Rust
and handed to Python in batches.

Both the Supabase Python docs' API and the official ``realtime`` package's names work::

    from supa_realtime import create_client

    supabase = create_client("http://127.0.0.1:54321", ANON_KEY)
    channel = supabase.channel("chat-room")
    channel.on("broadcast", {"event": "message"}, lambda p: print(p["text"]))
    channel.subscribe()
    channel.send("message", {"text": "Hello everyone!"})

    # official names: change `from realtime import ...` to `from supa_realtime import ...`
    from supa_realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    client = AsyncRealtimeClient("ws://127.0.0.1:54321/realtime/v1", ANON_KEY)
    channel = client.channel("chat-room")
    channel.on_broadcast("message", lambda m: print(m["payload"]))
    await channel.subscribe(lambda state, err: print(state, err))
    await channel.send_broadcast("message", {"text": "hi"})

Errors are :class:`RealtimeError` subclasses with the server's reason:
:class:`AuthorizationError` (refused key, token or permissions) and
:class:`NotConnectedError` (send on a channel that was left or closed, client closed) among
them. A callback that raises is logged (logger ``supa_realtime``) with its traceback;
delivery goes on.

Payloads are JSON: a dict you send arrives as a dict with its keys in **sorted order**, not
in the order the sender inserted them (the Rust core keeps JSON objects sorted, as the
upstream server does when it re-encodes small maps). Do not rely on key order.
"""

from __future__ import annotations

from ._client import (
    AsyncRealtimeChannel,
    AsyncRealtimeClient,
    RealtimeClient,
    SyncRealtimeChannel,
    SyncRealtimeClient,
    acreate_client,
    create_async_client,
    create_client,
)
from ._exceptions import (
    AuthorizationError,
    BufferFullError,
    ChannelError,
    InvalidInputError,
    NotConnectedError,
    ProtocolError,
    EventsDroppedError,
    RealtimeError,
    RealtimeHTTPError,
    RealtimeTimeoutError,
)
from ._native import __version__
from ._types import (
    BroadcastPayload,
    ChannelStates,
    ClientOptions,
    PostgresChangesPayload,
    Presence,
    RealtimeChannelBroadcastConfig,
    RealtimeChannelConfig,
    RealtimeChannelOptions,
    RealtimeChannelPresenceConfig,
    RealtimePostgresChangesListenEvent,
    RealtimePresenceListenEvents,
    RealtimePresenceState,
    RealtimeSubscribeStates,
    SystemPayload,
)

RealtimeChannel = SyncRealtimeChannel

__all__ = [
    "__version__",
    "create_client",
    "create_async_client",
    "acreate_client",
    "SyncRealtimeClient",
    "RealtimeClient",
    "AsyncRealtimeClient",
    "SyncRealtimeChannel",
    "RealtimeChannel",
    "AsyncRealtimeChannel",
    "RealtimeError",
    "AuthorizationError",
    "NotConnectedError",
    "ChannelError",
    "RealtimeTimeoutError",
    "BufferFullError",
    "InvalidInputError",
    "RealtimeHTTPError",
    "ProtocolError",
    "EventsDroppedError",
    "RealtimeSubscribeStates",
    "RealtimePresenceListenEvents",
    "RealtimePostgresChangesListenEvent",
    "ChannelStates",
    "SystemPayload",
    "RealtimeChannelOptions",
    "RealtimeChannelConfig",
    "RealtimeChannelBroadcastConfig",
    "RealtimeChannelPresenceConfig",
    "ClientOptions",
    "BroadcastPayload",
    "PostgresChangesPayload",
    "Presence",
    "RealtimePresenceState",
]
