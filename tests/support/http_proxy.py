"""An HTTP/1.1 proxy that sees what became of every request it passes on.

The uploader's tests put it between `hatcam upload` and a real Azurite to watch a
request from outside: did its body arrive whole, did the server answer, did the client
get the answer? It can read bodies slowly and hold answers (so a kill lands inside a
request), and it can lose an answer on purpose (a reply lost on the way back). It
speaks only what the storage SDK sends: Content-Length bodies, one request at a time
on a connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
import threading
import time
from dataclasses import dataclass, field

HEAD_END = b"\r\n\r\n"


@dataclass
class Exchange:
    """One request and what became of it."""

    method: str
    path: str
    length: int  # the request's Content-Length
    received: int = 0  # body bytes that arrived from the client
    md5: bytes = b""  # of the body, once whole
    status: int | None = None  # the server's answer, once the body reached it whole
    etag: str | None = None
    # "head", "body", "at the server", "reply held", then how it ended: "answered",
    # "cut mid-body" (the client went before its body was whole), "reply lost" (the
    # server answered, the client was gone), "reply dropped" (lost by the proxy).
    stage: str = "head"
    _hash: object = field(default_factory=hashlib.md5, repr=False)

    @property
    def blob_put(self) -> bool:
        """A Put Blob (not the container's own create)."""
        return self.method == "PUT" and "restype=container" not in self.path

    @property
    def over(self) -> bool:
        return self.stage in ("answered", "cut mid-body", "reply lost", "reply dropped")


def _headers(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            fields[name.strip().lower()] = value.strip()
    return lines[0], fields


class HttpProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.host = host
        self.body_rate: float | None = None  # bytes per second a body is read at
        self.hold = 0.0  # seconds an answer waits before it is passed on
        self.lose_replies = 0  # how many of the next Put Blob answers to lose
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        # A small receive window: a paced body stays mostly in the client, not in buffers.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind((host, 0))
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        self.sockets: set[socket.socket] = set()
        self.closing = False

    def start(self) -> HttpProxy:
        self.listener.listen(16)
        self._spawn(self._accept)
        return self

    def stop(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for sock in list(self.sockets):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(10)

    def __enter__(self) -> HttpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def puts(self) -> list[Exchange]:
        with self.lock:
            return [e for e in self.exchanges if e.blob_put]

    def ended(self, stage: str) -> list[Exchange]:
        return [e for e in self.puts() if e.stage == stage]

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        with self.lock:
            self.sockets |= {client, upstream}
        try:
            pending = b""
            while True:
                head, pending = self._read_head(client, pending)
                if head is None:
                    return
                if not self._exchange(client, upstream, head, pending):
                    return
                pending = b""
        except OSError:
            return
        finally:
            with self.lock:
                self.sockets -= {client, upstream}
            client.close()
            upstream.close()

    def _exchange(self, client, upstream, head: bytes, pending: bytes) -> bool:
        """Pass one request on and its answer back; False when the connection is over."""
        request, fields = _headers(head)
        if "chunked" in fields.get("transfer-encoding", ""):
            raise NotImplementedError("chunked request bodies")
        method, path = request.split()[:2]
        exchange = Exchange(method, path, int(fields.get("content-length", 0)), stage="body")
        with self.lock:
            self.exchanges.append(exchange)
        upstream.sendall(head)
        while exchange.received < exchange.length:
            want = exchange.length - exchange.received
            chunk = pending[:want] if pending else client.recv(min(want, 4096))
            pending = pending[len(chunk) :]
            if not chunk:
                exchange.stage = "cut mid-body"  # closing upstream aborts it there too
                return False
            upstream.sendall(chunk)
            exchange._hash.update(chunk)
            exchange.received += len(chunk)
            if self.body_rate:
                time.sleep(len(chunk) / self.body_rate)
        exchange.md5 = exchange._hash.digest()
        exchange.stage = "at the server"
        answer, status, fields = self._read_answer(upstream, method)
        exchange.status, exchange.etag = status, fields.get("etag")
        if exchange.blob_put and self.lose_replies > 0:
            self.lose_replies -= 1
            exchange.stage = "reply dropped"
            return False
        exchange.stage = "reply held"
        if self._client_gone(client, self.hold):
            exchange.stage = "reply lost"
            return False
        client.sendall(answer)
        exchange.stage = "answered"
        return fields.get("connection", "").lower() != "close"

    @staticmethod
    def _client_gone(client: socket.socket, wait: float) -> bool:
        readable, _, _ = select.select([client], [], [], wait)
        if not readable:
            return False
        try:
            return client.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    @staticmethod
    def _read_head(sock: socket.socket, data: bytes) -> tuple[bytes | None, bytes]:
        while HEAD_END not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None, b""
            data += chunk
        end = data.index(HEAD_END) + len(HEAD_END)
        return data[:end], data[end:]

    def _read_answer(self, upstream, method: str) -> tuple[bytes, int, dict[str, str]]:
        head, rest = self._read_head(upstream, b"")
        if head is None:
            raise OSError("the server closed the connection without answering")
        status_line, fields = _headers(head)
        status = int(status_line.split()[1])
        if method == "HEAD" or status in (204, 304) or status < 200:
            return head, status, fields
        if "content-length" in fields:
            length = int(fields["content-length"])
            while len(rest) < length:
                chunk = upstream.recv(65536)
                if not chunk:
                    raise OSError("the server closed the connection mid-answer")
                rest += chunk
            return head + rest, status, fields
        if "chunked" in fields.get("transfer-encoding", ""):
            while not rest.endswith(b"0\r\n\r\n"):
                chunk = upstream.recv(65536)
                if not chunk:
                    raise OSError("the server closed the connection mid-answer")
                rest += chunk
            return head + rest, status, fields
        while chunk := upstream.recv(65536):
            rest += chunk
        return head + rest, status, {**fields, "connection": "close"}
