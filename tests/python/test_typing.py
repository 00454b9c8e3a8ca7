"""mypy accepts code that uses the public API (stubs, py.typed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SAMPLE = textwrap.dedent(
    '''
    from typing import Any, Dict, List, Optional
    from supa_realtime import (
        AsyncClient, AsyncRealtimeChannel, AsyncRealtimeClient, AuthorizationError, Client,
        NotConnectedError, RealtimeSubscribeStates, SyncRealtimeChannel, SyncRealtimeClient,
        create_async_client, create_client,
    )

    def handle(payload: Dict[str, Any]) -> None:
        print(payload["text"])

    def sync_usage(url: str, key: str) -> None:
        client: Client = create_client(url, key, {"hb_interval": 30000})
        rt: SyncRealtimeClient = client.realtime
        channel: SyncRealtimeChannel = client.channel("room", {"broadcast": {"self": True}})
        channel.on("broadcast", {"event": "message"}, handle).on("presence", {"event": "sync"}, handle)
        channel.subscribe(timeout=5000)
        try:
            channel.send("message", {"text": "hi"})
        except NotConnectedError as e:
            reason: Optional[str] = e.reason
        channel.track({"user": "a"})
        state: Dict[str, List[Dict[str, Any]]] = channel.presence_state()
        client.realtime.on_open(lambda: None)
        client.remove_channel(channel)
        client.remove_all_channels()

    async def async_usage(url: str, key: str) -> None:
        client: AsyncClient = await create_async_client(url, key)
        rt: AsyncRealtimeClient = client.realtime
        channel: AsyncRealtimeChannel = client.channel("room")
        def on_state(state: RealtimeSubscribeStates, err: Optional[Exception]) -> None: ...
        channel.on_broadcast("m", lambda m: None).on_presence_sync(lambda: None)
        await channel.subscribe(on_state)
        await channel.send_broadcast("m", {"x": 1})
        try:
            await channel.track({"x": 1})
        except AuthorizationError:
            pass
        await client.remove_all_channels()
        await client.close()
    '''
)


def test_mypy_accepts_public_api_usage(tmp_path: Path) -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed (pip install -r crates/python/requirements-dev.txt)")
    f = tmp_path / "usage.py"
    f.write_text(SAMPLE)
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy"), str(f)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
