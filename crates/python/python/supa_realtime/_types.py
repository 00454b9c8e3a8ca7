"""Types: the official package's enums (re-exported) and payload shapes, and this package's
options."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover
    from typing_extensions import NotRequired, TypedDict  # type: ignore[assignment]


# The official package's enums themselves, not look-alikes: a subscribe callback receives
# `realtime.RealtimeSubscribeStates.SUBSCRIBED`, so code comparing with the official names
# (`==`, `is`, `isinstance`, `match`) behaves as it does with the official client.
from realtime.types import (  # noqa: E402
    ChannelStates,
    RealtimePostgresChangesListenEvent,
    RealtimePresenceListenEvents,
    RealtimeSubscribeStates,
)


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


class RealtimeOptions(TypedDict, total=False):
    """This package's realtime options (``SyncRealtimeClient(..., options=...)``, or the
    ``"options"`` entry of a ``ClientOptions(realtime=...)``). Durations in milliseconds
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
    "RealtimeOptions",
    "BroadcastPayload",
    "PostgresChangesPayload",
    "Presence",
    "RealtimePresenceState",
]
