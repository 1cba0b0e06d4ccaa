"""The camera daemon's one connection to Redis: RESP2 over a socket, four commands.

Not redis-py: importing it (asyncio, ssl, its command modules) costs the camera daemon
about 11 MB of its 80 MB budget on a Pi Zero, for the four commands stills need
(AUTH, SELECT, PING, and MULTI/HSET/EXPIRE/EXEC). The URL forms are redis-py's
``from_url`` ones; config.py refuses anything else at start.
"""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, unquote, urlsplit


def redis_location(url: str) -> str:
    """host:port of a Redis URL, for log lines (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path


class RedisReplyError(Exception):
    """Redis answered with an error (a refused password, a full memory, ...)."""


class RedisLink:
    """One connection to Redis, speaking RESP2: a batch of commands goes out in one write,
    their replies are read back. Takes the URLs redis-py's ``from_url`` takes
    (``redis://``, ``rediss://`` with the system's CAs and hostname check,
    ``unix://``; user and password, database in the path or ``?db=``). Any error closes
    the connection: the next call connects afresh."""

    def __init__(self, url: str, timeout: float = 5.0):
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - {"db"})
        if unknown:
            raise ValueError(f"REDIS_URL: option {unknown[0]!r} is not supported (only db)")
        self.tls = parts.scheme == "rediss"
        self.path = parts.path if parts.scheme == "unix" else None
        self.address = (parts.hostname or "localhost", parts.port or 6379)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        db = query.get("db", [""])[0] or (parts.path.strip("/") if not self.path else "")
        self.db = int(db or 0)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.replies = None

    def call(self, *commands: tuple) -> list:
        """Send ``commands`` in one write; their replies, in order (errors raised)."""
        if self.sock is None:
            self._connect()
        try:
            self.sock.sendall(b"".join(encode(command) for command in commands))
            replies = [self._reply() for _ in commands]
        except ValueError as exc:  # a number that is not one: not a Redis we understand
            self.close()
            raise ConnectionError(f"Redis sent something that is not RESP2 ({exc})") from None
        except BaseException:
            self.close()
            raise
        for reply in replies:
            for item in reply if isinstance(reply, list) else [reply]:
                if isinstance(item, RedisReplyError):
                    raise item
        return replies

    def _connect(self) -> None:
        if self.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self.address, self.timeout)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            if self.tls:
                import ssl  # only when asked for: it costs memory

                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=self.address[0])
            self.sock, self.replies = sock, sock.makefile("rb")
            hello = []
            if self.password is not None:
                user = [self.username] if self.username else []
                hello.append(("AUTH", *user, self.password))
            if self.db:
                hello.append(("SELECT", self.db))
            if hello:
                self.call(*hello)
        except BaseException:  # a refused password too: the next call tries afresh
            sock.close()
            self.close()
            raise

    def _reply(self):
        line = self.replies.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            return RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.replies.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("Redis closed the connection")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self._reply() for _ in range(count)]
        raise ConnectionError(f"Redis sent something that is not RESP2: {line[:20]!r}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = self.replies = None


def encode(command: tuple) -> bytes:
    """A command as RESP2: an array of bulk strings (floats as redis-py writes them)."""
    out = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)
