"""Exceptions. Every error the client raises is a :class:`RealtimeError`; the subclass
tells what kind it is (retryable or not), ``reason`` is the server's reason, verbatim,
when it gave one, and ``kind`` the client's error kind as a string.

Where the official ``realtime`` package has a class for the same failure
(``AuthorizationError``, ``NotConnectedError``, ``RealtimeHTTPError``), ours subclasses
it, so code written against the official names (``from realtime import
NotConnectedError``) catches what this package raises. The official classes' constructors
take other arguments and do not call ``Exception.__init__``, so ours set the official
attributes (``message``, ``offending_func_name``, ``status``) themselves."""

from __future__ import annotations

import re
from typing import Optional

import realtime.exceptions as _official


class RealtimeError(Exception):
    """Base class of every error of this package."""

    def __init__(self, message: str = "", reason: Optional[str] = None, kind: Optional[str] = None) -> None:
        Exception.__init__(self, message)
        self.message: str = message
        self.reason: Optional[str] = reason
        self.kind: Optional[str] = kind

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.message, self.reason, self.kind))


class AuthorizationError(RealtimeError, _official.AuthorizationError):
    """The server refused the key or token (handshake 401/403), or refused a join for
    token or permission reasons (e.g. ``Unauthorized: You do not have permissions to read
    from this Channel topic``, ``InvalidJWTToken: Token has expired ...``)."""


class NotConnectedError(RealtimeError, _official.NotConnectedError):
    """The operation needs a joined channel or an open socket: a send on a channel that was
    left or closed, a send while offline with the "fail" offline policy, reconnecting gave
    up, or the client was closed."""

    def __init__(self, message: str = "", reason: Optional[str] = None, kind: Optional[str] = None) -> None:
        super().__init__(message, reason, kind)
        # The official class names the method that needed the connection; ours knows the
        # message only.
        self.offending_func_name: str = ""


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


class RealtimeHTTPError(RealtimeError, _official.RealtimeHTTPError):
    """The REST broadcast endpoint answered with an error status (``status``: the HTTP
    status, when the message carries one)."""

    def __init__(self, message: str = "", reason: Optional[str] = None, kind: Optional[str] = None) -> None:
        super().__init__(message, reason, kind)
        self.status: Optional[int] = _status_of(message)


def _status_of(message: str) -> Optional[int]:
    # The core words it "REST broadcast answered HTTP <status>".
    m = re.search(r"\bHTTP (\d{3})\b", message)
    return int(m.group(1)) if m else None


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
