"""Exceptions. Every error the client raises is a :class:`RealtimeError`; the subclass
tells what kind it is (retryable or not), ``reason`` is the server's reason, verbatim,
when it gave one, and ``kind`` the client's error kind as a string."""

from __future__ import annotations

from typing import Optional


class RealtimeError(Exception):
    """Base class of every error of this package."""

    def __init__(self, message: str = "", reason: Optional[str] = None, kind: Optional[str] = None) -> None:
        super().__init__(message)
        self.message: str = message
        self.reason: Optional[str] = reason
        self.kind: Optional[str] = kind

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.message, self.reason, self.kind))


class AuthorizationError(RealtimeError):
    """The server refused the key or token (handshake 401/403), or refused a join for
    token or permission reasons (e.g. ``Unauthorized: You do not have permissions to read
    from this Channel topic``, ``InvalidJWTToken: Token has expired ...``)."""


class NotConnectedError(RealtimeError):
    """The operation needs a joined channel or an open socket: a send on a channel that was
    left or closed, a send while offline with the "fail" offline policy, reconnecting gave
    up, or the client was closed."""


class ChannelError(RealtimeError):
    """The server refused or closed the channel for a reason other than authorization
    (e.g. a postgres_changes binding mismatch, rate limits)."""


class RealtimeTimeoutError(RealtimeError, TimeoutError):
    """No answer in time (a join, an acknowledged broadcast, a presence push, connecting)."""


class BufferFullError(RealtimeError):
    """The channel's offline buffer is full (sends while it rejoins)."""


class InvalidInputError(RealtimeError, ValueError):
    """The call was invalid (bad URL, a postgres_changes binding added after subscribe,
    binary payload on vsn 1.0.0 ...)."""


class RealtimeHTTPError(RealtimeError):
    """The REST broadcast endpoint answered with an error status."""


class EventsDroppedError(RealtimeError):
    """Events were dropped because a callback fell behind on a client or channel that opted
    into dropping (``overflow="drop_newest"`` or ``"drop_oldest"``); the message says how
    many. Passed to the channel's ``on_error`` callbacks, never raised. The default
    (``overflow="backpressure"``) drops nothing."""


class ProtocolError(RealtimeError):
    """The server sent something the client could not understand, or the transport failed."""


__all__ = [
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
]
