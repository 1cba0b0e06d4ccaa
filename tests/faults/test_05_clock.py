"""7. Clock jump backwards (a Pi has no RTC; NTP corrects it later): no name collides,
nothing is overwritten.

The guest shares the host's kernel clock (it cannot and must not set it), so the jump
is made for the camera daemon alone: libfaketime (Debian's faketime package, installed
in the guest) preloaded through a systemd drop-in with a negative offset, then the
daemon restarted. The offset is chosen so the daemon's clock lands inside the minute it
has just recorded: its new segments carry start times (and name stamps) it has already
used. Then "NTP corrects it": the drop-in goes and the daemon restarts on the true time.
"""

from __future__ import annotations

import time

DROPIN_DIR = "/etc/systemd/system/hatcam-camera.service.d"
DROPIN = f"{DROPIN_DIR}/zz-faults-faketime.conf"


def test_clock_jump_backwards(pi, lab):
    lab.sh(
        "command -v faketime >/dev/null || DEBIAN_FRONTEND=noninteractive "
        "apt-get install -y -q --no-install-recommends faketime >/dev/null",
        timeout=300,
    )
    library = lab.sh("dpkg -L libfaketime | grep '/libfaketimeMT.so.1$'").strip()
    window = lab.window("clock jump backwards").open()
    try:
        lab.wait(lambda: len(lab.blob_names()) - len(window.known) >= 2, 60, "two segments")
        offset = int(time.time() - window.t0) + 2
        lab.sh(
            f"mkdir -p {DROPIN_DIR} && printf '%s\\n' '[Service]' "
            f"'Environment=LD_PRELOAD={library}' 'Environment=FAKETIME=-{offset}' "
            f"'Environment=FAKETIME_DONT_FAKE_MONOTONIC=1' > {DROPIN} && "
            "systemctl daemon-reload && systemctl restart hatcam-camera"
        )
        pid = lab.main_pids()["hatcam-camera"]
        assert "FAKETIME" in lab.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ"), "no faketime"
        lab.wait(lambda: lab.seq() >= window.seq0 + 6, 60, "segments on the jumped clock")
    finally:
        lab.sh(f"rm -f {DROPIN} && systemctl daemon-reload && systemctl restart hatcam-camera")
    fixed = lab.seq()
    lab.wait(lambda: lab.seq() >= fixed + 2, 60, "a segment on the corrected clock")
    window.close()
    figures = window.account(clock_offset_s=-offset)
    window.assert_complete(figures)
    # Restarted twice on purpose, and only then: a crash on a reused time would show as a
    # fourth run of PTS (the camera's MainPID changes by design here, the uploader's not).
    assert figures.runs == 3, f"{figures.runs} runs of PTS, not 3: {figures.breaks}"
    window.assert_same_processes(units=("hatcam-upload",))
    segments = window.segments
    names = [s.filename for s in segments]
    assert len(set(names)) == len(names) == figures.recorded
    # Which segments were named on the jumped clock: their time trails the store's clock.
    jumped = [s for s in segments if (s.created - s.end).total_seconds() > offset / 2]
    true = [s for s in segments if s not in jumped]
    assert len(jumped) >= 2, f"no segment was recorded on the jumped clock: {names}"
    # The jump went back into time already used: a jumped segment starts inside the span
    # of a segment recorded before the jump, so only the boot id + sequence number in the
    # name keep them apart.
    reused = [j for j in jumped if any(t.start <= j.start <= t.end for t in true)]
    assert reused, "the jumped clock never revisited a recorded time"
    backwards = [b for a, b in zip(segments, segments[1:], strict=False) if b.stamp < a.stamp]
    assert backwards, "no segment name went back in time"
    # Nothing was written over: one version of each blob, content as recorded (MD5 above).
    rewritten = [s.filename for s in segments if not s.written_once]
    assert not rewritten, f"blobs written over: {rewritten}"
    assert lab.state("uploader").get("already_there", 0) == 0
    lab.note(
        "clock jump backwards",
        simulated=f"libfaketime drop-in on hatcam-camera, FAKETIME=-{offset} s, then removed",
        segments_on_jumped_clock=len(jumped),
        of_which_reuse_a_recorded_time=len(reused),
        names_going_back=len(backwards),
    )
