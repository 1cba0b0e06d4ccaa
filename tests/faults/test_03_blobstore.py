"""2. Blob store down: Azurite is stopped while the Pi records, then started again on the
same port and data directory; every segment arrives, none lost, none twice; neither
daemon restarts and the video has no hole."""

from __future__ import annotations

import math
import os
import time

OUTAGE = float(os.environ.get("HATCAM_FAULTS_STORE_OUTAGE", 20))


def test_blob_store_down_and_back(pi, lab):
    window = lab.window("blob store down").open()
    lab.wait_new_blob(window.known)
    before = set(lab.blob_names())
    pi.stop_service("azurite")
    down = time.time()
    try:
        time.sleep(OUTAGE)
        queued = lab.queued()
        failing = lab.state("uploader").get("last_error")
    finally:
        # Blobs can land from the moment Azurite starts; its creation times are whole seconds.
        restarting = math.floor(time.time())
        pi.start_service("azurite")
    up = time.time()
    assert before <= set(lab.blob_names()), "blobs stored before the outage are gone"
    lab.wait_drained()
    window.close()
    figures = window.account(outage_s=round(up - down, 1), queued_at_end_of_outage=queued)
    window.assert_one_run(figures)
    window.assert_complete(figures)
    assert queued >= OUTAGE // 4 - 2
    assert failing and "unreachable" in failing, failing
    recorded_during = [s for s in window.segments if down <= s.start.timestamp() < up]
    assert len(recorded_during) >= OUTAGE // 4 - 1
    assert all(s.created.timestamp() >= restarting for s in recorded_during)
    lab.note("blob store down", recorded_during_outage=len(recorded_during), uploader_said=failing)
