"""The full Supabase client: the official ``supabase`` package's clients with this
package's realtime.

:class:`Client` subclasses ``supabase.Client`` and :class:`AsyncClient` subclasses
``supabase.AsyncClient``. Database (``table``, ``from_``, ``rpc``, ``schema``,
``postgrest``), ``auth``, ``storage`` and ``functions`` are the official packages', untouched;
only the realtime client is replaced, through the official constructor's own hook
(``_init_realtime_client``), so everything else the official constructor does (headers, URLs,
auth listener) stays as upstream wrote it.

Three things differ from upstream, on purpose:

* **Realtime works from synchronous code.** ``supabase.realtime`` is a
  :class:`~supa_realtime.SyncRealtimeClient` (upstream's sync client raises
  ``NotImplementedError``).
* **Auth reaches realtime, on both clients.** Each auth event (sign in, token refresh, user
  update, sign out) sets realtime's token before the auth call returns, so a ``subscribe``
  right after ``sign_in_with_password`` joins with the user's token and joined channels get
  the new ``access_token``; after sign out they fall back to the API key. A session that
  exists when the client is created (``create`` finds it in the auth storage) is used from
  the first join. Upstream's async client schedules ``set_auth`` as a task, which a
  following ``subscribe`` can overtake; ours is ordered.
* **No socket until a channel is subscribed** (``lazy`` realtime client): a program that
  only uses the database opens no WebSocket.

Options: the official ``ClientOptions``/``AsyncClientOptions`` as they are; their
``realtime`` dict is the official ``RealtimeClientOptions`` (``hb_interval`` and the like in
**seconds**, as upstream documents) plus, under the key ``"options"``, this package's
:class:`~supa_realtime.RealtimeOptions` (milliseconds). A plain mapping of
``RealtimeOptions`` keys is accepted too, as shorthand for the latter.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Self, TypeVar, Union

import supabase
from supabase import AsyncClientOptions, ClientOptions
from supabase_auth.types import AuthChangeEvent, Session

from ._client import AsyncRealtimeChannel, AsyncRealtimeClient, SyncRealtimeChannel, SyncRealtimeClient
from ._types import RealtimeOptions

_O = TypeVar("_O", ClientOptions, AsyncClientOptions)

_REALTIME_OPTION_KEYS = frozenset(RealtimeOptions.__annotations__)


def _official_options(options: Union[_O, Mapping[str, Any], None], cls: type) -> Any:
    """The official options object for ``options`` (a shorthand mapping becomes the realtime
    ``options`` of a default one)."""
    if options is None or isinstance(options, cls):
        return options
    if isinstance(options, Mapping):
        unknown = sorted(set(options) - _REALTIME_OPTION_KEYS)
        if unknown:
            raise TypeError(
                f"unknown realtime option(s) {unknown}: pass supabase.{cls.__name__}(...) for the "
                f"client's options, or a mapping of {sorted(_REALTIME_OPTION_KEYS)}"
            )
        return cls(realtime={"options": dict(options)})
    raise TypeError(f"options must be a supabase.{cls.__name__} or a mapping, not {type(options).__name__}")


def _bearer_token(header: Optional[str]) -> Optional[str]:
    if header and header.lower().startswith("bearer "):
        return header[len("bearer "):].strip() or None
    return None


def _realtime_kwargs(options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    kwargs = dict(options or {})
    unknown = sorted(set(kwargs) - {"auto_reconnect", "hb_interval", "max_retries", "initial_backoff", "timeout",
                                    "params", "options"})
    if unknown:
        raise TypeError(f"unknown realtime option(s) {unknown}")
    return kwargs


class Client(supabase.Client):
    """``supabase.Client`` with a realtime that works from synchronous code.

    Example::

        from supa_realtime import create_client

        supabase = create_client("http://127.0.0.1:54321", ANON_KEY)
        rows = supabase.table("countries").select("*").execute().data
        channel = supabase.channel("room-1")
        channel.on("broadcast", {"event": "message"}, print).subscribe()
    """

    realtime: SyncRealtimeClient  # type: ignore[assignment]

    def __init__(self, supabase_url: str, supabase_key: str,
                 options: Union[ClientOptions, Mapping[str, Any], None] = None) -> None:
        super().__init__(supabase_url, supabase_key, _official_options(options, ClientOptions))

    @classmethod
    def create(cls, supabase_url: str, supabase_key: str,
               options: Union[ClientOptions, Mapping[str, Any], None] = None) -> "Client":
        client = super().create(supabase_url, supabase_key, _official_options(options, ClientOptions))
        assert isinstance(client, Client)  # `create` constructs `cls`
        token = _bearer_token(client.options.headers.get("Authorization"))
        if token and token != supabase_key:
            client.realtime.set_auth(token)
        return client

    def _init_realtime_client(self, realtime_url: Any, supabase_key: str,  # type: ignore[override]
                              options: Optional[Mapping[str, Any]] = None) -> SyncRealtimeClient:
        return SyncRealtimeClient(str(realtime_url), supabase_key, lazy=True, **_realtime_kwargs(options))

    def _listen_to_auth_events(self, event: AuthChangeEvent, session: Optional[Session]) -> None:
        super()._listen_to_auth_events(event, session)
        self.realtime.set_auth(session.access_token if session else None)

    def channel(self, topic: str, params: Optional[Mapping[str, Any]] = None) -> SyncRealtimeChannel:  # type: ignore[override]
        """A realtime channel (see :meth:`SyncRealtimeClient.channel`)."""
        return self.realtime.channel(topic, params)

    def get_channels(self) -> List[SyncRealtimeChannel]:  # type: ignore[override]
        return self.realtime.get_channels()

    def remove_channel(self, channel: SyncRealtimeChannel) -> None:  # type: ignore[override]
        self.realtime.remove_channel(channel)

    def remove_all_channels(self) -> None:
        self.realtime.remove_all_channels()

    def close(self) -> None:
        """Close the realtime socket (the official client has nothing else to close)."""
        self.realtime.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(supabase.AsyncClient):
    """``supabase.AsyncClient`` with this package's asyncio realtime.

    Example::

        from supa_realtime import create_async_client

        supabase = await create_async_client("http://127.0.0.1:54321", ANON_KEY)
        rows = (await supabase.table("countries").select("*").execute()).data
        channel = supabase.channel("room-1")
        await channel.on_broadcast("message", print).subscribe()
    """

    realtime: AsyncRealtimeClient  # type: ignore[assignment]

    def __init__(self, supabase_url: str, supabase_key: str,
                 options: Union[AsyncClientOptions, Mapping[str, Any], None] = None) -> None:
        super().__init__(supabase_url, supabase_key, _official_options(options, AsyncClientOptions))

    @classmethod
    async def create(cls, supabase_url: str, supabase_key: str,
                     options: Union[AsyncClientOptions, Mapping[str, Any], None] = None) -> "AsyncClient":
        client = await super().create(supabase_url, supabase_key, _official_options(options, AsyncClientOptions))
        assert isinstance(client, AsyncClient)  # `create` constructs `cls`
        token = _bearer_token(client.options.headers.get("Authorization"))
        if token and token != supabase_key:
            client.realtime._set_auth_now(token)
        return client

    def _init_realtime_client(self, realtime_url: Any, supabase_key: str,  # type: ignore[override]
                              options: Optional[Mapping[str, Any]] = None) -> AsyncRealtimeClient:
        return AsyncRealtimeClient(str(realtime_url), supabase_key, lazy=True, **_realtime_kwargs(options))

    def _listen_to_auth_events(self, event: AuthChangeEvent, session: Optional[Session]) -> None:
        # Upstream's body, minus its `create_task(realtime.set_auth(...))`: the token is
        # handed to the connection task here, in order with the joins that follow.
        self._postgrest = None
        self._storage = None
        self._functions = None
        access_token = session.access_token if session else self.supabase_key
        auth_header = self._create_auth_header(access_token)
        self.options.headers["Authorization"] = auth_header
        self.auth._headers["Authorization"] = auth_header
        self.realtime._set_auth_now(session.access_token if session else None)

    def channel(self, topic: str, params: Optional[Mapping[str, Any]] = None) -> AsyncRealtimeChannel:  # type: ignore[override]
        """A realtime channel (see :meth:`AsyncRealtimeClient.channel`)."""
        return self.realtime.channel(topic, params)

    def get_channels(self) -> List[AsyncRealtimeChannel]:  # type: ignore[override]
        return self.realtime.get_channels()

    async def remove_channel(self, channel: AsyncRealtimeChannel) -> None:  # type: ignore[override]
        await self.realtime.remove_channel(channel)

    async def remove_all_channels(self) -> None:
        await self.realtime.remove_all_channels()

    async def close(self) -> None:
        """Close the realtime socket."""
        await self.realtime.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def create_client(supabase_url: str, supabase_key: str,
                  options: Union[ClientOptions, Mapping[str, Any], None] = None) -> Client:
    """A :class:`Client` (a ``supabase.Client``) for the project at ``supabase_url``
    (``http(s)://``; realtime at ``<url>/realtime/v1``, the database at ``<url>/rest/v1``,
    auth at ``<url>/auth/v1``) with API key ``supabase_key``.

    Example::

        supabase = create_client("http://127.0.0.1:54321", ANON_KEY)
        channel = supabase.channel("room-1")
    """
    return Client.create(supabase_url, supabase_key, options)


async def create_async_client(supabase_url: str, supabase_key: str,
                              options: Union[AsyncClientOptions, Mapping[str, Any], None] = None) -> AsyncClient:
    """The asyncio twin of :func:`create_client`: an :class:`AsyncClient`.

    Example::

        client = await create_async_client("http://127.0.0.1:54321", ANON_KEY)
        channel = client.channel("async-room")
        await channel.subscribe()
    """
    return await AsyncClient.create(supabase_url, supabase_key, options)


acreate_client = create_async_client

__all__ = ["Client", "AsyncClient", "create_client", "create_async_client", "acreate_client",
           "ClientOptions", "AsyncClientOptions"]
