"""The spec's error-handling example (seed/realtime-python-api.txt, "Error Handling Examples")
run as written against a project that allows only private channels: the public channel's
refusal, `PrivateOnly: This project only allows private channels`, is its AuthorizationError
case, with a valid key (issue 13)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from conftest import ANON_KEY, Server
from support import Out
from supa_realtime import AuthorizationError, NotConnectedError, create_client


@pytest.fixture(scope="module")
def private_only_server() -> Iterator[Server]:
    srv = Server({"--private-only": "true"}).start()
    yield srv
    srv.stop()


def test_private_only_refusal_is_the_authorization_error(private_only_server: Any, capsys: Any) -> None:
    out = Out(capsys)
    supabase = create_client(private_only_server.url, ANON_KEY)
    try:
        try:
            channel = supabase.channel("restricted-channel")
            channel.subscribe()
        except AuthorizationError:
            print("Not authorized to access this channel")
        except Exception as e:
            print(f"Failed to subscribe: {e}")
        try:
            channel.send("message", {"text": "Hello"})
        except NotConnectedError:
            print("Channel not connected, attempting to reconnect...")
            try:
                channel.subscribe()
                channel.send("message", {"text": "Hello"})
            except Exception as e:
                print(f"Reconnection failed: {e}")
        out.wait("Not authorized to access this channel")
        out.wait("Channel not connected, attempting to reconnect...")
        out.wait("Reconnection failed: ")
        assert "Failed to subscribe" not in out.read()
        # The reason is the server's, word for word.
        with pytest.raises(AuthorizationError) as refused:
            supabase.channel("another-public-channel").subscribe()
        assert "PrivateOnly: This project only allows private channels" in str(refused.value)
    finally:
        supabase.close()
