"""6. Bad credentials at run time: the device is re-provisioned with an expired SAS
(hatcam_blob_sas_url); the uploader keeps its queue and logs one clear line per back-off;
re-provisioning with a good (minted) SAS drains the queue, every segment exactly once.

The SAS URL is the production form (https://<account>.blob.core.windows.net/<container>
style: the account in the host name), since the role accepts only that shape; the guest
resolves <account>.blob.faults.test to Azurite through an /etc/hosts line, which Azurite
serves as a production-style URL."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from azure.storage.blob import generate_container_sas

BACKOFF_RE = re.compile(
    r"^hatcam\.uploader: upload refused \(403 [^)]*\): the credential is wrong, expired or "
    r"revoked; provision a new SAS or connection string; keeping (\d+) segment\(s\) queued, "
    r"retry in ([0-9.]+) s$"
)


def expired_sas_url(pi, host: str) -> tuple[str, str]:
    now = datetime.now(UTC)
    token = generate_container_sas(
        pi.svc["account"],
        pi.svc["container"],
        account_key=pi.svc["account_key"],
        permission="ac",  # what the role mints: create and append (live upload)
        start=now - timedelta(days=2),
        expiry=now - timedelta(days=1),
    )
    return f"http://{host}:{pi.svc['azurite_port']}/{pi.svc['container']}?{token}", token


def test_expired_sas_keeps_the_queue_and_a_good_one_drains_it(pi, lab, tmp_path):
    host = f"{pi.svc['account']}.blob.faults.test"
    hosts_line = f"{pi.vm['host_ip']} {host}  # faults suite"
    url, token = expired_sas_url(pi, host)
    signature = re.search(r"sig=([^&]+)", token)[1]
    window = lab.window("expired SAS").open()
    restored = False
    lab.sh(f"echo '{hosts_line}' >> /etc/hosts")
    try:
        lab.wait_new_blob(window.known)
        bad = pi.playbook(
            {**pi.playbook_vars(), "hatcam_blob_mint_sas": False, "hatcam_blob_sas_url": url},
            tmp_path / "expired.json",
        )
        assert bad.returncode == 0, bad.stdout[-3000:]
        assert signature not in bad.stdout + bad.stderr, "the playbook printed the SAS"
        provisioned = time.time()
        restarted_by_playbook = lab.processes()  # the new settings restart both daemons
        landed = set(lab.blob_names())
        lab.wait(lambda: lab.queued() >= 4, 90, "a queue of 4 segments behind the bad SAS")
        time.sleep(10)
        queued = lab.queued()
        backed_off = lab.processes()
        assert backed_off == restarted_by_playbook, (
            f"a daemon restarted behind the bad SAS (MainPID, NRestarts): "
            f"{restarted_by_playbook} -> {backed_off}"
        )
        assert set(lab.blob_names()) == landed, "a segment landed with an expired SAS"
        lines = lab.journal(provisioned, units=("hatcam-upload",))
        uploader = lab.state("uploader")
        good = pi.provision()  # the minted SAS again
        restored = True
        assert signature not in good.stdout + good.stderr
        drained_from = time.time()
        lab.wait_drained()
        drain_s = time.time() - drained_from
    finally:
        lab.sh(f"sed -i '/{re.escape(host)}/d' /etc/hosts")
        if not restored:
            pi.provision()
    window.close()
    figures = window.account(queued_behind_bad_sas=queued, drained_in_s=round(drain_s, 1))
    window.assert_complete(figures)

    # One clear line per back-off, and nothing else from the uploader meanwhile, apart
    # from the restarted daemon's start-up lines (systemd's, "uploading from ...", and
    # "Warning: using insecure memory!", which a library the uploader loads prints while
    # it starts, before its first attempt).
    started = max(
        (t for t, m in lines if m.startswith("hatcam.uploader: uploading from ")), default=0.0
    )
    backoffs = [(t, BACKOFF_RE.match(m)) for t, m in lines if "upload refused" in m]
    others = [
        m
        for t, m in lines
        if "upload refused" not in m
        and not m.startswith("hatcam.uploader: uploading from ")
        and not m.startswith(("Started ", "Stopping ", "Stopped ", "Starting "))
        and "Deactivated successfully" not in m
        and not (m == "Warning: using insecure memory!" and t <= started)
    ]
    assert len(backoffs) >= 3, lines
    assert all(match for _, match in backoffs), [m for _, m in lines]
    assert not others, f"other uploader lines during the back-off: {others}"
    for (t1, m1), (t2, _) in zip(backoffs, backoffs[1:], strict=False):
        assert t2 - t1 >= float(m1[2]) - 0.5, "two lines within one back-off"
    counts = [int(m[1]) for _, m in backoffs]
    assert counts == sorted(counts) and counts[-1] >= 3, f"queue not kept: {counts}"
    assert uploader.get("failing") and "expired" in uploader.get("last_error", ""), uploader
    assert all(signature not in m and "sig=" not in m for _, m in lines)
    lab.note(
        "expired SAS", backoff_lines=len(backoffs), example=backoffs[-1][1][0] if backoffs else ""
    )
