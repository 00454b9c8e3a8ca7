"""Types: the official package's enums and payload shapes, and this package's options."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Any, Dict, List, Optional

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict  # type: ignore[assignment]


class RealtimeSubscribeStates(str, Enum):
    """What a ``subscribe(callback)`` callback receives (as the official package)."""

    SUBSCRIBED = "SUBSCRIBED"
    TIMED_OUT = "TIMED_OUT"
    CLOSED = "CLOSED"
    CHANNEL_ERROR = "CHANNEL_ERROR"


class RealtimePresenceListenEvents(str, Enum):
    SYNC = "SYNC"
    JOIN = "JOIN"
    LEAVE = "LEAVE"


class RealtimePostgresChangesListenEvent(str, Enum):
    All = "*"
    Insert = "INSERT"
    Update = "UPDATE"
    Delete = "DELETE"


class ChannelStates(str, Enum):
    JOINED = "joined"
    CLOSED = "closed"
    ERRORED = "errored"
    JOINING = "joining"
    LEAVING = "leaving"


class SystemPayload:
    """A ``system`` message as ``on_system`` callbacks receive it (attributes as the
    official package's ``SuccessSystemPayload``; also readable as a mapping)."""

    __slots__ = ("channel", "extension", "message", "status")

    def __init__(self, channel: str, extension: str, message: str, status: str) -> None:
        self.channel = channel
        self.extension = extension
        self.message = message
        self.status = status

    def __getitem__(self, key: str) -> str:
        if key not in self.__slots__:
            raise KeyError(key)
        return str(getattr(self, key))

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in self.__slots__ else default

    def __repr__(self) -> str:
        return (
            f"SystemPayload(channel={self.channel!r}, extension={self.extension!r}, "
            f"message={self.message!r}, status={self.status!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SystemPayload) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__
        )


class RealtimeChannelBroadcastConfig(TypedDict, total=False):
    ack: bool
    self: bool
    replay: Dict[str, int]


class RealtimeChannelPresenceConfig(TypedDict, total=False):
    key: str
    enabled: bool


class RealtimeChannelConfig(TypedDict, total=False):
    broadcast: RealtimeChannelBroadcastConfig
    presence: RealtimeChannelPresenceConfig
    private: bool


class RealtimeChannelOptions(TypedDict, total=False):
    """Channel parameters. Both spellings are accepted: the flat one of the Supabase
    Python docs (``{"broadcast": {"self": True}, "presence": {"key": "me"}}``) and the
    official package's (``{"config": {...}}``)."""

    config: RealtimeChannelConfig
    broadcast: RealtimeChannelBroadcastConfig
    presence: RealtimeChannelPresenceConfig
    private: bool
    auto_reconnect: bool
    """Rejoin this channel after it fails (join refused or timed out, crashed or closed by
    the server, connection lost). Default True. False: the first failure is final; the
    channel stays in CHANNEL_ERROR/TIMED_OUT/CLOSED, sends raise
    :class:`NotConnectedError`, and ``subscribe()`` starts it again. Socket reconnects are
    the client's (``create_client(..., {"auto_reconnect": ...})``)."""
    hb_interval: int
    """Heartbeat interval in milliseconds. The heartbeat belongs to the socket, which all
    channels of a client share: the socket beats at the **smallest** ``hb_interval`` of the
    client and of every channel it has (applied at once, re-evaluated when channels are
    added or removed). A channel can therefore only make heartbeats more frequent."""
    max_retries: int
    """Failures in a row after which the channel stops rejoining (0: never retry);
    unset: retry forever. A successful join resets the count."""
    initial_backoff: float
    """First rejoin delay of this channel, in seconds; it doubles per failure in a row,
    up to the client's ``max_backoff``. Unset: the client's ``rejoin_backoff`` table."""


class ClientOptions(TypedDict, total=False):
    """Options of ``create_client``/``create_async_client``. Durations in milliseconds
    unless said otherwise."""

    auto_reconnect: bool
    hb_interval: int
    heartbeat_timeout: int
    timeout: int
    max_retries: Optional[int]
    initial_backoff: float
    """seconds"""
    max_backoff: float
    """seconds"""
    rejoin_backoff: List[float]
    """seconds, by attempt"""
    vsn: str
    params: Dict[str, Any]
    access_token: str
    event_queue_capacity: int
    offline_buffer: int
    offline_timeout: float
    """seconds"""
    realtime: "ClientOptions"


class BroadcastPayload(TypedDict):
    """What ``on_broadcast`` callbacks receive (as the official package)."""

    event: str
    payload: Any
    meta: NotRequired[Dict[str, Any]]


class PostgresChangesPayload(TypedDict):
    """What ``on("postgres_changes", ...)`` callbacks receive (realtime-js shape)."""

    schema: str
    table: str
    commit_timestamp: Optional[str]
    eventType: str
    new: Dict[str, Any]
    old: Dict[str, Any]
    errors: Optional[List[str]]


Presence = Dict[str, Any]
RealtimePresenceState = Dict[str, List[Presence]]

__all__ = [
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
