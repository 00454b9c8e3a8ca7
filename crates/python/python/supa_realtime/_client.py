"""The public clients and channels: thin wrappers over the native core."""

from __future__ import annotations

import asyncio
import atexit
import inspect
import threading
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Self, Tuple, Union

from . import _native
from ._exceptions import AuthorizationError, NotConnectedError, RealtimeError
from ._pending import PendingChannel
from ._types import RealtimeSubscribeStates

Callback = Callable[..., Any]
SubscribeCallback = Callable[[RealtimeSubscribeStates, Optional[Exception]], Any]

DEFAULT_TIMEOUT_MS = 10_000

_CHANNEL_CONFIG_KEYS = ("broadcast", "presence", "private")
_CHANNEL_OPTION_KEYS = ("auto_reconnect", "hb_interval", "max_retries", "initial_backoff", "overflow")

_live_clients: "weakref.WeakSet[_ClientBase]" = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for c in list(_live_clients):
        try:
            if c._native_client is not None:
                c._native_client.shutdown()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _positional_arity(cb: Callback, default: int) -> int:
    """How many positional arguments `cb` accepts (capped at 8); `default` if unknown."""
    try:
        sig = inspect.signature(cb)
    except (TypeError, ValueError):
        return default
    n = 0
    for p in sig.parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            return 8
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return min(n, 8)


def _normalize_channel_params(params: Optional[Mapping[str, Any]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(config for the join, channel options) from either spelling of the params."""
    params = dict(params or {})
    config: Dict[str, Any] = dict(params.get("config") or {})
    for k in _CHANNEL_CONFIG_KEYS:
        if k in params and params[k] is not None:
            if isinstance(params[k], Mapping) and isinstance(config.get(k), Mapping):
                config[k] = {**config[k], **params[k]}
            else:
                config[k] = params[k]
    options = {k: params[k] for k in _CHANNEL_OPTION_KEYS if k in params}
    for k, v in options.items():
        if k == "auto_reconnect" and not isinstance(v, bool):
            raise TypeError("auto_reconnect must be a bool")
        if k in ("hb_interval", "max_retries") and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise TypeError(f"{k} must be a non-negative int")
        if k == "initial_backoff" and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            raise TypeError("initial_backoff must be a non-negative number of seconds")
        if k == "overflow" and v not in ("backpressure", "drop_newest", "drop_oldest"):
            raise ValueError('overflow must be "backpressure", "drop_newest" or "drop_oldest"')
    return config, options


def _normalize_client_options(options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    opts = dict(options or {})
    nested = opts.pop("realtime", None)
    if isinstance(nested, Mapping):
        opts = {**opts, **nested}
    return opts


def _subtopic(topic: str) -> str:
    return topic[len("realtime:"):] if topic.startswith("realtime:") else topic


class _SubscribeCallback:
    """Calls a ``subscribe(callback)`` callback with the join's outcome exactly once, before
    ``subscribe`` returns (as the official client does), then with every later state."""

    def __init__(self, callback: SubscribeCallback) -> None:
        self.callback = callback
        self._lock = threading.Lock()
        self._first_done = False

    def _claim_first(self) -> bool:
        with self._lock:
            if self._first_done:
                return False
            self._first_done = True
            return True

    def __call__(self, state: RealtimeSubscribeStates, error: Optional[Exception]) -> Any:
        """From the status stream."""
        if not self._first_done and not self._claim_first():
            return None
        if self._first_done and getattr(self, "_skip_next", False):
            self._skip_next = False
            return None
        return self.callback(state, error)

    def outcome(self, state: RealtimeSubscribeStates, error: Optional[Exception]) -> Any:
        """From subscribe itself."""
        if self._claim_first():
            self._skip_next = True
            return self.callback(state, error)
        return None


def _outcome_state(status: str) -> RealtimeSubscribeStates:
    try:
        return RealtimeSubscribeStates(status)
    except ValueError:
        return RealtimeSubscribeStates.CHANNEL_ERROR


class _ChannelBase:
    def __init__(self, client: "_ClientBase", native: Any, params: Optional[Mapping[str, Any]]) -> None:
        self._client = client
        self._native = native
        self.params: Dict[str, Any] = dict(params or {})
        self._config, self._options = _normalize_channel_params(params)
        self._subscribe_callbacks: List[SubscribeCallback] = []

    # -- identity and state ---------------------------------------------------------------
    @property
    def topic(self) -> str:
        """``realtime:<name>``."""
        return str(self._native.topic)

    @property
    def name(self) -> str:
        """The sub-topic ``<name>``."""
        return str(self._native.name)

    @property
    def status(self) -> str:
        """``IDLE``, ``JOINING``, ``SUBSCRIBED``, ``TIMED_OUT``, ``CHANNEL_ERROR``, ``LEAVING``
        or ``CLOSED``."""
        return str(self._native.status)

    @property
    def status_reason(self) -> Optional[str]:
        """The server's reason for a ``CHANNEL_ERROR`` or a server-side ``CLOSED``."""
        r = self._native.status_reason
        return None if r is None else str(r)

    @property
    def is_joined(self) -> bool:
        return self.status == "SUBSCRIBED"

    def presence_state(self) -> Dict[str, List[Dict[str, Any]]]:
        """``{key: [presence, ...]}``; each presence is the tracked state plus ``presence_ref``."""
        return dict(self._native.presence_state())

    @property
    def _pending(self) -> bool:
        return isinstance(self._native, PendingChannel)

    def _live(self) -> Any:
        """The native channel, created (and the client connected) if it was pending."""
        if isinstance(self._native, PendingChannel):
            pending = self._native
            real = self._client._native.channel(pending.name, pending.config)
            pending.replay(real)
            self._native = real
        return self._native

    def _rest_args(self, event: str, payload: Any) -> Tuple[Any, ...]:
        """The arguments of ``_native.rest_broadcast`` for a channel that has no socket yet."""
        pending = self._native
        client = self._client
        return (client.url, client.apikey, client._opts.get("access_token"), pending.name,
                event, payload, bool(pending.config.get("private")), client._opts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(topic={self.topic!r}, status={self.status})"

    # -- listeners (chainable, sync in both flavours) ---------------------------------------
    def on(self, event: str, filter: Optional[Mapping[str, Any]] = None, callback: Optional[Callback] = None) -> Self:
        """Listen to ``"broadcast"``, ``"presence"``, ``"postgres_changes"`` (or ``"system"``)
        events; returns the channel, for chaining.

        * ``broadcast`` — ``filter={"event": "message"}`` (``"*"`` = all, case-insensitive).
          The callback gets the **payload the sender sent** (``payload["text"]``); a callback
          taking two arguments gets ``(payload, message)`` where ``message`` is
          ``{"type": "broadcast", "event": ..., "payload": ..., "meta"?: ...}``.
        * ``presence`` — ``filter={"event": "sync" | "join" | "leave" | "*"}``. ``sync`` gets
          ``{"event": "sync", "presences": {key: [presence, ...]}}``; ``join`` gets
          ``{"event": "join", "key", "presence", "newPresences", "currentPresences"}`` and
          ``leave`` ``{"event": "leave", "key", "presence", "leftPresences",
          "currentPresences"}`` (also in snake_case), ``presence`` being the first presence
          that joined/left, i.e. the state it tracked plus ``presence_ref``. Added to a
          channel that is already subscribed, a presence callback makes it join again with
          presence enabled (as the official client does), so the presence state arrives.
        * ``postgres_changes`` — ``filter={"event": "*"|"INSERT"|"UPDATE"|"DELETE",
          "schema": "public", "table": ..., "filter": "col=eq.value"}``; must be added before
          ``subscribe()``. The callback gets ``{"eventType", "schema", "table",
          "commit_timestamp", "new", "old", "errors"}`` with typed column values.

        Example::

            channel = client.channel("chat-room")
            channel.on("broadcast", {"event": "message"}, lambda p: print(p["text"]))
            channel.subscribe()
        """
        if callback is None and callable(filter):
            callback, filter = filter, None
        if callback is None or not callable(callback):
            raise TypeError("on(event, filter, callback): callback must be callable")
        f = dict(filter or {})
        kind = event.lower()
        if kind == "broadcast":
            with_message = _positional_arity(callback, 1) >= 2
            self._native.on_broadcast(str(f.get("event", "*")), callback, False, with_message)
        elif kind == "presence":
            self._native.on_presence(str(f.get("event", "*")), callback)
        elif kind == "postgres_changes":
            self._native.on_postgres_changes(
                str(f.get("event", "*")), callback, f.get("schema"), f.get("table"), f.get("filter"), False
            )
        elif kind == "system":
            self._native.on_system(callback, False)
        else:
            raise ValueError(f'unknown event {event!r}: use "broadcast", "presence", "postgres_changes" or "system"')
        return self

    def on_broadcast(self, event: str, callback: Callable[[Dict[str, Any]], Any]) -> Self:
        """Official-style: ``callback({"event": ..., "payload": ..., "meta"?: ...})``."""
        self._native.on_broadcast(event, callback, True, False)
        return self

    def on_postgres_changes(
        self,
        event: Union[str, Any],
        callback: Callable[[Dict[str, Any]], Any],
        table: Optional[str] = None,
        schema: Optional[str] = None,
        filter: Optional[str] = None,
        select: Optional[List[str]] = None,
    ) -> Self:
        """Official-style: ``callback({"data": {"schema", "table", "commit_timestamp",
        "type", "errors", "columns", "record"?, "old_record"?}, "ids": [...]})``.
        ``select`` is not supported by the server and is ignored."""
        ev = getattr(event, "value", event)
        self._native.on_postgres_changes(str(ev), callback, schema, table, filter, True)
        return self

    def on_system(self, callback: Callable[[Any], Any]) -> Self:
        """Official-style: ``callback(SystemPayload)`` (``.extension``, ``.status``,
        ``.message``, ``.channel``)."""
        self._native.on_system(callback, True)
        return self

    def on_presence_sync(self, callback: Callable[[], Any]) -> Self:
        """Official-style: ``callback()`` once the presence state is consistent."""
        self._native.on_presence("official_sync", callback)
        return self

    def on_presence_join(self, callback: Callable[[str, List[Any], List[Any]], Any]) -> Self:
        """Official-style: ``callback(key, current_presences, new_presences)``."""
        self._native.on_presence("official_join", callback)
        return self

    def on_presence_leave(self, callback: Callable[[str, List[Any], List[Any]], Any]) -> Self:
        """Official-style: ``callback(key, current_presences, left_presences)``."""
        self._native.on_presence("official_leave", callback)
        return self

    def on_error(self, callback: Callable[[Exception], Any]) -> Self:
        """``callback(error)`` whenever the channel errors (join refused, crashed, socket
        lost: CHANNEL_ERROR) or a join times out (TIMED_OUT); ``error`` is an
        :class:`AuthorizationError`, :class:`ChannelError` or :class:`RealtimeTimeoutError`
        carrying the server's reason (the class follows the error's kind). The channel
        keeps rejoining unless its ``auto_reconnect``/``max_retries`` options stop it."""
        self._native.on_status("error", callback, False)
        return self

    def on_close(self, callback: Callable[..., Any]) -> Self:
        """``callback()`` whenever the channel closes (unsubscribed, or closed by the server);
        a callback taking one argument gets the server's reason (or None)."""
        self._native.on_status("close", callback, _positional_arity(callback, 0) >= 1)
        return self

    # -- helpers ---------------------------------------------------------------------------
    def _subscribe_args(self, callback: Any, timeout: Optional[float]) -> Tuple[Optional[_SubscribeCallback], Optional[float]]:
        if callback is not None and not callable(callback):
            if isinstance(callback, bool) or not isinstance(callback, (int, float)):
                raise TypeError("subscribe(callback=None, timeout=10000): callback must be callable")
            callback, timeout = None, float(callback)
        wrapper = None
        if callback is not None:
            wrapper = _SubscribeCallback(callback)
            self._native.on_status("subscribe", wrapper, False)
        return wrapper, timeout


class SyncRealtimeChannel(_ChannelBase):
    """A channel of a :class:`SyncRealtimeClient`. Methods block (with the GIL released);
    callbacks run on the client's dispatcher thread.

    Example::

        channel = client.channel("chat-room")
        channel.on("broadcast", {"event": "message"}, lambda p: print(p["text"]))
        channel.subscribe()
        channel.send("message", {"text": "Hello everyone!"})
    """

    def subscribe(self, callback: Union[SubscribeCallback, int, float, None] = None, timeout: Optional[float] = None) -> Self:
        """Join the channel and wait until it is SUBSCRIBED.

        ``subscribe()`` / ``subscribe(timeout=10000)`` (milliseconds): raises
        :class:`AuthorizationError` (key, token or permissions refused, with the server's
        reason), :class:`ChannelError` or :class:`RealtimeTimeoutError`, and then leaves the
        channel (status CLOSED) so that it can be subscribed again.

        ``subscribe(callback)`` (official style): never raises for the join's outcome;
        ``callback(RealtimeSubscribeStates, error)`` is called on every state change and the
        channel keeps retrying in the background.
        """
        cb, timeout = self._subscribe_args(callback, timeout)
        if cb is None:
            self._live().subscribe(DEFAULT_TIMEOUT_MS if timeout is None else timeout, True)
            return self
        try:
            self._live().subscribe(None, False)
        except RealtimeError as e:
            cb.outcome(_outcome_state(self.status), e)
        else:
            cb.outcome(RealtimeSubscribeStates.SUBSCRIBED, None)
        return self

    def unsubscribe(self) -> None:
        """Leave the channel (it stays known to the client; subscribe again at will)."""
        if not self._pending:
            self._native.unsubscribe()

    def send(self, event_type: str, payload: Any, options: Optional[Mapping[str, Any]] = None) -> None:
        """Broadcast ``payload`` as ``event_type`` to the channel's subscribers.

        Joined: over the socket (waits for the server's ack if ``broadcast.ack``).
        Rejoining after a connection loss: buffered and sent once joined. Never subscribed:
        through the REST endpoint. Left or closed: raises :class:`NotConnectedError`.
        ``options={"http": True}`` always uses REST.
        """
        if self._pending:
            # Never subscribed, on a client with no socket yet: REST, and still no socket.
            _native.rest_broadcast(*self._rest_args(event_type, payload))
        elif options and options.get("http"):
            self._native.http_send(event_type, payload)
        else:
            self._native.send(event_type, payload)

    def send_broadcast(self, event: str, data: Any) -> None:
        """Official-style alias of :meth:`send`."""
        self.send(event, data)

    def http_send(self, event: str, payload: Any) -> None:
        """Broadcast through the REST endpoint, whatever the socket does."""
        if self._pending:
            _native.rest_broadcast(*self._rest_args(event, payload))
        else:
            self._native.http_send(event, payload)

    def track(self, state: Mapping[str, Any]) -> None:
        """Track this client's presence with ``state`` (tracked again after reconnects)."""
        self._live().track(state)

    def untrack(self) -> None:
        """Stop tracking presence."""
        if not self._pending:
            self._native.untrack()


class AsyncRealtimeChannel(_ChannelBase):
    """A channel of an :class:`AsyncRealtimeClient`. Listener registration is sync and
    chainable; joins, sends and presence are coroutines; callbacks run on the event loop
    (``async def`` callbacks are awaited).

    Example::

        channel = client.channel("chat-room")
        channel.on_broadcast("message", lambda m: print(m["payload"]))
        await channel.subscribe()
        await channel.send_broadcast("message", {"text": "hi"})
    """

    def _loop(self) -> None:
        self._client._set_loop()

    async def subscribe(self, callback: Union[SubscribeCallback, int, float, None] = None, timeout: Optional[float] = None) -> Self:
        """See :meth:`SyncRealtimeChannel.subscribe`."""
        self._loop()
        cb, timeout = self._subscribe_args(callback, timeout)
        if cb is None:
            await self._live().subscribe_async(DEFAULT_TIMEOUT_MS if timeout is None else timeout, True)
            return self
        try:
            await self._live().subscribe_async(None, False)
        except RealtimeError as e:
            r = cb.outcome(_outcome_state(self.status), e)
        else:
            r = cb.outcome(RealtimeSubscribeStates.SUBSCRIBED, None)
        if inspect.isawaitable(r):
            await r
        return self

    async def unsubscribe(self) -> None:
        self._loop()
        if not self._pending:
            await self._native.unsubscribe_async()

    async def send(self, event_type: str, payload: Any, options: Optional[Mapping[str, Any]] = None) -> None:
        """See :meth:`SyncRealtimeChannel.send`."""
        self._loop()
        if self._pending:
            await _native.rest_broadcast_async(*self._rest_args(event_type, payload))
        elif options and options.get("http"):
            await self._native.http_send_async(event_type, payload)
        else:
            await self._native.send_async(event_type, payload)

    async def send_broadcast(self, event: str, data: Any) -> None:
        await self.send(event, data)

    async def http_send(self, event: str, payload: Any, *, timeout: Optional[float] = None) -> None:
        self._loop()
        if self._pending:
            await _native.rest_broadcast_async(*self._rest_args(event, payload))
        else:
            await self._native.http_send_async(event, payload)

    async def track(self, user_status: Mapping[str, Any]) -> None:
        self._loop()
        await self._live().track_async(user_status)

    async def untrack(self) -> None:
        self._loop()
        if not self._pending:
            await self._native.untrack_async()


class _ClientBase:
    _channel_class: type = _ChannelBase

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        auto_reconnect: bool = True,
        params: Optional[Dict[str, Any]] = None,
        hb_interval: float = 25,
        max_retries: Optional[int] = None,
        initial_backoff: float = 1.0,
        timeout: float = 10,
        *,
        options: Optional[Mapping[str, Any]] = None,
        lazy: bool = False,
        _is_async: bool = False,
    ) -> None:
        if not isinstance(url, str) or not url.split("://", 1)[0].lower() in ("http", "https", "ws", "wss"):
            raise ValueError("url must be a valid WebSocket URL or HTTP URL string")
        opts: Dict[str, Any] = {
            "auto_reconnect": auto_reconnect,
            "hb_interval": hb_interval * 1000,
            "max_retries": max_retries,
            "initial_backoff": initial_backoff,
            "timeout": timeout * 1000,
        }
        if params:
            opts["params"] = dict(params)
        opts.update(_normalize_client_options(options))
        self.url = url
        self.apikey = token or ""
        self.timeout_ms: float = float(opts.get("timeout") or DEFAULT_TIMEOUT_MS)
        self._opts = opts
        self._is_async = _is_async
        self._native_client: Optional[_native.NativeClient] = None
        # Before the socket exists (lazy): client callbacks to register once it does.
        self._pending_handlers: List[Tuple[str, Tuple[Any, ...]]] = []
        self._channels: Dict[str, _ChannelBase] = {}
        _live_clients.add(self)
        if not lazy:
            self._connect_native()

    @property
    def _native(self) -> Any:
        """The native client; creating it (lazy clients) opens the socket."""
        n = self._native_client
        return n if n is not None else self._connect_native()

    def _connect_native(self) -> Any:
        n = _native.NativeClient(self.url, self.apikey, self._opts, self._is_async)
        self._native_client = n
        self._set_loop()
        for method, args in self._pending_handlers:
            getattr(n, method)(*args)
        self._pending_handlers.clear()
        return n

    def _client_handler(self, method: str, *args: Any) -> None:
        if self._native_client is None:
            self._pending_handlers.append((method, args))
        else:
            getattr(self._native_client, method)(*args)

    def _set_auth_now(self, token: Optional[str]) -> None:
        """``set_auth`` without waiting (the token goes to the connection task in order with
        later joins); callable from the event loop thread too."""
        if not self._pending_auth(token):
            self._native.set_auth(token)

    def _pending_auth(self, token: Optional[str]) -> bool:
        """Remember ``token`` (a socket created later starts with it); False if the socket
        exists already, and the caller hands it the token."""
        if token:
            self._opts["access_token"] = token
        else:
            self._opts.pop("access_token", None)
        return self._native_client is None

    # -- supabase-py compatibility -----------------------------------------------------------
    @property
    def realtime(self) -> Self:
        """The realtime client itself (so ``supabase.realtime.on_open(...)`` works)."""
        return self

    @property
    def channels(self) -> Dict[str, _ChannelBase]:
        """``{topic: channel}``."""
        return dict(self._channels)

    @property
    def is_connected(self) -> bool:
        n = self._native_client
        return n is not None and bool(n.is_connected)

    @property
    def heartbeat_latency(self) -> Optional[float]:
        """Round trip of the last answered heartbeat, in seconds (None before the first)."""
        n = self._native_client
        v = None if n is None else n.heartbeat_latency
        return None if v is None else float(v)

    @property
    def access_token(self) -> Optional[str]:
        """The token joins use (``set_auth``'s, else the options' ``access_token``, else
        the key)."""
        # What was set here, not the connection task's copy, which follows a moment later.
        t = self._opts.get("access_token")
        return str(t) if t else (self.apikey or None)

    def connection_state(self) -> str:
        """``connecting``, ``open``, ``reconnecting`` or ``closed`` (also before a lazy
        client's first subscribe)."""
        n = self._native_client
        return "closed" if n is None else str(n.connection_state())

    def _set_loop(self) -> None:
        pass

    def channel(self, topic: str, params: Optional[Mapping[str, Any]] = None) -> Any:
        """A channel on ``topic`` (the same object again for a topic the client already has).

        ``params``: ``{"broadcast": {"self": bool, "ack": bool}, "presence": {"key": str},
        "private": bool}`` (or the official ``{"config": {...}}``), plus the channel options
        (see :class:`RealtimeChannelOptions`): ``auto_reconnect`` and ``max_retries`` (when
        this channel stops rejoining after failures), ``initial_backoff`` (seconds, its first
        rejoin delay) and ``hb_interval`` (ms; the socket's heartbeat follows the smallest
        interval asked by the client or any of its channels).
        """
        self._set_loop()
        full = topic if topic.startswith("realtime:") else f"realtime:{topic}"
        existing = self._channels.get(full)
        if existing is not None and existing.status not in ("LEAVING",):
            return existing
        config, options = _normalize_channel_params(params)
        cfg = {**config, **options}
        if self._native_client is None:
            native: Any = PendingChannel(_subtopic(full), cfg)
        else:
            native = self._native_client.channel(_subtopic(full), cfg)
        ch = self._channel_class(self, native, params)
        self._channels[full] = ch
        return ch

    def get_channels(self) -> List[Any]:
        """Every channel of the client."""
        return list(self._channels.values())

    def _forget(self, channel: Any) -> None:
        topic = channel.topic
        if self._channels.get(topic) is channel:
            del self._channels[topic]

    def on_open(self, callback: Callable[[], Any]) -> Self:
        """``callback()`` each time the socket opens, and once soon after registration if it
        is open already (an eager client connects as soon as it is created, a lazy one when
        a channel is first subscribed)."""
        self._set_loop()
        self._client_handler("on_open", callback)
        return self

    def on_close(self, callback: Callable[..., Any]) -> Self:
        """``callback()`` each time the socket closes (a callback taking one argument gets
        the reason, two get ``(code, reason)``). The client reconnects unless closed."""
        self._set_loop()
        self._client_handler("on_close", callback, _positional_arity(callback, 0))
        return self

    def on_error(self, callback: Callable[[Exception], Any]) -> Self:
        """``callback(error)`` for each socket error (failed attempt, refused key,
        unanswered heartbeat, giving up)."""
        self._set_loop()
        self._client_handler("on_error", callback)
        return self


class SyncRealtimeClient(_ClientBase):
    """A realtime client for code without asyncio. It connects in the background at once
    (``lazy=True``: when a channel is first subscribed) and keeps the socket alive (heartbeats, reconnect forever, rejoin) on a Rust runtime
    thread; callbacks run on a dedicated dispatcher thread.

    Example::

        from supa_realtime import SyncRealtimeClient

        client = SyncRealtimeClient("ws://127.0.0.1:54321/realtime/v1", ANON_KEY)
        channel = client.channel("room-1")
        channel.on("broadcast", {"event": "message"}, print).subscribe()
        channel.send("message", {"text": "hi"})
        client.remove_all_channels()
    """

    _channel_class = SyncRealtimeChannel

    def __init__(self, url: str, token: Optional[str] = None, auto_reconnect: bool = True, params: Optional[Dict[str, Any]] = None,
                 hb_interval: float = 25, max_retries: Optional[int] = None, initial_backoff: float = 1.0, timeout: float = 10,
                 *, options: Optional[Mapping[str, Any]] = None, lazy: bool = False) -> None:
        super().__init__(url, token, auto_reconnect, params, hb_interval, max_retries, initial_backoff, timeout,
                         options=options, lazy=lazy, _is_async=False)

    def channel(self, topic: str, params: Optional[Mapping[str, Any]] = None) -> SyncRealtimeChannel:
        return super().channel(topic, params)  # type: ignore[no-any-return]

    def get_channels(self) -> List[SyncRealtimeChannel]:
        return super().get_channels()

    def remove_channel(self, channel: SyncRealtimeChannel) -> None:
        """Unsubscribe and forget ``channel``."""
        if not channel._pending:
            self._native.remove_channel(channel._native)
        self._forget(channel)

    def remove_all_channels(self) -> None:
        """Unsubscribe and forget every channel."""
        if self._native_client is not None:
            self._native_client.remove_all_channels()
        self._channels.clear()

    def connect(self, timeout: Optional[float] = None) -> None:
        """Wait until the socket is open (reopen it after :meth:`close`). Raises the next
        failed attempt's error (e.g. :class:`AuthorizationError` for a refused key);
        ``timeout`` in seconds."""
        self._native.connect(None if timeout is None else timeout * 1000)

    def close(self) -> None:
        """Close the socket and stop reconnecting. Channels are kept and rejoin on
        :meth:`connect`."""
        if self._native_client is not None:
            self._native_client.close()

    def set_auth(self, token: Optional[str]) -> None:
        """Use ``token`` for every joined channel (pushed at once) and every later join;
        ``None``: back to the key."""
        self._set_auth_now(token)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncRealtimeClient(_ClientBase):
    """The asyncio client, with the official ``realtime.AsyncRealtimeClient``'s interface
    (``hb_interval`` and ``timeout`` in seconds there). Callbacks run on the event loop
    the client was last used from, in batches; ``async def`` callbacks are awaited.

    Example::

        from supa_realtime import AsyncRealtimeClient

        client = AsyncRealtimeClient("ws://127.0.0.1:54321/realtime/v1", ANON_KEY)
        await client.connect()
        channel = client.channel("room-1")
        channel.on_broadcast("message", lambda m: print(m["payload"]))
        await channel.subscribe()
    """

    _channel_class = AsyncRealtimeChannel

    def __init__(self, url: str, token: Optional[str] = None, auto_reconnect: bool = True, params: Optional[Dict[str, Any]] = None,
                 hb_interval: float = 25, max_retries: Optional[int] = None, initial_backoff: float = 1.0, timeout: float = 10,
                 *, options: Optional[Mapping[str, Any]] = None, lazy: bool = False) -> None:
        super().__init__(url, token, auto_reconnect, params, hb_interval, max_retries, initial_backoff, timeout,
                         options=options, lazy=lazy, _is_async=True)
        self._set_loop()

    def _set_loop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._native_client is not None:
            self._native_client.set_loop(loop)

    def channel(self, topic: str, params: Optional[Mapping[str, Any]] = None) -> AsyncRealtimeChannel:
        return super().channel(topic, params)  # type: ignore[no-any-return]

    def get_channels(self) -> List[AsyncRealtimeChannel]:
        return super().get_channels()

    async def remove_channel(self, channel: AsyncRealtimeChannel) -> None:
        self._set_loop()
        if not channel._pending:
            await self._native.remove_channel_async(channel._native)
        self._forget(channel)

    async def remove_all_channels(self) -> None:
        self._set_loop()
        if self._native_client is not None:
            await self._native_client.remove_all_channels_async()
        self._channels.clear()

    async def connect(self, timeout: Optional[float] = None) -> None:
        """See :meth:`SyncRealtimeClient.connect`."""
        self._set_loop()
        await self._native.connect_async(None if timeout is None else timeout * 1000)

    async def close(self) -> None:
        self._set_loop()
        if self._native_client is not None:
            await self._native_client.close_async()

    async def set_auth(self, token: Optional[str]) -> None:
        self._set_loop()
        if not self._pending_auth(token):
            await self._native.set_auth_async(token)

    async def __aenter__(self) -> Self:
        self._set_loop()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


RealtimeClient = SyncRealtimeClient
