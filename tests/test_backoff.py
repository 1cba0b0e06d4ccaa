"""The retry back-off, as the README states it: exponential, full jitter, capped at
HATCAM_RETRY_MAX_SECONDS, forever, for uploads and for stills alike.

Both loops that retry (the uploader against the blob store, the stills writer against
Redis) sleep only through their stop event. Here that event is a virtual clock: it
records each wait and returns at once, so thousands of retries against a really stopped
Azurite or redis-server take seconds, and the waits' distribution can be measured.
"""

from __future__ import annotations

import threading
import uuid

import redis

from hatcam import config
from hatcam.blob import container_client
from hatcam.device.camera.synthetic import SyntheticCamera
from hatcam.device.stills import StillsPublisher
from hatcam.device.uploader import Uploader
from hatcam.segment import day_index_of

from tests.support.footage import record, wait_until
from tests.support.services import Azurite, RedisServer

RUNS = 200  # samples of each failure's wait: enough for the tolerances below
CAP = 20.0  # HATCAM_RETRY_MAX_SECONDS: not a power of two, so the cap shows as itself


class VirtualClock(threading.Event):
    """A stop event whose waits (from one thread, or all) are recorded and end at once.

    ``after_wait(clock)`` runs after each recorded wait and may ``set()`` the clock to
    stop the loop, or change the world (start a server) before the next attempt.
    """

    def __init__(self, after_wait, thread_name: str | None = None):
        super().__init__()
        self.waits: list[float] = []
        self.after_wait = after_wait
        self.thread_name = thread_name

    def wait(self, timeout=None):
        if self.is_set():
            return True
        if self.thread_name and threading.current_thread().name != self.thread_name:
            return super().wait(timeout)  # another loop's schedule: real time
        self.waits.append(timeout)
        self.after_wait(self)
        return self.is_set()


def stop_after(count: int):
    return lambda clock: clock.set() if len(clock.waits) >= count else None


def uniform_distance(samples: list[float], bound: float) -> float:
    """Kolmogorov-Smirnov distance between the samples and uniform on [0, bound]."""
    xs = sorted(x / bound for x in samples)
    n = len(xs)
    return max(max((i + 1) / n - x, x - i / n) for i, x in enumerate(xs))


def assert_exponential_full_jitter_capped(by_failure: list[list[float]], cap: float):
    """by_failure[k]: the waits after the (k+1)-th failure in a row, one per run."""
    bounds = [max(waits) for waits in by_failure]
    for k, waits in enumerate(by_failure, 1):
        assert min(waits) >= 0 and max(waits) <= cap, f"failure {k}: a wait beyond the cap"
    capped = [k for k, bound in enumerate(bounds) if bound > 0.9 * cap]
    assert capped, f"the longest wait never reached the cap {cap} s: {bounds}"
    first_capped = capped[0]
    assert capped == list(range(first_capped, len(bounds))), f"the cap holds: {bounds}"
    assert first_capped >= 3, f"at least three growing steps before the cap: {bounds}"
    # Exponential: the longest wait doubles with each failure until the cap.
    for k in range(first_capped - 1):
        assert 1.7 < bounds[k + 1] / bounds[k] < 2.3, f"failure {k + 2}: {bounds}"
    # Full jitter: each wait is uniform from 0 to that failure's bound. With 200 samples
    # a fixed wait (distance 1) or equal jitter (0.5) is far off; uniform waits pass the
    # 0.2 limit but once in a million runs.
    for k, waits in enumerate(by_failure):
        bound = cap if k >= first_capped else bounds[k]
        distance = uniform_distance(waits, bound)
        assert distance < 0.2, f"failure {k + 1}: waits not uniform on [0, {bound:.2f}] s"


# --- uploads --------------------------------------------------------------------------


def upload_settings(store: Azurite, spool, container: str, cap: float):
    return config.parse(
        {
            "BLOB_CONNECTION_STRING": store.connection_string(),
            "HATCAM_BLOB_CONTAINER": container,
            "HATCAM_SPOOL_DIR": str(spool.root),
            "HATCAM_RETRY_MAX_SECONDS": str(cap),
        }
    )


def failing_uploads(settings, spool, count: int, after_wait=None) -> VirtualClock:
    """Run the real uploader loop until ``count`` waits; the recorded clock."""
    # The SDK's own retries (real sleeps, inside one attempt) are off: this is about the
    # uploader's loop, which a stopped store fails at once.
    uploader = Uploader(settings, spool, client=container_client(settings, retries=0))
    stop = stop_after(count)
    uploader.stop_event = VirtualClock(lambda clock: (after_wait or stop)(clock))
    uploader.run()
    return uploader.stop_event


def test_upload_retries_back_off_exponentially_with_full_jitter_up_to_the_cap(tmp_path):
    store = Azurite(tmp_path / "azurite").start()
    container = f"b{uuid.uuid4().hex[:12]}"
    store.container(container)
    store.stop()  # the blob store is gone before anything is sent
    spool = record(tmp_path / "spool", 30)
    settings = upload_settings(store, spool, container, CAP)
    runs = [failing_uploads(settings, spool, 9).waits for _ in range(RUNS)]

    assert_exponential_full_jitter_capped([list(w) for w in zip(*runs, strict=True)], CAP)
    assert len(spool.ready_segments()) == 1, "nothing is dropped while the store is down"


def test_uploads_never_give_up_and_land_once_the_store_is_back(tmp_path):
    store = Azurite(tmp_path / "azurite").start()
    container = f"b{uuid.uuid4().hex[:12]}"
    client = store.container(container)
    store.stop()
    spool = record(tmp_path / "spool", 30)
    [segment] = spool.ready_segments()
    settings = upload_settings(store, spool, container, 60.0)  # the default cap

    def after_wait(clock):
        if len(clock.waits) == 500:
            store.start()  # same port, same data: the hotspot is back
        elif not spool.ready_segments():
            clock.set()  # uploaded: the loop is idle now

    try:
        waits = failing_uploads(settings, spool, 0, after_wait).waits
        assert len(waits) > 500, f"the uploader stopped trying after {len(waits)} failures"
        landed = sorted(b.name for b in client.list_blobs())
    finally:
        store.stop()
    assert max(waits[:500]) <= 60.0
    assert max(waits[400:500]) > 50, "still retrying at the cap after 500 failures"
    # Live upload (a connection string may append): the segment, its closing record and
    # its line in the day index.
    assert len(landed) == 3 and landed[0].endswith(segment.name), landed
    assert landed[1:] == [landed[0] + ".end", day_index_of(landed[0])], landed


# --- stills ---------------------------------------------------------------------------


def publishing(redis_url: str, cap: float, after_wait) -> StillsPublisher:
    """The real stills publisher, its writer's waits on a virtual clock; it takes one
    still at once, then the capture loop waits in real time (its next slot is an hour)."""
    camera = SyntheticCamera(320, 240, 30, 300_000)
    publisher = StillsPublisher(
        camera, redis_url, "cam1", interval=3600, expiry=600, buffer_size=5, retry_max=cap
    )
    publisher.stop_event = VirtualClock(after_wait, thread_name="stills-writer")
    publisher.start()
    return publisher


def failing_writes(redis_url: str, count: int, cap: float) -> list[float]:
    publisher = publishing(redis_url, cap, stop_after(count))
    writer = next(t for t in publisher.threads if t.name == "stills-writer")
    writer.join(60)
    assert not writer.is_alive()
    publisher.stop()
    return publisher.stop_event.waits


def test_redis_retries_back_off_exponentially_with_full_jitter_up_to_the_cap(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    server.stop()  # Redis is gone before the first still
    runs = [failing_writes(server.url, 8, CAP) for _ in range(RUNS)]

    assert_exponential_full_jitter_capped([list(w) for w in zip(*runs, strict=True)], CAP)


def test_stills_never_give_up_and_land_once_redis_is_back(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    server.stop()

    def after_wait(clock):
        if len(clock.waits) == 500:
            server.start()  # same port, empty: like a restarted cache

    publisher = publishing(server.url, 60.0, after_wait)  # the default cap
    try:
        wait_until(lambda: publisher.stop_event.waits[499:], 60, "500 failed writes")
        client = redis.Redis.from_url(server.url)

        def stored():
            try:
                return client.keys("image:*")
            except redis.ConnectionError:  # the 500th wait is counted before the restart
                return []

        wait_until(stored, 30, "the waiting still in Redis")
    finally:
        publisher.stop()
        server.stop()
    waits = publisher.stop_event.waits
    assert len(waits) == 500, "no failure once Redis was back"
    assert max(waits) <= 60.0
    assert max(waits[400:]) > 50, "still retrying at the cap after 500 failures"
