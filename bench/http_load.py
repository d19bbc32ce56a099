"""An HTTP/1.1 load generator for the benchmarks: keep-alive connections from client processes, in a closed
loop (N connections back to back: capacity) or an open loop (a constant offered rate, wrk2-style: latency
from each request's scheduled send time, so stalls are not hidden). Used by bench/keyserver.py."""

from __future__ import annotations

import multiprocessing as mp
import socket
import statistics
import time
from typing import Any


def _content_length(header: bytes) -> int:
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _read_response(sock: socket.socket) -> int:
    """Read one HTTP/1.1 response with a Content-Length body; return its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    length = _content_length(header)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed")
        body += chunk
    return int(header.split(b" ", 2)[1])


def _requests(port: int, path: str, bodies: list[bytes], token: str) -> list[bytes]:
    """Requests as pre-built bytes for a raw keep-alive socket: the client must cost as little CPU as
    possible, since it shares the machine's cores with the server it measures. POST with each body, or one
    GET without."""
    head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    return [
        f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies
    ] or [f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()]


def _client(
    port: int, path: str, bodies: list[bytes], token: str, seconds: float, threads: int, out: Any
) -> None:
    """One client process: `threads` keep-alive connections, each sending requests back to back."""
    import threading

    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    requests = _requests(port, path, bodies, token)

    def run(n: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        local: list[tuple[int, float]] = []
        i = n
        while time.perf_counter() < deadline:
            request = requests[i % len(requests)]
            i += threads
            start = time.perf_counter()
            try:
                sock.sendall(request)
                status = _read_response(sock)
            except OSError:
                sock.close()
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                status = 0
            local.append((status, time.perf_counter() - start))
        sock.close()
        with lock:
            results.extend(local)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(results)


def _alternating_client(
    port: int,
    phases: list[tuple[str, list[bytes]]],
    token: str,
    start: float,
    slice_s: float,
    gap_s: float,
    slices: int,
    threads: int,
    out: Any,
) -> None:
    """One client process of load_alternating: `threads` keep-alive connections. Slice k starts at
    start + k * (slice_s + gap_s) (time.monotonic, the same clock in every process) and lasts slice_s; in it
    every connection sends phase k % len(phases)'s requests back to back. The gap lets the last requests of
    a slice finish before the next phase starts. Results: (slice, status, completed inside the slice)."""
    import threading

    results: list[tuple[int, int, bool]] = []
    lock = threading.Lock()
    built = [_requests(port, path, bodies, token) for path, bodies in phases]

    def run(n: int) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        local: list[tuple[int, int, bool]] = []
        i = n
        for k in range(slices):
            begins = start + k * (slice_s + gap_s)
            ends = begins + slice_s
            time.sleep(max(0.0, begins - time.monotonic()))
            requests = built[k % len(built)]
            while time.monotonic() < ends:
                request = requests[i % len(requests)]
                i += threads
                try:
                    sock.sendall(request)
                    status = _read_response(sock)
                except OSError:
                    sock.close()
                    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                    status = 0
                local.append((k, status, time.monotonic() < ends))
        sock.close()
        with lock:
            results.extend(local)

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(results)


def _open_client(
    port: int,
    path: str,
    bodies: list[bytes],
    token: str,
    start: float,
    seconds: float,
    interval: float,
    offsets: list[float],
    out: Any,
) -> None:
    """One open-loop client process: one keep-alive connection per offset, each sending a request every
    `interval` seconds from `start + offset` (time.monotonic, the same clock in every process) until
    `start + seconds`. A connection holds one request at a time (HTTP/1.1), so when responses are slower
    than the schedule the next request goes out late — and its latency, measured from the time it was
    scheduled, includes that wait. One thread and a selector for all its connections: the client's own
    wake-ups stay few, as it shares the machine's cores with the server it measures."""
    import selectors

    head = f"Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    requests = [
        f"POST {path} HTTP/1.1\r\n{head}Content-Length: {len(b)}\r\n\r\n".encode() + b for b in bodies
    ] or [f"GET {path} HTTP/1.1\r\n{head}\r\n".encode()]
    end = start + seconds
    results: list[tuple[int, float]] = []
    selector = selectors.DefaultSelector()

    class Conn:
        def __init__(self, n: int, offset: float) -> None:
            self.n, self.scheduled, self.busy, self.buffer = n, start + offset, False, b""
            self.connect()

        def connect(self) -> None:
            # Blocking with a timeout: requests are small (sent in one go), and recv runs only when the
            # selector says there is data.
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            selector.register(self.sock, selectors.EVENT_READ, self)

        def failed(self) -> None:
            """A broken connection: the request counts as an error; a new connection takes over."""
            results.append((0, time.monotonic() - self.scheduled))
            self.busy, self.scheduled = False, self.scheduled + interval
            selector.unregister(self.sock)
            self.sock.close()
            self.connect()

        def send(self) -> None:
            request = requests[self.n % len(requests)]
            self.n += len(offsets)
            self.busy, self.buffer = True, b""
            self.sock.sendall(request)

        def readable(self) -> None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            self.buffer += chunk
            header, sep, body = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            length = _content_length(header)
            if len(body) < length:
                return
            results.append((int(header.split(b" ", 2)[1]), time.monotonic() - self.scheduled))
            self.busy, self.scheduled = False, self.scheduled + interval

    conns = [Conn(n, offset) for n, offset in enumerate(offsets)]
    while True:
        now = time.monotonic()
        for conn in conns:
            if not conn.busy and conn.scheduled < end and conn.scheduled <= now:
                try:
                    conn.send()
                except OSError:
                    conn.failed()
        pending = [c.scheduled for c in conns if not c.busy and c.scheduled < end]
        if not pending and not any(c.busy for c in conns):
            break
        timeout = max(0.0, min(pending) - time.monotonic()) if pending else 30.0
        for key, _ in selector.select(timeout):
            try:
                key.data.readable()
            except OSError:
                key.data.failed()
    for conn in conns:
        selector.unregister(conn.sock)
        conn.sock.close()
    out.put(results)


def _summary(results: list[tuple[int, float]], elapsed: float) -> dict[str, Any]:
    ok = [lat for status, lat in results if status == 200]
    lat_ms = sorted(x * 1000 for x in ok) or [0.0]

    def pct(q: float) -> float:
        return lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * q))]

    return {
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "rate": len(ok) / elapsed,
        "p50": statistics.median(lat_ms),
        "p90": pct(0.90),
        "p99": pct(0.99),
        "p999": pct(0.999),
        "max": lat_ms[-1],
    }


def load_open(
    port: int, path: str, bodies: list[bytes], token: str, connections: int, seconds: float, rate: float
) -> dict[str, Any]:
    """Offer `rate` requests/s for `seconds`, spread evenly over `connections` connections in two client
    processes; latency from each request's scheduled send time."""
    procs_n = min(2, connections)
    interval = connections / rate  # per connection
    offsets = [n / rate for n in range(connections)]  # connection n starts n/rate after the first
    queue: Any = mp.Queue()
    start = time.monotonic() + 0.5  # time for the processes to start and connect
    procs = [
        mp.Process(
            target=_open_client,
            args=(port, path, bodies, token, start, seconds, interval, offsets[k::procs_n], queue),
        )
        for k in range(procs_n)
    ]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in queue.get()]
    for p in procs:
        p.join()
    result = _summary(results, time.monotonic() - start)
    result["offered"] = rate
    result["sent"] = len(results)
    return result


def load(
    port: int, path: str, bodies: list[bytes], token: str, concurrency: int, seconds: float
) -> dict[str, Any]:
    procs_n = min(2, concurrency)
    queue: Any = mp.Queue()
    procs = [
        mp.Process(target=_client, args=(port, path, bodies, token, seconds, concurrency // procs_n, queue))
        for _ in range(procs_n)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    results = [r for _ in procs for r in queue.get()]
    for p in procs:
        p.join()
    return _summary(results, time.perf_counter() - started)


def load_alternating(
    port: int,
    phases: list[tuple[str, list[bytes]]],
    token: str,
    concurrency: int,
    *,
    slices: int,
    slice_seconds: float,
    gap_seconds: float,
) -> dict[str, Any]:
    """Closed loop over `concurrency` connections, alternating the endpoints of `phases` in short slices of
    one run, so every endpoint sees the machine in the same state: on a shared VM the speed drifts from one
    5-s window to the next by more than the differences measured. Per phase: the requests completed inside
    its slices per second of its slices ("rate"), each slice's rate ("slice_rates"), and every request
    answered ("ok", with the ones that finished in a gap)."""
    procs_n = min(2, concurrency)
    queue: Any = mp.Queue()
    start = time.monotonic() + 0.5  # time for the processes to start and connect
    args = (port, phases, token, start, slice_seconds, gap_seconds, slices, concurrency // procs_n, queue)
    procs = [mp.Process(target=_alternating_client, args=args) for _ in range(procs_n)]
    for p in procs:
        p.start()
    results = [r for _ in procs for r in queue.get()]
    for p in procs:
        p.join()
    inside = [0] * slices
    for k, status, completed_inside in results:
        if status == 200 and completed_inside:
            inside[k] += 1
    summary: dict[str, Any] = {}
    for n, (path, _) in enumerate(phases):
        mine = range(n, slices, len(phases))
        summary[path] = {
            "rate": sum(inside[k] for k in mine) / (len(mine) * slice_seconds),
            "slice_rates": [inside[k] / slice_seconds for k in mine],
            "ok": sum(1 for k, status, _ in results if status == 200 and k % len(phases) == n),
            "errors": sum(1 for k, status, _ in results if status != 200 and k % len(phases) == n),
        }
    return summary
