"""``hatcam fetch``: download a device's footage and stitch it into MP4 files."""

from __future__ import annotations


def add_arguments(parser) -> None:
    pass


def run_fetch(settings, args) -> int:
    raise SystemExit("hatcam fetch: not built yet")
