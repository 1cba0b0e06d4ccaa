"""Where samples come from: one small interface, and the real one (ALSA through PyAV).

A source delivers periods of interleaved signed 16-bit samples at its own sample clock.
``open()`` and ``read()`` raise ``OSError`` when the device is not there: PyAV's ALSA input
fails a read with EIO (ALSA's -ENODEV when a USB device vanishes, which FFmpeg's alsa_dec
turns into EIO) and fails to open until the device is back.

Why PyAV's ALSA input and not picamera2's own audio (Encoder.audio, picamera2 0.3.23 and
later; read in picamera2/encoders/encoder.py, 0.3.38, lines 66-72 and 320-420):
- it opens ``{'file': 'default', 'format': 'pulse'}`` by default: PulseAudio, which Pi OS
  Lite does not run;
- it stamps audio relative to its own first audio packet, shifted by a fixed
  ``audio_sync = -100000`` us guess (``_handle_audio_packet``), not on the video clock: sync
  would rest on that constant, and a microphone off its nominal rate drifts freely;
- its audio thread ends for good when the input fails (``_audio_thread_func`` has no retry),
  so an unplugged microphone would leave the rest of the recording silent;
- it needs picamera2 >= 0.3.23, and Pi OS has shipped older ones.
Here capture runs in the camera daemon, stamps every packet on the video clock
(hatcam.device.audio.clock), and survives the microphone coming and going.
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import av


class Source(Protocol):
    rate: int
    channels: int

    def open(self) -> None: ...

    def read(self) -> bytes: ...

    def close(self) -> None: ...


class AlsaSource:
    """A USB microphone (or any ALSA capture PCM: ``hw:CARD=Device,DEV=0``, ``plughw:1,0``,
    or a card index, taken as ``plughw:N,0`` as config does), through PyAV's ALSA input."""

    def __init__(self, device: str, rate: int, channels: int):
        self.device = f"plughw:{device},0" if device.isdigit() else device
        self.rate, self.channels = rate, channels
        self._container = None
        self._packets = None

    def open(self) -> None:
        self._container = av.open(
            self.device,
            format="alsa",
            options={"sample_rate": str(self.rate), "channels": str(self.channels)},
        )
        self._packets = self._container.demux(audio=0)

    def read(self) -> bytes:
        """The next period, as captured: raw PCM (pcm_s16le), no decoder needed. Its pts
        (CLOCK_REALTIME, smoothed by FFmpeg) is not used: capture stamps on the video clock."""
        for packet in self._packets:
            if packet.size:
                return bytes(packet)
        raise OSError(5, f"{self.device}: the capture stream ended")

    def close(self) -> None:
        if self._container is not None:
            with contextlib.suppress(OSError):  # the device is gone: nothing to close
                self._container.close()
            self._container = self._packets = None

    def __str__(self) -> str:
        return self.device
