"""The sound cards ALSA sees and which of them can record, read from /proc/asound.

``hatcam check`` lists them, and the playbook's pre-flight runs this very file on the
target (``python3 cards.py --need NAME``) before anything changes, so both read the files
the same way. Standard library only and no hatcam imports: it runs on a device where
hatcam is not installed yet. Reading /proc needs no ALSA library and opens no device, so
it cannot disturb a microphone the camera is recording from.

The formats are the kernel's (sound/core/init.c and pcm.c)::

    cards:  " 2 [Device         ]: USB-Audio - USB PnP Sound Device"
            "                      C-Media Electronics Inc. USB PnP Sound Device at usb-..."
    pcm:    "02-00: USB Audio : USB Audio : capture 1"

and ``--- no soundcards ---`` (or no /proc/asound at all) when there is none.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

PROC_DIR = Path("/proc/asound")
NO_CARD = "no capture devices (no sound card)"
_CARD_LINE = re.compile(r"^\s*(\d+) \[(\S+)\s*\]: (.*?) - (.*)$")
_PCM_LINE = re.compile(r"^(\d+)-(\d+): (.*)$")


@dataclass(frozen=True)
class Card:
    index: int
    id: str  # ALSA's id: stable across reboots and USB ports, unlike the index
    name: str
    capture: tuple[int, ...]  # the card's PCM devices that can record

    def pcm_name(self, device: int) -> str:
        """The HATCAM_AUDIO_DEVICE to give for one of its capture devices: by id (the index
        can change when another USB device appears), through plughw (which converts rate
        and format: cheap microphones offer one or two of each)."""
        return f"plughw:CARD={self.id},DEV={device}"

    def describe(self) -> str:
        return f"card {self.index} [{self.id}] {self.name}"


def read_cards(root: Path = PROC_DIR) -> list[Card]:
    """Every sound card, with its capture PCM devices (none: it only plays)."""
    try:
        cards_text = (Path(root) / "cards").read_text(errors="replace")
    except OSError:  # no /proc/asound: the kernel has no sound support loaded
        return []
    try:
        pcm_text = (Path(root) / "pcm").read_text(errors="replace")
    except OSError:
        pcm_text = ""
    capture: dict[int, list[int]] = {}
    for line in pcm_text.splitlines():
        match = _PCM_LINE.match(line)
        # "id : name : playback N : capture N"; a name may be empty ("vc4-hdmi-0 :  : ...").
        if match and any(part.startswith("capture ") for part in match[3].split(" : ")):
            capture.setdefault(int(match[1]), []).append(int(match[2]))
    cards = []
    for line in cards_text.splitlines():
        match = _CARD_LINE.match(line)
        if match:
            index = int(match[1])
            cards.append(Card(index, match[2], match[4].strip(), tuple(capture.get(index, ()))))
    return cards


def split_name(name: str) -> tuple[str | None, int | None]:
    """(card, device) an ALSA PCM name points at: ``hw:CARD=Mic,DEV=0`` and ``plughw:1,0``
    name both; ``default`` or a name from an asound.conf names neither (None)."""
    _, _, args = name.partition(":")
    if not args:
        return None, None
    keyed, positional = {}, []
    for part in args.split(","):
        key, equals, value = part.partition("=")
        if equals:
            keyed[key] = value
        else:
            positional.append(part)
    card = keyed.get("CARD", positional[0] if positional else None)
    device = keyed.get("DEV", positional[1] if len(positional) > 1 else None)
    return card, (int(device) if device is not None and device.isdigit() else None)


def problem(cards: list[Card], name: str) -> str | None:
    """Why the capture device ``name`` is not there (None: it is). A name without a card
    (``default``, ``dsnoop``, one from asound.conf) can only be checked loosely: some card
    must be able to record, since ALSA's configuration decides which one it means."""
    recorders = [card for card in cards if card.capture]
    if not recorders:
        if not cards:
            return NO_CARD
        players = "; ".join(card.describe() for card in cards)
        return f"no capture devices (the sound cards here only play: {players})"
    card_name, device = split_name(name)
    if card_name is None:
        return None
    card = next((c for c in cards if card_name in (str(c.index), c.id)), None)
    if card is None:
        here = "; ".join(f"{c.describe()} ({c.pcm_name(c.capture[0])})" for c in recorders)
        return f"no sound card {card_name!r} (capture devices here: {here})"
    if not card.capture:
        return f"{card.describe()} has no capture device (it only plays)"
    if device is not None and device not in card.capture:
        devices = ", ".join(str(d) for d in card.capture)
        return f"{card.describe()} has no capture device {device} (it has {devices})"
    return None


def main(argv: list[str] | None = None) -> int:
    """The pre-flight: print why NAME is missing and exit 1, or exit 0 when it is there."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proc", type=Path, default=PROC_DIR)
    parser.add_argument("--need", required=True, help="an ALSA PCM name, e.g. plughw:1,0")
    args = parser.parse_args(argv)
    found = problem(read_cards(args.proc), args.need)
    if found:
        print(found)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
