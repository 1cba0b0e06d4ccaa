"""JPEG stills into Redis, on a drift-free schedule, surviving Redis outages.

Each still is a hash ``image:<unix seconds>`` with the seed's fields
(``image_data``, ``timestamp``, ``mime_type``, ``lux``) plus ``device`` and a
few camera fields, written with its TTL in one MULTI/EXEC: one round trip, and
never a hash without an expiry. Capture runs on the monotonic clock (slot k at
start + k * interval), so no drift accumulates. While Redis is down a small
bounded buffer holds the newest stills; they are written when it is back, with
what is left of their TTL.

Redis is spoken to by ``RedisLink``, not redis-py: importing redis-py (asyncio, ssl,
its command modules) costs the camera daemon about 11 MB of its 80 MB budget on a
Pi Zero, for four commands.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from ..retry import backoff
from .camera import Still

log = logging.getLogger("hatcam.stills")


@dataclass
class PendingStill:
    key: str
    captured: float  # unix time
    still: Still


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


class StillsPublisher:
    def __init__(self, camera, redis_url, device, interval, expiry, buffer_size, retry_max=60.0):
        self.camera = camera
        self.device = device
        self.interval = interval
        self.expiry = expiry
        self.retry_max = retry_max
        self.where = redis_location(redis_url)
        # No health-check PING: it would add a round trip to every still taken more than
        # its interval apart; a dead connection fails the write and is retried.
        self.client = RedisLink(redis_url, timeout=5)
        self.buffer: deque[PendingStill] = deque(maxlen=buffer_size)
        self.cond = threading.Condition()
        self.stop_event = threading.Event()
        self.last_key_second = 0
        self.stored = 0
        self.dropped = 0
        self.expired = 0
        self.missed_slots = 0
        self.round_trips = 0
        self.schedule_errors: list[float] = []  # capture start minus its slot, seconds
        self.last_error: str | None = None
        self.connected = False
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for target, name in (
            (self._capture_loop, "stills-capture"),
            (self._write_loop, "stills-writer"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stop_event.set()
        with self.cond:
            self.cond.notify_all()
        for thread in self.threads:
            thread.join(10)

    # --- capture: runs on the monotonic clock, never waits for Redis -------------
    def _capture_loop(self) -> None:
        start = time.monotonic()
        slot = 0
        while not self.stop_event.is_set():
            due = start + slot * self.interval
            if self.stop_event.wait(max(0.0, due - time.monotonic())):
                return
            late = time.monotonic() - due
            self.schedule_errors.append(late)
            del self.schedule_errors[:-1000]
            try:
                self._capture()
            except Exception as exc:  # a failed still must never stop the video
                log.error("still capture failed: %s", exc)
            # A capture slower than the interval skips the slots already past
            # instead of bursting to catch up.
            next_slot = max(slot + 1, int((time.monotonic() - start) / self.interval) + 1)
            self.missed_slots += next_slot - slot - 1
            slot = next_slot

    def _capture(self) -> None:
        still = self.camera.capture_still()
        now = time.time()
        # Keys are per second; never reuse one within a run, even if the clock steps back.
        second = max(int(now), self.last_key_second + 1)
        self.last_key_second = second
        pending = PendingStill(f"image:{second}", now, still)
        with self.cond:
            if len(self.buffer) == self.buffer.maxlen:
                self.dropped += 1
                log.warning(
                    "stills buffer full (Redis at %s unreachable): dropping %s",
                    self.where,
                    self.buffer[0].key,
                )
            self.buffer.append(pending)
            self.cond.notify()

    # --- writer: drains the buffer, reconnecting with backoff ---------------------
    def _write_loop(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            with self.cond:
                while not self.buffer and not self.stop_event.is_set():
                    self.cond.wait()
                if self.stop_event.is_set():
                    return
                pending = self.buffer[0]
            try:
                self._write(pending)
            except (OSError, RedisReplyError) as exc:
                failures += 1
                self.connected = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                delay = backoff(failures, self.retry_max)
                log.warning(
                    "Redis at %s unavailable (%s); %d still(s) waiting, retry in %.1f s",
                    self.where,
                    type(exc).__name__,
                    len(self.buffer),
                    delay,
                )
                self.stop_event.wait(delay)
                continue
            if not self.connected:
                log.info("Redis at %s reachable: stills are being stored", self.where)
            self.connected = True
            failures = 0
            with self.cond:
                if self.buffer and self.buffer[0] is pending:
                    self.buffer.popleft()

    def _write(self, pending: PendingStill) -> None:
        ttl = round(self.expiry - (time.time() - pending.captured))
        if ttl <= 0:
            self.expired += 1
            log.info("%s expired while Redis was unreachable; not written", pending.key)
            return
        still = pending.still
        fields = {
            "image_data": still.jpeg,
            "timestamp": round(pending.captured, 3),  # unix seconds, ms precision
            "mime_type": "image/jpeg",
            "lux": still.lux,
            "device": self.device,
            **still.metadata,
        }
        hset = [item for name, value in fields.items() for item in (name, value)]
        self.client.call(
            ("MULTI",), ("HSET", pending.key, *hset), ("EXPIRE", pending.key, ttl), ("EXEC",)
        )
        self.round_trips += 1
        self.stored += 1

    def buffered_count(self) -> int:
        with self.cond:
            return len(self.buffer)

    def state(self) -> dict:
        return {
            "redis": self.where,
            "connected": self.connected,
            "stored": self.stored,
            "buffered": self.buffered_count(),
            "dropped": self.dropped,
            "last_error": self.last_error,
        }
