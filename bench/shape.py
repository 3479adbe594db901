#!/usr/bin/env python3
"""A shaped-link TCP proxy for the benchmarks: latency and bandwidth caps on loopback.

Forwards every connection accepted on --listen to --upstream, as if across a link with:

- a round-trip time RTT: opening a connection costs one RTT before the first request
  byte is forwarded (the TCP handshake), and every byte travels RTT/2 each way, so a
  request and its response cost one more RTT;
- a bandwidth cap on the downstream direction (upstream -> client), shared by all
  connections (one link), and optionally a cap per connection (what object stores and
  CDNs apply to each TCP stream).

Bytes are forwarded in chunks of at most 64 KiB. A chunk first waits for its
connection's cap, then for the shared link, and is then delivered RTT/2 later; the proxy
reads a chunk only once the one before the previous has left the link, so it never holds
much more than the link's bandwidth-delay product per connection (back-pressure, like a
socket buffer).

Presets (issue 9):
  wan  30 ms RTT, 200 Mbit/s shared
  cdn  30 ms RTT, 50 Mbit/s per connection, 400 Mbit/s shared

Usage: bench/shape.py --preset wan --upstream 127.0.0.1:5000 [--listen 127.0.0.1:0]
Prints "listening HOST:PORT" on stdout once ready, then runs until killed.
"""
import argparse
import asyncio
import sys
import time

CHUNK = 64 * 1024

PRESETS = {
    "wan": {"rtt_ms": 30.0, "shared_mbit": 200.0, "conn_mbit": None},
    "cdn": {"rtt_ms": 30.0, "shared_mbit": 400.0, "conn_mbit": 50.0},
}


class Cap:
    """A serialising bandwidth cap: each chunk occupies the link for len/rate seconds.

    While the link is busy its clock may lag real time by up to SLACK, so a proxy woken
    late by a busy machine catches up instead of losing that time for good; a link idle
    for longer than SLACK restarts at the present (no burst after idling).
    """

    SLACK = 0.02

    def __init__(self, mbit):
        self.rate = mbit * 1e6 / 8 if mbit else None  # bytes per second
        self.free_at = 0.0

    def book(self, start, n):
        """When a chunk of `n` bytes that is ready at `start` has left this cap."""
        if self.rate is None:
            return start
        t0 = self.free_at if self.free_at >= start - self.SLACK else start
        t = t0 + n / self.rate
        self.free_at = t
        return max(t, start)


class Link:
    def __init__(self, rtt_ms, shared_mbit, conn_mbit):
        self.one_way = rtt_ms / 2000.0
        self.rtt = rtt_ms / 1000.0
        self.shared = Cap(shared_mbit)
        self.conn_mbit = conn_mbit


async def sleep_until(t):
    d = t - time.monotonic()
    if d > 0:
        await asyncio.sleep(d)


async def pump(reader, writer, link, caps, not_before):
    """Copy reader -> writer through the link: caps in order, then the one-way delay."""
    line = asyncio.Queue()

    async def deliver():
        while True:
            item = await line.get()
            if item is None:
                break
            at, data = item
            await sleep_until(at)
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    out = asyncio.ensure_future(deliver())
    prev = 0.0
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            t = max(time.monotonic(), not_before)
            for c in caps:
                t = c.book(t, len(data))
            line.put_nowait((t + link.one_way, data))
            # Back-pressure with one chunk in flight on the link, so that reading the
            # next chunk overlaps the previous one's transmission.
            await sleep_until(prev)
            prev = t
    except (ConnectionError, OSError):
        pass
    finally:
        line.put_nowait(None)
        try:
            await out
        except (ConnectionError, OSError):
            pass


async def handle(client_r, client_w, link, upstream):
    accepted = time.monotonic()
    host, port = upstream.rsplit(":", 1)
    try:
        up_r, up_w = await asyncio.open_connection(host, int(port))
    except OSError:
        client_w.close()
        return
    # The handshake: nothing reaches the server before one RTT has passed.
    established = accepted + link.rtt
    caps_down = [Cap(link.conn_mbit), link.shared] if link.conn_mbit else [link.shared]
    try:
        await asyncio.gather(
            pump(client_r, up_w, link, [], established),
            pump(up_r, client_w, link, caps_down, established),
        )
    finally:
        for w in (up_w, client_w):
            try:
                w.close()
            except OSError:
                pass


async def serve(listen, upstream, link):
    host, port = listen.rsplit(":", 1)
    srv = await asyncio.start_server(lambda r, w: handle(r, w, link, upstream), host, int(port))
    addr = srv.sockets[0].getsockname()
    print(f"listening {addr[0]}:{addr[1]}", flush=True)
    async with srv:
        await srv.serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS))
    ap.add_argument("--rtt-ms", type=float)
    ap.add_argument("--shared-mbit", type=float)
    ap.add_argument("--conn-mbit", type=float)
    ap.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--listen", default="127.0.0.1:0")
    a = ap.parse_args()
    p = dict(PRESETS[a.preset]) if a.preset else {"rtt_ms": 0.0, "shared_mbit": None, "conn_mbit": None}
    for k in ("rtt_ms", "shared_mbit", "conn_mbit"):
        if getattr(a, k) is not None:
            p[k] = getattr(a, k)
    try:
        asyncio.run(serve(a.listen, a.upstream, Link(**p)))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
