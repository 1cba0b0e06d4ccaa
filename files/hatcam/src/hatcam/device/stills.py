"""JPEG stills into Redis, on a drift-free schedule, surviving Redis outages.

Each still is a hash ``image:<unix seconds>`` with the seed's fields
(``image_data``, ``timestamp``, ``mime_type``, ``lux``) plus ``device`` and a
few camera fields, written with its TTL in one MULTI/EXEC: one round trip, and
never a hash without an expiry. Capture runs on the monotonic clock (slot k at
start + k * interval), so no drift accumulates. While Redis is down a small
bounded buffer holds the newest stills; they are written when it is back, with
what is left of their TTL.

Redis is spoken to through ``RedisLink`` (redislink.py), not redis-py, for memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from ..retry import backoff
from .camera import Still
from .redislink import RedisLink, RedisReplyError, redis_location

log = logging.getLogger("hatcam.stills")


@dataclass
class PendingStill:
    key: str
    captured: float  # unix time
    still: Still


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
