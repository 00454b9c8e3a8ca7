"""pytest plugin (registered through the ``pytest11`` entry point): a real realtime server
for your tests, no Docker.

Fixtures:

* ``realtime_server`` (session scope): a :class:`supa_realtime.testing.RealtimeServer`
  started once per test session, with ``.url`` (give it to ``create_client``), ``.anon_key``,
  ``.service_role_key``, ``.realtime_url``, ``.jwt_secret`` and ``.token(role, sub)`` to mint
  a user's JWT. In memory unless a database URL is configured.

Configuration (command line, else ini option, else environment):

* ``--realtime-database-url URL`` / ini ``realtime_database_url`` /
  ``SUPA_REALTIME_TEST_DATABASE_URL``: run the server against that PostgreSQL
  (postgres_changes, private channels authorized by RLS).
* ``--realtime-server-arg=--flag=value`` (repeatable) / ini ``realtime_server_args``: extra
  ``supa-realtime-server serve`` flags.

Example (a complete test)::

    from supa_realtime import create_client

    def test_chat(realtime_server):
        supabase = create_client(realtime_server.url, realtime_server.anon_key)
        got = []
        channel = supabase.channel("room", {"broadcast": {"self": True}})
        channel.on("broadcast", {"event": "message"}, got.append).subscribe()
        channel.send("message", {"text": "hi"})
        ...
"""

from __future__ import annotations

import os
import shlex
from typing import Any, Iterator, List, Optional

import pytest

from .testing import RealtimeServer, start_server

_ENV_DATABASE_URL = "SUPA_REALTIME_TEST_DATABASE_URL"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("supa-realtime", "realtime server fixture (supa_realtime)")
    group.addoption("--realtime-database-url", default=None, metavar="URL",
                    help=f"PostgreSQL URL for the realtime_server fixture (default: in memory; env {_ENV_DATABASE_URL})")
    group.addoption("--realtime-server-arg", action="append", default=[], metavar="ARG",
                    help="extra flag for `supa-realtime-server serve` (repeatable)")
    parser.addini("realtime_database_url", "PostgreSQL URL for the realtime_server fixture", default="")
    parser.addini("realtime_server_args", "extra `supa-realtime-server serve` flags (shell words)", default="")


def _database_url(config: Any) -> Optional[str]:
    url = config.getoption("--realtime-database-url") or config.getini("realtime_database_url")
    return url or os.environ.get(_ENV_DATABASE_URL) or None


def _extra_args(config: Any) -> List[str]:
    return shlex.split(config.getini("realtime_server_args") or "") + list(config.getoption("--realtime-server-arg"))


@pytest.fixture(scope="session")
def realtime_server(pytestconfig: Any) -> Iterator[RealtimeServer]:
    """A realtime server for the session: ``.url``, ``.anon_key``, ``.service_role_key``,
    ``.token(role, sub)`` (see :mod:`supa_realtime.pytest_plugin`)."""
    server = start_server(_database_url(pytestconfig), extra_args=_extra_args(pytestconfig))
    try:
        yield server
    finally:
        server.stop()
