"""9. Hardening: systemd-analyze security exposure <= 3.0 for both units; the daemons run
as hatcam, not root."""

from __future__ import annotations

import re

import pytest

from .lab import UNITS

EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): ([0-9.]+) (\S+)")


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_3_or_lower(lab, unit):
    out = lab.sh(f"systemd-analyze security --no-pager {unit}.service")
    match = EXPOSURE_RE.search(out)
    assert match, f"no overall exposure line in:\n{out[-1500:]}"
    exposure = float(match[2])
    lab.note("hardening", **{f"{unit} exposure": f"{exposure} {match[3]}"})
    assert exposure <= 3.0, f"{unit}: exposure {exposure} ({match[3]})"


@pytest.mark.parametrize("unit", UNITS)
def test_daemon_runs_as_hatcam(lab, unit):
    assert lab.active(unit), f"{unit} is not running"
    pid = lab.main_pids()[unit]
    uid = lab.sh("id -u hatcam").strip()
    status = lab.sh(f"grep -E '^(Uid|Gid|CapEff):' /proc/{pid}/status")
    uids = re.search(r"Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status).groups()
    assert set(uids) == {uid} and uid != "0", f"{unit} runs with uids {uids}"
    assert re.search(r"CapEff:\s+0+\n", status + "\n"), f"{unit} holds capabilities: {status}"
    user = lab.sh(f"ps -o user= -p {pid}").strip()
    assert user == "hatcam"
    lab.note("hardening", **{f"{unit} user": f"{user} (uid {uid}, no capabilities)"})
