"""A flood of GET requests from a process of its own: `python -m tests.service.flood URL CONNECTIONS`.

Each connection asks again the moment it has its answer, while the flood is on: stdin lines `on` and `off`
switch it (it starts off, and says `ready` once its connections are open); when stdin closes, it prints how
many answers came back by status (0: none, the connection failed), as JSON, and exits.

It lowers its own CPU priority first. A connection waiting for a slow answer needs no CPU, so a route that
costs the server much still gets a request on every connection at all times; but where answers are cheap,
the test then measures what they cost the server, not how much of a small machine's CPU this load
generator takes from it."""

from __future__ import annotations

import collections
import json
import os
import sys
import threading

import httpx


def main(url: str, connections: int) -> None:
    os.nice(19)
    on, stop = threading.Event(), threading.Event()
    statuses: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()
    clients = [httpx.Client(timeout=60) for _ in range(connections)]

    def ask(client: httpx.Client) -> None:
        while on.wait() and not stop.is_set():
            try:
                status = client.get(url).status_code
            except httpx.TransportError:
                status = 0
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=ask, args=(client,), daemon=True) for client in clients]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    for line in sys.stdin:
        on.set() if line.strip() == "on" else on.clear()
    stop.set()
    on.set()
    for thread in threads:
        thread.join(timeout=60)
    print(json.dumps(statuses), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
