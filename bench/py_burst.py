"""One Python client under the burst benchmark (driven by `supa-realtime-bench`).

    python bench/py_burst.py --impl ours-async|ours-sync|official --url ws://HOST:PORT/realtime/v1
        --key KEY --n N [--vsn 1.0.0|2.0.0] [--binary] [--idle SECONDS]

Joins topic "burst" with one callback for broadcast event "b" that only counts, and waits
until N callbacks ran or none came for --idle seconds. Prints one JSON line:
{"count", "secs" (first..last callback), "peak_rss_kb"}. The official `realtime` package
speaks 1.0.0 only; --vsn and --binary apply to supa_realtime.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import threading
import time
from typing import Any, Dict


def peak_rss_kb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def counter() -> Any:
    state: Dict[str, float] = {"count": 0, "first": 0.0, "last": 0.0}

    def on_b(_m: object) -> None:
        now = time.perf_counter()
        if state["count"] == 0:
            state["first"] = now
        state["last"] = now
        state["count"] += 1

    return state, on_b


def report(state: Dict[str, float]) -> None:
    print(json.dumps({"count": int(state["count"]), "secs": state["last"] - state["first"], "peak_rss_kb": peak_rss_kb()}), flush=True)


def options(a: argparse.Namespace) -> Dict[str, Any]:
    opts: Dict[str, Any] = {"vsn": a.vsn}
    if a.binary:
        opts["params"] = {"binary": "1"}
    return opts


async def run_async(a: argparse.Namespace) -> None:
    if a.impl == "official":
        from realtime import AsyncRealtimeClient

        client = AsyncRealtimeClient(a.url, a.key)
    else:
        from supa_realtime import AsyncRealtimeClient as Ours

        client = Ours(a.url, a.key, options=options(a))
    await client.connect()
    state, on_b = counter()
    ch = client.channel("burst")
    ch.on_broadcast("b", on_b)
    await ch.subscribe()
    seen, idle_since = -1, time.monotonic()
    while state["count"] < a.n:
        await asyncio.sleep(0.05)
        if state["count"] != seen:
            seen, idle_since = int(state["count"]), time.monotonic()
        elif time.monotonic() - idle_since > a.idle:
            break
    report(state)
    await client.close()


def run_sync(a: argparse.Namespace) -> None:
    from supa_realtime import SyncRealtimeClient

    client = SyncRealtimeClient(a.url, a.key, options=options(a))
    state, on_b = counter()
    ch = client.channel("burst")
    ch.on_broadcast("b", on_b)
    ch.subscribe()
    seen, idle_since = -1, time.monotonic()
    done = threading.Event()
    while state["count"] < a.n and not done.wait(0.05):
        if state["count"] != seen:
            seen, idle_since = int(state["count"]), time.monotonic()
        elif time.monotonic() - idle_since > a.idle:
            break
    report(state)
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["ours-async", "ours-sync", "official"], required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--vsn", default="1.0.0")
    ap.add_argument("--binary", action="store_true")
    ap.add_argument("--idle", type=float, default=5.0)
    a = ap.parse_args()
    if a.impl == "ours-sync":
        run_sync(a)
    else:
        asyncio.run(run_async(a))


if __name__ == "__main__":
    main()
