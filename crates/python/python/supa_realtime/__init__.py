"""The Supabase client for Python, with realtime that works, sync and async, on a Rust core.

:func:`create_client` returns a :class:`Client`, a subclass of the official
``supabase.Client`` (database, auth, storage and functions are the official packages'),
whose realtime is this package's; :func:`create_async_client` the same for
``supabase.AsyncClient``. The realtime-only classes (:class:`SyncRealtimeClient`,
:class:`AsyncRealtimeClient`) exist too, as the official ``realtime`` package's do.

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
them; those two subclass the official ``realtime`` classes of the same names, so
``except realtime.NotConnectedError`` catches ours. ``RealtimeSubscribeStates`` and the other
enums are the official package's own. A callback that raises is logged (logger
``supa_realtime``) with its traceback;
delivery goes on.

Payloads are JSON: a dict you send arrives as a dict with its keys in **sorted order**, not
in the order the sender inserted them (the Rust core keeps JSON objects sorted, as the
upstream server does when it re-encodes small maps). Do not rely on key order.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

from ._native import __version__

# The public names load on first use (PEP 562): `realtime` and `supabase` take a few hundred
# ms to import, which `python -m supa_realtime.server` and the pytest plugin (loaded into
# every pytest run of a user who has the package installed) do not need.
if TYPE_CHECKING:
    from ._client import (
        AsyncRealtimeChannel,
        AsyncRealtimeClient,
        RealtimeClient,
        SyncRealtimeChannel,
        SyncRealtimeClient,
    )
    from ._exceptions import (
        AuthorizationError,
        BufferFullError,
        ChannelError,
        EventsDroppedError,
        InvalidInputError,
        NotConnectedError,
        ProtocolError,
        RealtimeError,
        RealtimeHTTPError,
        RealtimeTimeoutError,
    )
    from ._supabase import (
        AsyncClient,
        AsyncClientOptions,
        Client,
        ClientOptions,
        acreate_client,
        create_async_client,
        create_client,
    )
    from ._types import (
        BroadcastPayload,
        ChannelStates,
        PostgresChangesPayload,
        Presence,
        RealtimeChannelBroadcastConfig,
        RealtimeChannelConfig,
        RealtimeChannelOptions,
        RealtimeChannelPresenceConfig,
        RealtimeOptions,
        RealtimePostgresChangesListenEvent,
        RealtimePresenceListenEvents,
        RealtimePresenceState,
        RealtimeSubscribeStates,
        SystemPayload,
    )

    RealtimeChannel = SyncRealtimeChannel

_LAZY: Dict[str, Tuple[str, str]] = {
    "AsyncRealtimeChannel": ("._client", "AsyncRealtimeChannel"),
    "AsyncRealtimeClient": ("._client", "AsyncRealtimeClient"),
    "RealtimeClient": ("._client", "RealtimeClient"),
    "SyncRealtimeChannel": ("._client", "SyncRealtimeChannel"),
    "SyncRealtimeClient": ("._client", "SyncRealtimeClient"),
    "AuthorizationError": ("._exceptions", "AuthorizationError"),
    "BufferFullError": ("._exceptions", "BufferFullError"),
    "ChannelError": ("._exceptions", "ChannelError"),
    "EventsDroppedError": ("._exceptions", "EventsDroppedError"),
    "InvalidInputError": ("._exceptions", "InvalidInputError"),
    "NotConnectedError": ("._exceptions", "NotConnectedError"),
    "ProtocolError": ("._exceptions", "ProtocolError"),
    "RealtimeError": ("._exceptions", "RealtimeError"),
    "RealtimeHTTPError": ("._exceptions", "RealtimeHTTPError"),
    "RealtimeTimeoutError": ("._exceptions", "RealtimeTimeoutError"),
    "AsyncClient": ("._supabase", "AsyncClient"),
    "AsyncClientOptions": ("._supabase", "AsyncClientOptions"),
    "Client": ("._supabase", "Client"),
    "ClientOptions": ("._supabase", "ClientOptions"),
    "acreate_client": ("._supabase", "acreate_client"),
    "create_async_client": ("._supabase", "create_async_client"),
    "create_client": ("._supabase", "create_client"),
    "BroadcastPayload": ("._types", "BroadcastPayload"),
    "ChannelStates": ("._types", "ChannelStates"),
    "PostgresChangesPayload": ("._types", "PostgresChangesPayload"),
    "Presence": ("._types", "Presence"),
    "RealtimeChannelBroadcastConfig": ("._types", "RealtimeChannelBroadcastConfig"),
    "RealtimeChannelConfig": ("._types", "RealtimeChannelConfig"),
    "RealtimeChannelOptions": ("._types", "RealtimeChannelOptions"),
    "RealtimeChannelPresenceConfig": ("._types", "RealtimeChannelPresenceConfig"),
    "RealtimeOptions": ("._types", "RealtimeOptions"),
    "RealtimePostgresChangesListenEvent": ("._types", "RealtimePostgresChangesListenEvent"),
    "RealtimePresenceListenEvents": ("._types", "RealtimePresenceListenEvents"),
    "RealtimePresenceState": ("._types", "RealtimePresenceState"),
    "RealtimeSubscribeStates": ("._types", "RealtimeSubscribeStates"),
    "SystemPayload": ("._types", "SystemPayload"),
    "RealtimeChannel": ("._client", "SyncRealtimeChannel"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "create_client",
    "create_async_client",
    "acreate_client",
    "Client",
    "AsyncClient",
    "ClientOptions",
    "AsyncClientOptions",
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
    "RealtimeOptions",
    "BroadcastPayload",
    "PostgresChangesPayload",
    "Presence",
    "RealtimePresenceState",
]
