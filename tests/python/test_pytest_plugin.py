"""The server in the wheel and the pytest plugin, used as a user would: the `realtime_server`
fixture comes from the installed package's `pytest11` entry point (no conftest provides it),
and the README's example test runs in a pytest of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, List

import pytest

from conftest import wait_for
from supa_realtime import create_client
from supa_realtime.testing import RealtimeServer

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[2] / "README.md"


def test_realtime_server_fixture_serves_the_full_client(realtime_server: RealtimeServer) -> None:
    assert realtime_server.url.startswith("http://127.0.0.1:") and realtime_server.database_url is None
    supabase = create_client(realtime_server.url, realtime_server.anon_key)
    try:
        got: List[Any] = []
        channel = supabase.channel("plugin-room", {"broadcast": {"self": True}})
        channel.on("broadcast", {"event": "ping"}, got.append).subscribe()
        channel.send("ping", {"n": 1})
        assert wait_for(lambda: got == [{"n": 1}]), got
    finally:
        supabase.close()
    # keys are signed with the server's secret: a forged one is refused
    forged = create_client(realtime_server.url, realtime_server.token(role="anon") + "x")
    try:
        with pytest.raises(Exception, match="(?i)signature|invalid|unauthorized"):
            forged.channel("plugin-room").subscribe()
    finally:
        forged.close()


def test_readme_example_test_passes_in_a_user_suite(pytester: Any) -> None:
    text = README.read_text()
    m = re.search(r"<!-- pytest-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md has no <!-- pytest-example --> block"
    pytester.makepyfile(test_user=m.group(1))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=1)


def test_server_command_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "DATABASE_URL")}
    out = subprocess.run([sys.executable, "-m", "supa_realtime.server", "--help"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and "serve" in out.stdout and "token" in out.stdout, out
    out = subprocess.run([sys.executable, "-m", "supa_realtime.server", "serve", "--addr", "not-an-address"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "invalid value" in out.stderr.lower(), out
    out = subprocess.run([sys.executable, "-m", "supa_realtime.server", "token", "--role", "anon", "--sub", "u1"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and out.stdout.count(".") == 2, out
