"""One Python client under the benchmark (driven by `supa-realtime-bench`).

    python bench/py_client.py --impl ours|official --url ws://127.0.0.1:PORT/realtime/v1 --key KEY --topic T

Subscribes to broadcast event "b" on topic T and counts what reaches its callback; prints
"READY" once subscribed. Commands on stdin, one per line, each answered by one JSON line:

    STOP       -> {"count": n, "secs": s}  callbacks since READY, s = first..last callback
    RTT n      -> {"rtt_ms": [...]}        n round trips on its own channel (self: true)
    EXIT       -> exits

Both packages are used through the same API (the official `realtime` names, which
`supa_realtime` also exports): AsyncRealtimeClient, channel, on_broadcast, subscribe,
send_broadcast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["ours", "official"], required=True)
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--topic", required=True)
    a = ap.parse_args()
    if a.impl == "ours":
        from supa_realtime import AsyncRealtimeClient
    else:
        from realtime import AsyncRealtimeClient

    client = AsyncRealtimeClient(a.url, a.key)
    await client.connect()

    state = {"count": 0, "first": 0.0, "last": 0.0}

    def on_b(_m: object) -> None:
        now = time.perf_counter()
        if state["count"] == 0:
            state["first"] = now
        state["last"] = now
        state["count"] += 1

    ch = client.channel(a.topic, {"config": {"broadcast": {"self": False}}})
    ch.on_broadcast("b", on_b)
    await ch.subscribe()

    waiter: dict = {"fut": None}

    def on_pong(_m: object) -> None:
        f = waiter["fut"]
        if f is not None and not f.done():
            f.set_result(time.perf_counter())

    rtt = client.channel(f"{a.topic}-rtt-{a.impl}", {"config": {"broadcast": {"self": True}}})
    rtt.on_broadcast("ping", on_pong)
    await rtt.subscribe()
    await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    print("READY", flush=True)
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not line or line == "EXIT":
            break
        if line == "STOP":
            secs = state["last"] - state["first"]
            print(json.dumps({"count": state["count"], "secs": secs}), flush=True)
        elif line.startswith("RTT"):
            n = int(line.split()[1])
            out = []
            for i in range(n + n // 10):
                waiter["fut"] = loop.create_future()
                t0 = time.perf_counter()
                await rtt.send_broadcast("ping", {"i": i})
                try:
                    t1 = await asyncio.wait_for(waiter["fut"], 5.0)
                except asyncio.TimeoutError:
                    continue
                if i >= n // 10:  # the first tenth warms up
                    out.append((t1 - t0) * 1000.0)
            print(json.dumps({"rtt_ms": out}), flush=True)
    try:
        await client.close()
    except Exception:
        pass


if __name__ == "__main__":
    asyncio.run(main())
