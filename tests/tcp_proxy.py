"""A TCP proxy a test controls, for connections that drop: it carries bytes both ways between
its clients and one server on 127.0.0.1; `cut()` resets every connection it carries, as a
network that drops them would; `freeze()` silently stops carrying them (a laptop asleep, a
phone gone to another network: nothing arrives, nothing says so); while `refusing` a new
connection is reset at once (the server cannot be reached). With `latency` (seconds) every
piece of data waits that long before it is passed on, each way: a server on another host
(1 ms each way makes the interleavings of concurrent transactions that loopback hides
common)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


def _reset(sock: socket.socket) -> None:
    """Close with RST, not FIN: the peer sees the connection broken, not ended. (A thread
    blocked reading it is woken first: closing alone would leave it blocked.)"""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class CuttingProxy:
    """Listens on a free 127.0.0.1 port (`port`, `url`) in front of `target_port`."""

    def __init__(self, target_port: int, latency: float = 0.0) -> None:
        self.target_port = target_port
        self.latency = latency
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.refusing = False
        self.cuts = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._requested: dict[socket.socket, bytes] = {}  # client -> its latest request line
        self._frozen: set[socket.socket] = set()
        threading.Thread(target=self._accept, name="cutting-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # stopped
            if self.refusing:
                _reset(client)
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open += [client, server]
                self._pairs.append((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if data[:1].isupper() and b" /" in data[:16]:  # a request starts
                    self._requested[source] = data.split(b"\r\n", 1)[0]
                if self.latency:
                    time.sleep(self.latency)  # the wire's delay (the test's own network)
                if source not in self._frozen:  # frozen: read, and dropped
                    sink.sendall(data)
            if source not in self._frozen:  # (a frozen one does not tell its end either)
                sink.shutdown(socket.SHUT_WR)  # an orderly end goes on as one
        except OSError:
            _reset(sink)  # a reset (or a cut) on one side resets the other

    def cut(self) -> None:
        """Reset every connection carried now."""
        with self._lock:
            carried, self._open, self._pairs = self._open, [], []
            self.cuts += 1
        for sock in carried:
            _reset(sock)

    def freeze(self, request: bytes) -> None:
        """Carry nothing more on the connection whose latest request line holds `request`
        (such as b"POST /api/gpt/get"); the others, and new ones, still work."""
        with self._lock:
            for client, server in self._pairs:
                if request in self._requested.get(client, b""):
                    self._frozen.update((client, server))

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.close()
        self.cut()
