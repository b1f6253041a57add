"""A latency- and fault-injecting HTTP proxy in front of the S3 server (moto), for the tests and the
benches: real object stores answer in tens of milliseconds, fail a fraction of requests with 503
SlowDown, lose answers and go away, and moto on loopback does none of that.

It runs on a thread of the calling process (stdlib `http.server` and `http.client`, one thread per
client connection, keep-alive), so a test changes its behaviour while bronze runs:

    with StoreProxy(moto_endpoint) as proxy:
        proxy.latency_ms, proxy.jitter_ms = 25, 5
        proxy.add(Fault(methods={"PUT"}, path_contains="_delta_log/", rate=0.2, status=503))
        proxy.outage(30)       # no answers for 30 s, connections closed
        ... bronze's [storage.s3] endpoint = proxy.endpoint ...

Every request waits `latency_ms` (± `jitter_ms`) plus its request and answer bodies at
`bandwidth_bytes_per_s`, as one round trip to a remote store would.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers that describe one hop, not the message (RFC 9110 7.6.1); the proxy sets its own.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}

S3_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
}


@dataclass
class Fault:
    """Answer matching requests with an error instead of the store's answer.

    `rate` is the fraction of matching requests hit; `count`, when set, how many at most. With
    `forwarded`, the request reaches the store first and only its answer is lost: the write happened,
    the client sees a failure (what a timeout after a successful PUT looks like). With `outage_s`, the
    store then goes down for that long, as if it went away in the middle of the request. With
    `stall_s`, the answer waits that long first (past a client's timeout, the client gives up on it);
    `status=None` then gives the store's own answer, late."""

    methods: set[str] | None = None
    path_contains: str | None = None
    rate: float = 1.0
    status: int | None = 503
    forwarded: bool = False
    stall_s: float = 0.0
    count: int | None = None
    outage_s: float = 0.0
    hits: int = field(default=0, init=False)

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.path_contains is not None and self.path_contains not in path:
            return False
        if self.count is not None and self.hits >= self.count:
            return False
        return random.random() < self.rate


class StoreProxy:
    def __init__(self, upstream: str, port: int = 0):
        split = urlsplit(upstream)
        self.upstream = (split.hostname or "127.0.0.1", split.port or 80)
        self.latency_ms = 0.0
        self.jitter_ms = 0.0
        self.bandwidth_bytes_per_s: float | None = None
        self.faults: list[Fault] = []
        self.counts: Counter = Counter()
        # When a list, every request answered is appended as (monotonic start, seconds, method,
        # path, status): what a commit costs in round trips, read by the benches.
        self.trace: list | None = None
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._server = _Server(("127.0.0.1", port), _handler(self))
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="store-proxy", daemon=True)

    def __enter__(self) -> "StoreProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
        self._down_until = 0.0

    def outage(self, seconds: float) -> None:
        """The store goes away for `seconds`: every request gets no answer, its connection closed
        (a client sees a transport error, as when a store's endpoint stops answering)."""
        self._down_until = max(self._down_until, time.monotonic() + seconds)
        self.counts["outages"] += 1

    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _delay(self, body_bytes: int) -> None:
        delay = self.latency_ms + random.uniform(-self.jitter_ms, self.jitter_ms)
        if self.bandwidth_bytes_per_s:
            delay += 1000.0 * body_bytes / self.bandwidth_bytes_per_s
        if delay > 0:
            time.sleep(delay / 1000.0)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that went away mid-answer (its own timeout, or an outage) is not news.
        pass


def _handler(proxy: StoreProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            super().setup()
            self.upstream: http.client.HTTPConnection | None = None

        def finish(self):
            if self.upstream is not None:
                self.upstream.close()
            super().finish()

        def _drop(self):
            # No answer, the connection gone: what a client sees of a store that went away.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _forward(self, body: bytes):
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            for attempt in range(2):
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    self.upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = self.upstream.getresponse()
                    return answer.status, answer.getheaders(), answer.read()
                except (ConnectionError, http.client.HTTPException):
                    # moto closed an idle keep-alive connection: once more on a new one.
                    self.upstream.close()
                    self.upstream = None
                    if attempt == 1:
                        raise

        def _answer(self, status: int, headers, payload: bytes):
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _serve(self):
            if proxy.is_down():
                proxy.counts["refused"] += 1
                return self._drop()
            body = self._body()
            started = time.monotonic()
            proxy.counts[self.command] += 1
            fault = proxy._fault_for(self.command, self.path)
            answer = None
            if fault is None or fault.forwarded or fault.status is None:
                answer = self._forward(body)
            proxy._delay(len(body) + (len(answer[2]) if answer else 0))
            if fault is not None and fault.stall_s:
                proxy.counts["stalled"] += 1
                time.sleep(fault.stall_s)
            if fault is not None and fault.status is not None:
                proxy.counts[f"injected_{fault.status}"] += 1
                if fault.outage_s:
                    proxy.outage(fault.outage_s)
                    return self._drop()
                code, message = S3_ERRORS.get(fault.status, ("InjectedError", "injected by the test proxy"))
                xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                       f"<Message>{message}</Message><Resource>{self.path}</Resource></Error>").encode()
                return self._answer(fault.status, [("Content-Type", "application/xml")], xml)
            if proxy.is_down():
                # The store went away while this request was on its way.
                proxy.counts["refused"] += 1
                return self._drop()
            if proxy.trace is not None:
                proxy.trace.append((started, time.monotonic() - started, self.command, self.path, answer[0]))
            self._answer(*answer)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

    return Handler
