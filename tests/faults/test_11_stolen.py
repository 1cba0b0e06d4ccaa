"""8. Stolen device: with the device's own credential (its SAS, read from its settings
file as a thief with root on the card would) listing, reading and deleting blobs all
fail; the account key is nowhere on the device's disk (everything the guest wrote: its
overlay's upper layer); /etc/hatcam/hatcam.env is not readable by other users; no secret
is in the journal or in `ps` output. Runs last, so the journal holds every fault's
lines (the expired-SAS back-offs among them)."""

from __future__ import annotations

import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient

from .lab import ENV_FILE


def device_sas(lab) -> str:
    for line in lab.sh(f"cat {ENV_FILE}").splitlines():
        if line.startswith("HATCAM_BLOB_SAS_URL="):
            return line.split("=", 1)[1].strip("'\"")
    raise AssertionError("no HATCAM_BLOB_SAS_URL in the device's settings")


def secrets_of(pi, lab) -> dict[str, str]:
    sig = parse_qs(urlsplit(device_sas(lab)).query)["sig"][0]
    return {
        "account key": pi.svc["account_key"],
        "SAS signature": sig,
        "SAS signature (URL-encoded)": device_sas(lab).split("sig=")[1].split("&")[0],
        "Redis password": pi.svc["redis_password"],
    }


def refused(action) -> int | None:
    try:
        action()
    except HttpResponseError as exc:
        return exc.status_code
    return None


def test_device_credential_cannot_list_read_replace_or_delete(pi, lab):
    thief = ContainerClient.from_container_url(device_sas(lab))
    blob = next(iter(lab.blob_names()))
    results = {
        "list": refused(lambda: list(thief.list_blobs())),
        "read": refused(lambda: thief.download_blob(blob).readall()),
        "properties": refused(lambda: thief.get_blob_client(blob).get_blob_properties()),
        "delete": refused(lambda: thief.delete_blob(blob)),
    }
    assert results == {k: 403 for k in results}, results
    assert blob in lab.blob_names(), "the blob is gone"
    # The device's SAS (sp=c) must not write over a blob whose name it knows either
    # (tried on a scratch blob).
    owner = pi.container()
    owner.upload_blob("zz-faults-probe/original.bin", b"original", overwrite=True)
    try:
        overwrite = refused(
            lambda: thief.upload_blob("zz-faults-probe/original.bin", b"replaced", overwrite=True)
        )
        kept = owner.download_blob("zz-faults-probe/original.bin").readall() == b"original"
    finally:
        owner.delete_blob("zz-faults-probe/original.bin")
    assert overwrite == 403 and kept, "the device credential replaced a blob"
    lab.note(
        "stolen device",
        **{f"{k} with the device SAS": v for k, v in results.items()},
        overwrite_known_blob=f"status {overwrite or 201}, original kept: {kept}",
    )


def test_account_key_is_nowhere_on_the_card(pi, lab):
    upper = pi.upper_dir()
    secrets = secrets_of(pi, lab)

    def files_holding(text: str) -> list[str]:
        out = subprocess.run(
            ["grep", "-rlF", "--", text, str(upper)], capture_output=True, text=True, check=False
        )
        return [p.removeprefix(str(upper)) for p in out.stdout.split()]

    assert files_holding(secrets["account key"]) == []
    # The search does look through what provisioning wrote: the SAS is found where it
    # belongs, and only there.
    assert files_holding(secrets["SAS signature (URL-encoded)"]) == [ENV_FILE]
    lab.note("stolen device", account_key_on_card="no", sas_found_only_in=ENV_FILE)


def test_settings_file_is_not_readable_by_others(lab):
    assert lab.sh(f"stat -c '%a %U %G' {ENV_FILE} $(dirname {ENV_FILE})").split("\n")[:2] == [
        "640 root hatcam",
        "750 root hatcam",
    ]
    for user in ("pi", "nobody"):
        out = lab.sh(
            f"setpriv --reuid={user} --regid=$(id -g {user}) --init-groups cat {ENV_FILE} "
            "2>&1; echo status=$?"
        )
        assert "Permission denied" in out and out.strip().endswith("status=1"), (user, out)


@pytest.mark.parametrize("where", ["journal", "ps", "provisioning output"])
def test_no_secret_in_logs_or_process_list(pi, lab, where):
    if where == "journal":
        text = lab.sh("journalctl -o verbose --no-pager -q", timeout=300)
    elif where == "ps":
        lab.systemctl("start", "hatcam-camera")
        try:
            text = lab.sh(
                "ps -eww -o args; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' "
                "| grep -v '^$' || true"
            )
        finally:
            lab.systemctl("stop", "hatcam-camera")
    else:
        text = "".join(p.read_text() for p in pi.workdir.glob("*.log"))
    assert text.strip(), f"nothing read from the {where}"
    found = [name for name, secret in secrets_of(pi, lab).items() if secret in text]
    assert found == [], f"{', '.join(found)} in the {where}"
    lab.note("stolen device", **{f"secrets in {where}": "none"})
