"""One provisioned virtual Pi for the whole fault suite (tests/support/session.py).

It is booted and provisioned once with the real playbook (a small, quick hat cam:
320x240 at 10 fps, 4 s segments, a still every 2 s) beside its own Azurite (a custom
account whose key is random, so "the key is nowhere on the device" means something)
and a password-protected redis-server. The cases run in file order against it; each
leaves the camera stopped, the queue empty and the settings as provisioned.

Figures (per fault: segments recorded / uploaded / lost / duplicated, ...) are written
to $HATCAM_FAULTS_FIGURES.{json,md} (default: faults-figures.* in pytest's base temp
directory) and printed at the end of the run.

HATCAM_FAULTS_ATTACH=WORKDIR (development only) runs the cases against a guest that is
already up and provisioned (the ProvisionedPi workdir of an earlier session kept
running) instead of booting one, and leaves it running.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from .lab import Lab
from tests.support.session import VPI, ProvisionedPi, run

# Overridable so that two fault suites can run side by side on one machine (development).
NAME = os.environ.get("HATCAM_FAULTS_NAME", "faults")
SUBNET = os.environ.get("HATCAM_FAULTS_SUBNET", "10.213.10")
ACCOUNT = "hatcamfaults"
FPS, SEGMENT_SECONDS = 10, 4
SETTINGS = {
    "hatcam_resolution": "320x240",
    "hatcam_fps": FPS,
    "hatcam_bitrate": 200_000,
    "hatcam_segment_seconds": SEGMENT_SECONDS,
    "hatcam_retry_max_seconds": 5,
    "hatcam_min_free_mb": 50,
    "hatcam_disk_policy": "pause",
    "hatcam_stills": True,
    "hatcam_image_capture_frequency": 2,
    "hatcam_image_expiry": 3600,
}
_LAB: Lab | None = None


def _interrupted(*_args):
    raise KeyboardInterrupt  # SIGTERM unwinds through the teardown, like Ctrl-C


@pytest.fixture(scope="session")
def pi(tmp_path_factory):
    if os.geteuid() != 0:
        message = "the fault suite boots a virtual Pi (systemd-nspawn, mounts, nftables)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}, and CI is set: run the suite as root", pytrace=False)
        pytest.skip(f"{message}: run as root")
    attach = os.environ.get("HATCAM_FAULTS_ATTACH")
    if attach:
        machine = ProvisionedPi(
            NAME, SUBNET, Path(attach), SETTINGS, log=lambda text: None, account=ACCOUNT
        )
        yield machine.attach()
        return
    workdir = tmp_path_factory.mktemp("faults-pi")
    run([*VPI, "down", NAME], check=False, capture_output=True)  # a killed run's leftovers
    previous = signal.signal(signal.SIGTERM, _interrupted)
    log_path = workdir / "session.log"

    def log(text: str) -> None:
        with log_path.open("a") as fh:
            fh.write(text + "\n")

    machine = ProvisionedPi(
        NAME,
        SUBNET,
        workdir,
        SETTINGS,
        log=log,
        account=ACCOUNT,
    )
    try:
        with machine:
            yield machine
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def lab(pi, tmp_path_factory):
    global _LAB
    report = os.environ.get("HATCAM_FAULTS_FIGURES")
    path = Path(report) if report else tmp_path_factory.getbasetemp() / "faults-figures"
    if path.suffix in (".json", ".md"):
        path = path.with_suffix("")
    _LAB = Lab(pi, FPS, SEGMENT_SECONDS, path)
    return _LAB


def pytest_terminal_summary(terminalreporter):
    if _LAB is None or not _LAB.figures:
        return
    md = _LAB.report.with_suffix(".md")
    terminalreporter.section("hatcam fault figures")
    terminalreporter.write_line(md.read_text() if md.exists() else "(no figures)")
    terminalreporter.write_line(f"written to {md} and {md.with_suffix('.json')}")
