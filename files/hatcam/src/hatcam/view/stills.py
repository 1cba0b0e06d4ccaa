"""What Redis holds for the view: the stills (``image:<ts>`` hashes, written by the
camera's stills publisher) and each camera's health (hatcam/health.py).

Read with redis-py: the laptop has memory to spare, unlike the camera daemon.
Every call fails as ``RedisDown`` with one line naming the Redis, never the password.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..health import KEY_PREFIX, Health, key_of
from ..segment import iso

MAX_STILLS = 50
FIELDS = ("timestamp", "lux", "device", "mime_type")


class RedisDown(Exception):
    """Redis could not be asked: one line a person can act on."""


def location(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"redis://{parts.hostname}:{parts.port or 6379}" if parts.hostname else url


class RedisReader:
    def __init__(self, url: str, timeout: float = 2.0):
        import redis

        self.url = url
        self.where = location(url)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self.errors = (redis.RedisError, OSError)

    def _fail(self, exc: Exception) -> RedisDown:
        why = type(exc).__name__
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        if "refused" in text.lower():
            why = "ConnectionRefused"
        return RedisDown(f"Redis at {self.where}: unreachable ({why})")

    def health(self, devices: list[str]) -> dict[str, tuple[Health, int] | None]:
        """Each device's published health and its seconds left; None: silent (expired)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for device in devices:
                pipe.get(key_of(device))
                pipe.ttl(key_of(device))
            replies = pipe.execute()
        except self.errors as exc:
            raise self._fail(exc) from None
        found = {}
        for i, device in enumerate(devices):
            text, ttl = replies[2 * i], replies[2 * i + 1]
            try:
                found[device] = (Health.from_json(text), max(0, ttl)) if text else None
            except ValueError:
                found[device] = None
        return found

    def publishing(self) -> list[str]:
        """Devices with a health key (a camera that has not uploaded anything yet)."""
        try:
            keys = self.client.scan_iter(match=f"{KEY_PREFIX}*", count=1000)
            return sorted(k.decode()[len(KEY_PREFIX) :] for k in keys)
        except self.errors as exc:
            raise self._fail(exc) from None

    def stills(self, device: str | None) -> list[dict]:
        """The newest stills first (at most MAX_STILLS), of one device or all."""
        try:
            keys = sorted(
                (k.decode() for k in self.client.scan_iter(match="image:*", count=1000)),
                key=_key_time,
                reverse=True,
            )
            found = []
            for start in range(0, len(keys), 200):
                if len(found) >= MAX_STILLS:
                    break
                batch = keys[start : start + 200]
                pipe = self.client.pipeline(transaction=False)
                for key in batch:
                    pipe.hmget(key, *FIELDS)
                    pipe.ttl(key)
                replies = pipe.execute()
                for i, key in enumerate(batch):
                    values, ttl = replies[2 * i], replies[2 * i + 1]
                    still = _still(key, values, ttl)
                    if still and (device is None or still["device"] == device):
                        found.append(still)
        except self.errors as exc:
            raise self._fail(exc) from None
        return found[:MAX_STILLS]

    def image(self, key: str) -> bytes | None:
        try:
            return self.client.hget(key, "image_data")
        except self.errors as exc:
            raise self._fail(exc) from None


def _key_time(key: str) -> float:
    try:
        return float(key.partition(":")[2])
    except ValueError:
        return 0.0


def _still(key: str, values: list, ttl: int) -> dict | None:
    timestamp, lux, device, _mime = (v.decode() if v is not None else None for v in values)
    if timestamp is None or ttl == -2:
        return None  # expired between the scan and the read
    try:
        when = iso(datetime.fromtimestamp(float(timestamp), UTC))
    except ValueError:
        return None
    try:
        light = float(lux) if lux not in (None, "", "None") else None
    except ValueError:
        light = None
    return {
        "key": key,
        "timestamp": when,
        "lux": light,
        "device": device,
        "ttl_s": max(0, ttl),
        "url": f"/api/stills/{key}.jpg",
    }
