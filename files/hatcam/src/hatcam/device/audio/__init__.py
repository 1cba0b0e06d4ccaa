"""Sound beside the picture: the seam between audio capture and the segmenter.

Capture (a USB microphone through PyAV's ALSA input, or the synthetic microphone) encodes
AAC-LC and hands each packet to the same seam the video uses, picamera2's shape:

    output.outputframe(data, keyframe=True, timestamp=us, packet=None, audio=True)

- ``data``: one raw AAC-LC access unit (no ADTS header), ``SAMPLES_PER_PACKET`` samples.
- ``timestamp``: capture time of its first sample in microseconds, on the *video* clock
  (the same clock as the video frames' timestamps), so the segmenter needs no second clock.

The segmenter is told the format once (``Segmenter(..., audio=AudioFormat(...))``) and
muxes the packets into the same MPEG-TS as a second stream.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLES_PER_PACKET = 1024  # AAC-LC frame length
ADTS_HEADER = 7  # bytes, without CRC
# ISO 14496-3 sampling frequency index, for the AudioSpecificConfig.
_RATE_INDEX = {
    96000: 0,
    88200: 1,
    64000: 2,
    48000: 3,
    44100: 4,
    32000: 5,
    24000: 6,
    22050: 7,
    16000: 8,
    12000: 9,
    11025: 10,
    8000: 11,
}


@dataclass(frozen=True)
class AudioFormat:
    rate: int = 48000  # samples per second (nominal: a real microphone is off by up to ~0.1 %)
    channels: int = 1
    bitrate: int = 64000  # bits per second of AAC

    def packet_us(self) -> float:
        """Nominal length of one packet in microseconds."""
        return SAMPLES_PER_PACKET * 1_000_000 / self.rate

    def adts(self, unit: bytes) -> bytes:
        """``unit`` (one raw AAC-LC access unit) in the 7-byte ADTS header MPEG-TS carries
        AAC in. Framed here, not by the muxer from extradata: PyAV before 11 (Pi OS
        Bookworm's python3-av is 10) refuses extradata on an output stream."""
        length = ADTS_HEADER + len(unit)
        header = (
            (0xFFF << 44)  # syncword; MPEG-4, layer 0
            | (1 << 40)  # no CRC
            | (1 << 38)  # profile: AAC LC (object type 2, minus 1)
            | (_RATE_INDEX[self.rate] << 34)
            | (self.channels << 30)
            | (length << 13)
            | (0x7FF << 2)  # buffer fullness: variable bit rate
        )
        return header.to_bytes(ADTS_HEADER, "big") + unit
