"""Sound capture up to the segmenter's seam: the drift fix, a microphone that comes and goes,
and the click landing on its clap. The microphone is the faithful synthetic one (no
microphone exists here); the video is real H.264, the sound real AAC decoded with PyAV."""

from __future__ import annotations

import array
import errno
import logging
import threading
import time
from types import SimpleNamespace

import av
import pytest

from hatcam.device.audio import SAMPLES_PER_PACKET, AudioFormat
from hatcam.device.audio.capture import AudioCapture
from hatcam.device.audio.clock import AudioClock
from hatcam.device.audio.scene import Scene
from hatcam.device.audio.source import AlsaSource
from hatcam.device.audio.synthetic import RealClock, SimClock, SyntheticMicrophone
from hatcam.device.camera.synthetic import SyntheticCamera

from tests.support.sync import decode_packets, offsets, onsets
from tests.test_picamera2_backend import fake, picam, stub_libcamera  # noqa: F401 (fixtures)

FRAME_S = 1 / 30  # one video frame at 30 fps: the sync goal
RATE = 48000


class Collector:
    """The segmenter's seam, keeping what arrives (from two threads, as the segmenter)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.video: list[int] = []
        self.audio: list[tuple[bytes, int]] = []

    def outputframe(self, frame, keyframe=True, timestamp=None, packet=None, audio=False):
        with self.lock:
            if audio:
                self.audio.append((bytes(frame), int(timestamp)))
            else:
                self.video.append(int(timestamp))


def clapping(scene: Scene, clock: SimClock, every_us: float = 1_000_000):
    """Registers a clap a second (a little ahead of time, as the camera does); returns
    that, and the list of claps registered."""
    state = {"next": clock.now + 300_000}
    registered: list[float] = []

    def ahead():
        while state["next"] < clock.now + 2_000_000:
            scene.clap(state["next"])
            registered.append(state["next"])
            state["next"] += every_us

    return ahead, registered


@pytest.mark.parametrize("rate_error", [0.001, -0.001], ids=["fast", "slow"])
def test_sound_stays_within_a_frame_of_the_picture_for_an_hour_of_an_off_rate_microphone(
    rate_error,
):
    """60 simulated minutes, a microphone 0.1 % off its nominal rate, jittery reads with a
    150 ms stall now and then: each click, stamped as capture stamps packets, against its
    clap's true time. Uncorrected, the drift would reach 3.6 s."""
    clock, scene = SimClock(), Scene()
    mic = SyntheticMicrophone(RATE, 1, clock, scene, rate_error=rate_error)
    ahead, claps = clapping(scene, clock)
    audio_clock = AudioClock(RATE)
    mic.open()
    end = clock.now + 60 * 60e6
    delivered, next_packet = 0, -SAMPLES_PER_PACKET  # AAC's priming frame comes first
    stamps: dict[int, int] = {}
    click_samples: list[int] = []
    while clock.now < end:
        ahead()
        pcm = mic.read()
        samples = array.array("h", pcm)
        if max(samples) > 0.3 * 32767:  # a click: where it starts, in samples delivered
            first = next(i for i, s in enumerate(samples) if s > 0.3 * 32767)
            if not click_samples or delivered + first - click_samples[-1] > RATE // 2:
                click_samples.append(delivered + first)
        delivered += len(samples)
        audio_clock.observe(delivered, clock.now)
        while audio_clock.ready and next_packet + SAMPLES_PER_PACKET <= delivered:
            stamps[next_packet] = audio_clock.stamp(next_packet)
            next_packet += SAMPLES_PER_PACKET
    drift = []
    for index in click_samples:
        packet = (index // SAMPLES_PER_PACKET) * SAMPLES_PER_PACKET
        stamped = stamps[packet] + (index - packet) * 1e6 / RATE
        clap = min(claps, key=lambda c: abs(c - stamped))
        drift.append((stamped - clap) / 1e6)
    worst = max(drift, key=abs)
    print(
        f"\nrate error {rate_error:+.1%}: {len(drift)} clicks over 60 simulated minutes, "
        f"drift at the end {drift[-1] * 1000:+.2f} ms, worst {worst * 1000:+.2f} ms"
    )
    assert len(drift) >= 3590
    assert abs(worst) <= FRAME_S
    assert abs(drift[-1]) <= FRAME_S
    stamped = [stamps[k] for k in sorted(stamps)]
    steps = [b - a for a, b in zip(stamped, stamped[1:], strict=False)]
    nominal = SAMPLES_PER_PACKET * 1e6 / RATE
    assert min(steps) > 0.99 * nominal and max(steps) < 1.01 * nominal  # even, no jitter


def test_a_click_lands_within_a_frame_of_its_clap_through_the_aac_encoder():
    """The whole capture (synthetic microphone 0.1 % fast, real AAC), 3 simulated minutes:
    the packets decoded, clicks found in the sound, each against its clap."""
    clock, scene = SimClock(), Scene()
    mic = SyntheticMicrophone(RATE, 1, clock, scene, rate_error=0.001)
    out = Collector()
    capture = AudioCapture(mic, AudioFormat(RATE), out, clock.now_us)
    ahead, claps = clapping(scene, clock)
    end = clock.now + 3 * 60e6

    def until():
        ahead()
        return clock.now >= end

    capture.run(until)
    found = onsets(decode_packets(out.audio, RATE))
    measured = offsets([c / 1e6 for c in claps], found)
    print(f"\n{len(measured)} clicks: offset worst {max(map(abs, measured)) * 1000:.1f} ms")
    assert len(measured) >= 178
    assert max(map(abs, measured)) <= FRAME_S
    stamps = [ts for _, ts in out.audio]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)


def test_after_samples_are_lost_to_an_overrun_sound_is_back_in_sync_within_seconds(caplog):
    """A capture thread starved for longer than the device buffers: ALSA drops half a
    second of samples and FFmpeg says nothing. Stamped on as if none were lost, all later
    sound would be half a second early; the clock notices and starts its timeline again."""
    caplog.set_level(logging.INFO, logger="hatcam.audio")
    clock, scene = SimClock(), Scene()
    mic = SyntheticMicrophone(RATE, 1, clock, scene, rate_error=0.001)
    out = Collector()
    capture = AudioCapture(mic, AudioFormat(RATE), out, clock.now_us)
    ahead, claps = clapping(scene, clock)
    start = clock.now
    overrun_at, end = start + 15e6, start + 45e6
    done = []

    def until():
        ahead()
        if not done and clock.now >= overrun_at:
            mic.overrun(0.5)
            done.append(clock.now)
        return clock.now >= end

    capture.run(until)
    found = onsets(decode_packets(out.audio, RATE))
    before = offsets([c / 1e6 for c in claps if c < overrun_at], found)
    after = offsets([c / 1e6 for c in claps if overrun_at + 4e6 < c < end - 1e6], found)
    print(
        f"\noverrun: worst before {max(map(abs, before)) * 1000:.1f} ms, after "
        f"{max(map(abs, after)) * 1000:.1f} ms"
    )
    assert len(before) >= 13 and len(after) >= 24
    assert max(map(abs, before)) <= FRAME_S and max(map(abs, after)) <= FRAME_S
    stamps = [ts for _, ts in out.audio]
    assert stamps == sorted(stamps)
    lines = [r.getMessage() for r in caplog.records if r.name == "hatcam.audio"]
    assert len(lines) == 1 and "samples were lost" in lines[0], lines


def test_an_unplugged_microphone_never_stops_the_video_and_its_gap_is_logged(caplog):
    """Real time: the synthetic camera (real H.264) and microphone, pulled for 1.5 s."""
    caplog.set_level(logging.INFO, logger="hatcam.audio")
    camera = SyntheticCamera(320, 240, 30, 500_000, realtime=True)
    mic = SyntheticMicrophone(RATE, 1, RealClock(), camera.scene, rate_error=0.001)
    out = Collector()
    fmt = AudioFormat(RATE)
    capture = AudioCapture(mic, fmt, out, camera.clock_us, retry_seconds=0.2)
    camera.start(out)
    capture.start()
    try:
        time.sleep(2.5)
        mic.unplug()
        pulled = time.monotonic_ns() / 1000
        time.sleep(1.5)
        mic.plug()
        time.sleep(2.5)
    finally:
        assert capture.stop()
        camera.stop()
    video = sorted(out.video)
    assert video[-1] - video[0] > 6.0e6
    # The video went on while the microphone was away: frames kept coming through the
    # 1.5 s it was pulled. The bounds leave room for a loaded machine, whose camera drops
    # a few frames for want of CPU, and still fail a video that waited for the sound.
    worst_video_gap = max(b - a for a, b in zip(video, video[1:], strict=False))
    assert worst_video_gap < 0.5e6, worst_video_gap
    assert sum(pulled < ts < pulled + 1.5e6 for ts in video) >= 15
    stamps = [ts for _, ts in out.audio]
    gaps = [
        (a, b - a) for a, b in zip(stamps, stamps[1:], strict=False) if b - a > 2 * fmt.packet_us()
    ]
    assert len(gaps) == 1, gaps
    at, length = gaps[0]
    assert abs(at - pulled) < 300_000
    assert 1.2e6 < length < 2.2e6
    assert stamps[-1] > video[-1] - 1e6  # sound came back and went on
    lines = [r for r in caplog.records if r.name == "hatcam.audio"]
    lost = [r for r in lines if "lost" in r.getMessage()]
    back = [r for r in lines if "back" in r.getMessage()]
    assert len(lost) == 1 and len(back) == 1 and len(lines) == 2, [r.getMessage() for r in lines]
    assert "gap of 1." in back[0].getMessage() or "gap of 2." in back[0].getMessage()
    # What came after the gap is sound: it decodes, and has its clicks.
    after = [(d, ts) for d, ts in out.audio if ts > at + length - 1]
    assert len(onsets(decode_packets(after, RATE))) >= 1


def test_a_microphone_missing_at_start_is_said_once_and_sound_starts_when_it_comes(caplog):
    caplog.set_level(logging.INFO, logger="hatcam.audio")
    camera = SyntheticCamera(320, 240, 30, 500_000, realtime=True)
    mic = SyntheticMicrophone(RATE, 1, RealClock(), camera.scene)
    mic.unplug()
    out = Collector()
    capture = AudioCapture(mic, AudioFormat(RATE), out, camera.clock_us, retry_seconds=0.2)
    camera.start(out)
    capture.start()
    try:
        time.sleep(1.5)
        assert out.video and not out.audio, "the video goes on without sound"
        plugged = time.monotonic_ns() / 1000
        mic.plug()
        time.sleep(2.0)
    finally:
        assert capture.stop()
        camera.stop()
    stamps = [ts for _, ts in out.audio]
    assert stamps and plugged - 50_000 < stamps[0] < plugged + 500_000
    lines = [r.getMessage() for r in caplog.records if r.name == "hatcam.audio"]
    assert len(lines) == 2 and "not available" in lines[0] and "found" in lines[1], lines
    assert capture.state()["state"] == "stopped"


@pytest.mark.usefixtures("fake")
def test_on_a_pi_sound_is_stamped_on_the_frames_clock_from_the_first_sensor_timestamp():
    """picamera2 stamps frames with SensorTimestamp (CLOCK_BOOTTIME) minus the first
    frame's; capture's now must be on that clock: BOOTTIME minus the same first stamp."""
    camera = stub_libcamera().PiCamera(320, 240, 30, 1_000_000)
    assert camera.clock_us() is None, "no now before the first frame"
    exposed = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - 500_000_000  # 0.5 s ago

    class Metadata(dict):
        def __getitem__(self, key):  # libcamera's controls are stubbed: any key is the stamp
            return exposed

    request = SimpleNamespace(request=SimpleNamespace(metadata=Metadata()))
    assert camera.encoder._timestamp(request) == 0  # picamera2's own code: frame one is 0
    assert camera.clock_us() == pytest.approx(500_000, abs=100_000)


def test_the_synthetic_microphone_fails_to_open_as_pyavs_alsa_input_does(caplog):
    """The real ALSA input (PyAV) on a microphone that is not there, beside the synthetic
    one unplugged: the same error (av's OSError, EIO); capture says so once and retries."""
    caplog.set_level(logging.INFO, logger="hatcam.audio")
    real = AlsaSource("plughw:9,0", RATE, 1)  # no card 9 here (no sound card at all)
    synthetic = SyntheticMicrophone(RATE, 1, RealClock())
    synthetic.unplug()
    errors = []
    for source in (real, synthetic):
        with pytest.raises(OSError) as caught:
            source.open()
        errors.append((type(caught.value), caught.value.errno))
    assert errors[0] == errors[1] == (av.error.OSError, errno.EIO)
    capture = AudioCapture(real, AudioFormat(RATE), Collector(), lambda: 0.0, retry_seconds=0.1)
    capture.start()
    time.sleep(0.5)
    assert capture.stop()
    lines = [r.getMessage() for r in caplog.records if r.name == "hatcam.audio"]
    assert len(lines) == 1 and "plughw:9,0 not available" in lines[0], lines
    assert capture.state()["state"] == "stopped" and capture.failed is None
