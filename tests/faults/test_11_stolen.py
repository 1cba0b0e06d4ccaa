"""8. Stolen device: with the device's own credential (its SAS, read from its settings
file as a thief with root on the card would) listing, reading and deleting blobs all
fail; the account key is nowhere on the device's disk (everything the guest wrote: its
overlay's upper layer); /etc/hatcam/hatcam.env is not readable by other users; no secret
is in the journal or in `ps` output. Runs last, so the journal holds every fault's
lines (the expired-SAS back-offs among them).

The device's signing key is on the card too, and a thief with root has it: from then on
it signs records as that device that verify with the device's public key (the one the
control machine keeps), and rotating the key does not undo that for the old one, which
stays trusted for old footage. What the key and the credential together cannot do: sign
as another device, or rewrite or remove what the device already signed and uploaded (the
record, the blob, its closing record); bytes appended to a finished live blob lie outside
the signed size and hash."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import ContainerClient

from hatcam import proof
from hatcam.segment import CLOSING_SUFFIX, LIVE_KEY

from .lab import ENV_FILE


def device_sas(lab) -> str:
    return device_setting(lab, "HATCAM_BLOB_SAS_URL")


def device_setting(lab, name: str) -> str:
    for line in lab.sh(f"cat {ENV_FILE}").splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip("'\"")
    raise AssertionError(f"no {name} in the device's settings")


def stolen_key(lab) -> proof.DeviceKey:
    """The device's signing key, read off the card as root (as a thief would)."""
    path = device_setting(lab, "HATCAM_DEVICE_KEY")
    return proof.DeviceKey(base64.b64decode(lab.sh(f"cat {path}").strip(), validate=True))


def controller_ring(pi) -> proof.KeyRing:
    """The public keys provisioning brought back beside the inventory (fetch's keys)."""
    keys = pi.workdir / "keys"
    assert sorted(p.name for p in keys.glob("*.pub")), f"no public key in {keys}"
    return proof.KeyRing.load(keys)


def secrets_of(pi, lab) -> dict[str, str]:
    sig = parse_qs(urlsplit(device_sas(lab)).query)["sig"][0]
    return {
        "account key": pi.svc["account_key"],
        "SAS signature": sig,
        "SAS signature (URL-encoded)": device_sas(lab).split("sig=")[1].split("&")[0],
        "Redis password": pi.svc["redis_password"],
        "device signing key": lab.sh(f"cat {device_setting(lab, 'HATCAM_DEVICE_KEY')}").strip(),
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


def test_the_stolen_key_signs_as_its_own_device_only(pi, lab, tmp_path):
    thief = stolen_key(lab)
    ring = controller_ring(pi)
    assert ring.keys.get(thief.id, ("?",))[0] == pi.device, "the card's key is not the one kept"
    fields = {"kind": "segment", "device": pi.device, "boot": "0badf00d", "seq": 999999}
    fake = thief.sign({**fields, "frames_sha256": "00" * 32, "prev": ""})
    # What theft means: the thief's fakes carry the device's valid signature from now on.
    assert ring.problem(fake) is None
    # ... but not another device's: a second hat cam's key is in the ring beside it.
    other = proof.DeviceKey.generate(tmp_path / "other.key")
    ring.add_line(other.public_line("hatcam-other"))
    posing = thief.sign({**fields, "device": "hatcam-other"})
    assert ring.problem(posing) == f"signed by {pi.device}'s key, but names device hatcam-other"
    lab.note(
        "stolen device",
        stolen_key_signs_as_its_device="yes: its fakes verify (rotate the key; old key stays "
        "trusted for old footage)",
        stolen_key_signs_as_another_device="refused",
    )


def signed_blobs(pi) -> list[tuple[str, dict, str | None]]:
    """(blob, its signed record, the closing record's name for a live blob) of every
    finished segment whose record is signed."""
    owner = pi.container()
    listed = list(owner.list_blobs(name_starts_with=f"{pi.device}/", include=["metadata"]))
    closing = {b.name: b for b in listed if b.name.endswith(CLOSING_SUFFIX)}
    found = []
    for blob in listed:
        meta, end = blob.metadata or {}, None
        if blob.name.endswith(CLOSING_SUFFIX):
            continue
        if meta.get(LIVE_KEY) == "true":
            end = blob.name + CLOSING_SUFFIX
            if end not in closing:
                continue  # still open
            meta = closing[end].metadata or {}
        if meta.get("proof"):
            found.append((blob.name, json.loads(meta["proof"]), end))
    return found


def test_what_the_device_signed_and_uploaded_cannot_be_rewritten_or_removed(pi, lab):
    ring, thief_key = controller_ring(pi), stolen_key(lab)
    owner = pi.container()
    found = signed_blobs(pi)
    assert found, "no uploaded segment carries a signed record"
    name, signed, end = found[0]
    assert ring.problem(signed) is None
    original = owner.download_blob(name).readall()
    assert hashlib.sha256(original[: signed["size"]]).hexdigest() == signed["sha256"]

    thief = ContainerClient.from_container_url(device_sas(lab))
    forged = thief_key.sign({**signed, "sha256": "00" * 32})  # a valid signature, new content
    forged_meta = {"proof": json.dumps(forged, separators=(",", ":"))}
    targets = [name] + ([end] if end else [])
    attempts = {}
    for target in targets:
        client = thief.get_blob_client(target)
        attempts[f"delete {target}"] = refused(lambda c=client: c.delete_blob())
        attempts[f"replace {target}"] = refused(
            lambda c=client: c.upload_blob(b"forged", overwrite=True, metadata=forged_meta)
        )
        attempts[f"rewrite the record of {target}"] = refused(
            lambda c=client: c.set_blob_metadata(forged_meta)
        )
    assert all(status in (403, 409) for status in attempts.values()), attempts
    after = signed_blobs(pi)
    assert (name, signed, end) in after, "the signed record was changed or removed"

    appended = None
    if end:  # a live blob: create-and-append rights may add bytes at its end ...
        appended = refused(lambda: thief.get_blob_client(name).append_block(b"\x47" * 188))
        now = owner.download_blob(name).readall()
        # ... which the record does not cover: the signed bytes are the same, the rest is not.
        assert now[: signed["size"]] == original[: signed["size"]]
        assert len(now) == len(original) + (188 if appended is None else 0)
        assert hashlib.sha256(now[: signed["size"]]).hexdigest() == signed["sha256"]
    lab.note(
        "stolen device",
        signed_blob_attempts={k.split(" ", 1)[0]: v for k, v in attempts.items()},
        append_to_finished_live_blob=(
            "n/a"
            if end is None
            else (
                "accepted, outside the signed size" if appended is None else f"refused {appended}"
            )
        ),
    )
