"""A channel before its client has a socket.

A client created with ``lazy=True`` (what :func:`supa_realtime.create_client` makes for
``supabase.realtime``) opens no socket until a channel is subscribed, as the official
clients do: a program that only queries the database never connects to realtime. Until
then a channel's native half is a :class:`PendingChannel`, which answers the read-only
questions (topic, status, presence state) and records listener registrations; when the
channel is first used for something that needs the server, the client creates the real
native channel and :meth:`PendingChannel.replay` hands it every recorded registration, in
order.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

# The native channel's listener methods; any of them can be recorded.
_LISTENER_METHODS = ("on_broadcast", "on_presence", "on_postgres_changes", "on_system", "on_status")


class PendingChannel:
    """Stands in for a ``_native.NativeChannel`` until the client connects."""

    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.topic = f"realtime:{name}"
        self.config: Dict[str, Any] = dict(config)
        self.status = "IDLE"
        self.status_reason: Optional[str] = None
        self._calls: List[Tuple[str, Tuple[Any, ...]]] = []

    def presence_state(self) -> Dict[str, List[Dict[str, Any]]]:
        return {}

    def same_as(self, other: Any) -> bool:
        return other is self

    def __getattr__(self, attr: str) -> Any:
        if attr in _LISTENER_METHODS:
            def record(*args: Any) -> None:
                self._calls.append((attr, args))

            return record
        raise AttributeError(attr)

    def replay(self, native: Any) -> None:
        """Register every recorded listener on the real native channel."""
        for method, args in self._calls:
            getattr(native, method)(*args)
        self._calls.clear()


__all__ = ["PendingChannel"]
