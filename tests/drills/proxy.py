"""A fault-injecting TCP proxy in front of the S3 server, for the storage drills.

    with FaultProxy(upstream_port) as proxy:          # clients use proxy.endpoint
        proxy.down(5)                                  # the server is gone for 5 s
        proxy.on_request(r"PUT \\S*checkpoint_00000008/", lambda: proxy.down(600))
        proxy.cut_responses(2, after=200)              # next 2 answers stop after 200 bytes

While down, the proxy still accepts connections but resets each at once (and resets the ones
that were open), which the S3 clients see as a dropped connection; every such attempt is
recorded with its time, so a drill can check how often and how patiently a client retried.
The backing server (moto) keeps its state: the outage is of the endpoint, not of the data.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Callable


def _reset(sock: socket.socket) -> None:
    """Drop the connection now: SO_LINGER 0 makes close send RST, as a crashed server's kernel
    would; shutdown first wakes a thread blocked in recv/accept on it (else close waits)."""
    for step in (
        lambda: sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)),
        lambda: sock.shutdown(socket.SHUT_RDWR),
        sock.close,
    ):
        try:
            step()
        except OSError:
            pass


_REQUEST = re.compile(rb"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP/1\.[01]\r\n")


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.down_until = 0.0
        self.resets: list[float] = []
        """monotonic times of connection attempts reset while down"""
        self.requests: list[tuple[float, str, str]] = []
        """(monotonic time, method, path) of every request forwarded or refused"""
        self._triggers: list[tuple[re.Pattern, Callable[[], None], list[int]]] = []
        self._cuts: list[int] = []
        self._open: set[socket.socket] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")

    # ---- faults ------------------------------------------------------------------------------
    def down(self, seconds: float) -> None:
        """Reset every open connection and every new one for `seconds`."""
        with self.lock:
            self.down_until = time.monotonic() + seconds
            conns = list(self._open)
            self._open.clear()
        for c in conns:
            _reset(c)

    def up(self) -> None:
        with self.lock:
            self.down_until = 0.0

    def is_down(self) -> bool:
        return time.monotonic() < self.down_until

    def on_request(self, pattern: str, action: Callable[[], None], times: int = 1) -> None:
        """Run `action` (before forwarding) when a request line 'METHOD PATH' matches `pattern`,
        at most `times` times."""
        self._triggers.append((re.compile(pattern), action, [times]))

    def cut_responses(self, count: int, after: int) -> None:
        """The next `count` responses are cut (connection reset) after `after` bytes."""
        with self.lock:
            self._cuts += [after] * count

    # ---- plumbing ----------------------------------------------------------------------------
    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        _reset(self.listener)
        self.down(0)
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.is_down():
                self.resets.append(time.monotonic())
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self.lock:
                self._open.update((client, upstream))
            pair = _Pair(self, client, upstream)
            threading.Thread(target=pair.requests, daemon=True).start()
            threading.Thread(target=pair.responses, daemon=True).start()

    def _seen(self, method: str, path: str) -> None:
        self.requests.append((time.monotonic(), method, path))
        line = f"{method} {path}"
        for pattern, action, left in self._triggers:
            if left[0] > 0 and pattern.search(line):
                left[0] -= 1
                action()


class _Pair:
    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket):
        self.proxy, self.client, self.upstream = proxy, client, upstream
        self.cut_at: int | None = None
        """cut the response stream when it passes this many bytes"""
        self.sent = 0

    def close(self) -> None:
        with self.proxy.lock:
            self.proxy._open.discard(self.client)
            self.proxy._open.discard(self.upstream)
        _reset(self.client)
        _reset(self.upstream)

    def requests(self) -> None:
        try:
            while data := self.client.recv(65536):
                for m in _REQUEST.finditer(data):
                    self.proxy._seen(m.group(1).decode(), m.group(2).decode())
                    with self.proxy.lock:
                        if self.proxy._cuts:
                            self.cut_at = self.sent + self.proxy._cuts.pop(0)
                if self.proxy.is_down():
                    self.proxy.resets.append(time.monotonic())
                    break
                self.upstream.sendall(data)
        except OSError:
            pass
        self.close()

    def responses(self) -> None:
        try:
            while data := self.upstream.recv(65536):
                if self.proxy.is_down():
                    break
                if self.cut_at is not None and self.sent + len(data) > self.cut_at:
                    self.client.sendall(data[: max(0, self.cut_at - self.sent)])
                    break
                self.client.sendall(data)
                self.sent += len(data)
        except OSError:
            pass
        self.close()
