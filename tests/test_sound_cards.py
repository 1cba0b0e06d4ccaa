"""`hatcam check` and the playbook's pre-flight find microphones in /proc/asound.

No sound card exists on these machines, so the tests write /proc/asound trees in the
kernel's own format (sound/core/init.c: "%2i [%-15s]: %s - %s" then the long name indented
by 22 spaces; sound/core/pcm.c: "%02i-%02i: %s : %s" then " : playback N" / " : capture N"),
as a Raspberry Pi 4 with a C-Media USB microphone, a Pi Zero with no sound card, and so on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hatcam import config
from hatcam.device import check
from hatcam.device.audio import cards as sound_cards


def card_line(index: int, card_id: str, driver: str, short: str, long: str) -> str:
    return f"{index:2d} [{card_id:<15s}]: {driver} - {short}\n{'':22s}{long}\n"


def asound(root: Path, cards: str, pcm: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cards").write_text(cards)
    (root / "pcm").write_text(pcm)
    return root


PI4_CARDS = (
    card_line(0, "vc4hdmi0", "vc4-hdmi", "vc4-hdmi-0", "vc4-hdmi-0")
    + card_line(1, "vc4hdmi1", "vc4-hdmi", "vc4-hdmi-1", "vc4-hdmi-1")
    + card_line(
        2,
        "Device",
        "USB-Audio",
        "USB PnP Sound Device",
        "C-Media Electronics Inc. USB PnP Sound Device at usb-0000:01:00.0-1.3, full speed",
    )
)
PI4_PCM = (
    "00-00: MAI PCM i2s-hifi-0 : MAI PCM i2s-hifi-0 : playback 1\n"
    "01-00: MAI PCM i2s-hifi-0 : MAI PCM i2s-hifi-0 : playback 1\n"
    "02-00: USB Audio : USB Audio : capture 1\n"
)


@pytest.fixture
def pi4_with_usb_mic(tmp_path):
    return asound(tmp_path / "asound", PI4_CARDS, PI4_PCM)


def run_check(capsys, asound_dir: Path, **audio) -> tuple[int, dict[str, list[str]]]:
    """`hatcam check`'s output, lines grouped by label (offline: blob storage FAILs)."""
    values = {"HATCAM_CAMERA": "synthetic", "HATCAM_SPOOL_DIR": str(asound_dir / "spool")}
    settings = config.parse({**values, **audio})
    status = check.run_checks(settings, asound=asound_dir)
    lines: dict[str, list[str]] = {}
    for line in capsys.readouterr().out.splitlines():
        label, _, rest = line.partition(":")
        lines.setdefault(label, []).append(rest.strip())
    return status, lines


def test_check_lists_a_usb_microphone_with_the_name_to_configure(capsys, pi4_with_usb_mic):
    _, lines = run_check(capsys, pi4_with_usb_mic)
    assert lines["sound"] == ["ok   off (HATCAM_AUDIO; the capture devices seen are listed below)"]
    # The HDMI outputs only play: they are not offered as microphones.
    assert lines["microphones"] == [
        "card 2 [Device] USB PnP Sound Device: capture device 0: "
        "HATCAM_AUDIO_DEVICE=plughw:CARD=Device,DEV=0"
    ]


def test_a_usb_sound_card_that_plays_and_records_is_offered_once_per_capture_device(
    tmp_path, capsys
):
    root = asound(
        tmp_path / "asound",
        card_line(0, "Headphones", "bcm2835_headpho", "bcm2835 Headphones", "bcm2835 Headphones")
        + card_line(1, "Set", "USB-Audio", "Sound Blaster Play! 3", "Creative Technology Ltd"),
        "00-00: bcm2835 Headphones : bcm2835 Headphones : playback 8\n"
        "01-00: USB Audio : USB Audio : playback 1 : capture 1\n"
        "01-01: USB Audio : USB Audio #1 : capture 1\n",
    )
    _, lines = run_check(capsys, root)
    assert lines["microphones"] == [
        f"card 1 [Set] Sound Blaster Play! 3: capture device {n}: "
        f"HATCAM_AUDIO_DEVICE=plughw:CARD=Set,DEV={n}"
        for n in (0, 1)
    ]


@pytest.mark.parametrize("tree", ["no soundcards", "no /proc/asound"])
def test_check_says_there_is_no_sound_card(tmp_path, capsys, tree):
    root = tmp_path / "asound"
    if tree == "no soundcards":  # the kernel's words when ALSA is loaded but has no card
        asound(root, "--- no soundcards ---\n", "")
    _, lines = run_check(capsys, root)
    assert lines["microphones"] == ["no capture devices (no sound card)"]


def test_a_board_whose_cards_only_play_has_no_microphone(tmp_path, capsys):
    # A Pi 5 without a microphone: two HDMI outputs, nothing that records. The empty
    # second field is real ("vc4-hdmi-0 i2s-hifi-0 :  : playback 1").
    root = asound(
        tmp_path / "asound",
        card_line(0, "vc4hdmi0", "vc4-hdmi", "vc4-hdmi-0", "vc4-hdmi-0")
        + card_line(1, "vc4hdmi1", "vc4-hdmi", "vc4-hdmi-1", "vc4-hdmi-1"),
        "00-00: vc4-hdmi-0 i2s-hifi-0 :  : playback 1\n"
        "01-00: vc4-hdmi-1 i2s-hifi-0 :  : playback 1\n",
    )
    status, lines = run_check(
        capsys, root, HATCAM_AUDIO="on", HATCAM_AUDIO_DEVICE="default:CARD=vc4hdmi0"
    )
    assert lines["microphones"] == [
        "no capture devices (the sound cards here only play: card 0 [vc4hdmi0] vc4-hdmi-0; "
        "card 1 [vc4hdmi1] vc4-hdmi-1)"
    ]
    assert lines["sound"][0].startswith("FAIL default:CARD=vc4hdmi0: not there: no capture")
    assert status == 1


@pytest.mark.parametrize(
    ("device", "verdict"),
    [
        ("plughw:CARD=Device,DEV=0", "ok   plughw:CARD=Device,DEV=0: card 2 [Device] USB PnP"),
        ("hw:2,0", "ok   hw:2,0: card 2 [Device] USB PnP Sound Device, capture device 0"),
        ("2", "ok   plughw:2,0: card 2 [Device] USB PnP Sound Device, capture device 0"),
        ("default:CARD=Device", "ok   default:CARD=Device: card 2 [Device]"),
        # No card in the name: ALSA's configuration decides, so only "some card records".
        ("default", "ok   default: ALSA's configuration picks the card"),
        ("synthetic", "ok   synthetic microphone (no sound card needed)"),
        (
            "hw:CARD=Mic",
            "FAIL hw:CARD=Mic: not there: no sound card 'Mic' (capture devices here: "
            "card 2 [Device] USB PnP Sound Device (plughw:CARD=Device,DEV=0))",
        ),
        (
            "plughw:CARD=Device,DEV=1",
            "FAIL plughw:CARD=Device,DEV=1: not there: card 2 [Device] USB PnP Sound Device "
            "has no capture device 1 (it has 0)",
        ),
        (
            "hw:0,0",
            "FAIL hw:0,0: not there: card 0 [vc4hdmi0] vc4-hdmi-0 has no capture device "
            "(it only plays)",
        ),
    ],
)
def test_check_says_whether_the_configured_microphone_is_there(
    capsys, pi4_with_usb_mic, device, verdict
):
    status, lines = run_check(
        capsys, pi4_with_usb_mic, HATCAM_AUDIO="on", HATCAM_AUDIO_DEVICE=device
    )
    assert lines["sound"][0].startswith(verdict), lines["sound"]
    if verdict.startswith("FAIL"):
        assert status == 1


def test_the_preflight_runs_the_reader_alone_on_a_device_without_hatcam(tmp_path, pi4_with_usb_mic):
    # The playbook copies cards.py to the target and runs it with the target's python3
    # before hatcam is installed: it must need nothing but the standard library.
    script = shutil.copy(Path(sound_cards.__file__), tmp_path / "cards.py")

    def preflight(root: Path, need: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-I", script, "--proc", str(root), "--need", need],
            capture_output=True,
            text=True,
            check=False,
        )

    there = preflight(pi4_with_usb_mic, "plughw:CARD=Device,DEV=0")
    assert (there.returncode, there.stdout, there.stderr) == (0, "", "")
    missing = preflight(tmp_path / "no-asound", "hw:CARD=Mic")
    assert missing.returncode == 1 and missing.stderr == ""
    assert missing.stdout == "no capture devices (no sound card)\n"
