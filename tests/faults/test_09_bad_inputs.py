"""10. Bad inputs. To the playbook: each wrong role variable fails the run before any
task changes the host, with one clear message naming the variable, and the device's
settings, units and daemons stay as they were. To the daemons: each wrong setting in
their environment makes `hatcam camera` / `hatcam upload` on the device exit with status
2 and one line naming it, touching nothing (tests/test_config.py covers every setting
off the device; these rows run on the provisioned Pi)."""

from __future__ import annotations

import re
import shlex

import pytest

from .lab import ENV_FILE, SPOOL

# (variable, bad value, text the failure message must contain)
PLAYBOOK = [
    ("hatcam_resolution", "1281x720", 'hatcam_resolution "1281x720" even sides'),
    ("hatcam_fps", 0, "hatcam_fps 1-120"),
    ("hatcam_segment_seconds", 900, "hatcam_segment_seconds 1-600"),
    (
        "hatcam_disk_policy",
        "panic",
        "value of hatcam_disk_policy must be one of: pause, drop-oldest, got: panic",
    ),
    (
        "hatcam_camera",
        "webcam",
        "value of hatcam_camera must be one of: picamera2, synthetic, got: webcam",
    ),
    (
        "hatcam_device_name",
        "Hat Cam",
        "pi_base_hostname must be a hostname (lowercase letters, digits, inner hyphens; got "
        '"Hat Cam": set hatcam_device_name',
    ),
    ("hatcam_blob_container", "My_Videos", 'hatcam_blob_container "My_Videos" an Azure container'),
    (
        "hatcam_blob_sas_url",
        "https://acct.blob.core.windows.net/videos?sv=1&sp=cw&sig=x",
        "give exactly one of hatcam_blob_sas_url, hatcam_blob_connection_string or "
        "hatcam_blob_mint_sas (given: 2)",
    ),
    ("hatcam_redis_url", "", "hatcam_stills is on but there is no REDIS_URL"),
    ("hatcam_image_expiry", 0, "hatcam_image_expiry 1-31536000"),
    ("hatcam_env_extra", {"bad-name": "1"}, "hatcam_env_extra names like HATCAM_X"),
    ("pi_base_timezone", "Mars/Olympus", "pi_base_timezone: Mars/Olympus is not a time zone"),
    ("pi_wifi_country", "gb", "pi_wifi_country must be a two-letter uppercase country code"),
]

# (setting, bad value, the one line `hatcam` prints)
DAEMON = [
    ("camera", "HATCAM_FPS", "0", "hatcam: HATCAM_FPS: must be from 1 to 120 frames per second"),
    ("camera", "HATCAM_RESOLUTION", "1280*720", "hatcam: HATCAM_RESOLUTION: must be WIDTHxHEIGHT"),
    (
        "camera",
        "HATCAM_DISK_POLICY",
        "panic",
        "hatcam: HATCAM_DISK_POLICY: must be one of pause, drop-oldest, got 'panic'",
    ),
    ("camera", "REDIS_URL", "http://x:6379", "hatcam: REDIS_URL: must look like redis://"),
    (
        "upload",
        "HATCAM_BLOB_SAS_URL",
        "http://h/videos?sp=r&sig=x",
        "hatcam: HATCAM_BLOB_SAS_URL: the SAS grants sp=r but this command needs c",
    ),
    ("upload", "HATCAM_RETRY_MAX_SECONDS", "0", "hatcam: HATCAM_RETRY_MAX_SECONDS: must be from"),
]


def snapshot(lab) -> str:
    """What a failed run must not change: settings, units, daemons, spool counter."""
    return lab.sh(
        f"sha256sum {ENV_FILE} /etc/systemd/system/hatcam-*.service "
        f"/etc/NetworkManager/system-connections/* /etc/timezone 2>/dev/null; "
        f"systemctl show -p MainPID --value hatcam-camera hatcam-upload"
    )


@pytest.fixture(scope="module")
def before(lab):
    lab.systemctl("start", "hatcam-camera")
    state = snapshot(lab)
    yield state
    lab.systemctl("stop", "hatcam-camera")


@pytest.mark.parametrize(
    ("variable", "value", "message"), PLAYBOOK, ids=[row[0] for row in PLAYBOOK]
)
def test_playbook_refuses_a_bad_variable_before_any_change(
    pi, lab, before, tmp_path, variable, value, message
):
    refused_before_any_change(pi, lab, before, tmp_path, {variable: value}, message)
    lab.note("bad inputs (playbook)", **{variable: "refused, changed=0"})


# (hatcam_audio_device with hatcam_audio on, what the failure says; {host}: the guest's name)
MICROPHONE = [
    # Not an ALSA name at all (a card's long name): refused by the pattern in settings.json.
    (
        "USB PnP Sound Device",
        "hatcam_audio_device: must be an ALSA capture device name such as "
        "plughw:CARD=Device,DEV=0 or hw:1,0, a card index such as 1, or synthetic, "
        'got "USB PnP Sound Device"',
    ),
    # A good name, but the guest has no sound card: the pre-flight reads its /proc/asound.
    (
        "hw:CARD=Mic",
        'hatcam_audio_device: "hw:CARD=Mic" is not on {host}: no capture devices (no sound card)',
    ),
]


@pytest.mark.parametrize(("device", "message"), MICROPHONE, ids=["not-alsa", "absent"])
def test_playbook_refuses_a_microphone_the_pi_does_not_have(
    pi, lab, before, tmp_path, device, message
):
    sound = {"hatcam_audio": True, "hatcam_audio_device": device}
    refused_before_any_change(pi, lab, before, tmp_path, sound, message.format(host=pi.name))
    assert "audio" not in lab.sh("id -nG hatcam").split(), "the hatcam user joined group audio"
    lab.note("bad inputs (playbook)", **{f"hatcam_audio_device {device!r}": "refused, changed=0"})


def refused_before_any_change(pi, lab, before, tmp_path, variables: dict, message: str):
    """The playbook with these variables fails in its pre-flight, saying ``message``,
    reveals no secret and changes nothing on the device."""
    result = pi.playbook({**pi.playbook_vars(), **variables}, tmp_path / "bad.json")
    out = result.stdout + result.stderr
    recap = re.search(
        rf"^{pi.name}\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", out, re.M
    )
    assert result.returncode != 0 and recap, out[-3000:]
    assert recap[1] == "0" and recap[2] == "1", recap[0]
    fatal = out[out.index("fatal: [") :]
    text = " ".join(fatal.split())
    assert " ".join(message.split()) in text, fatal[:3000]
    for secret in (pi.svc["account_key"], pi.svc["redis_password"]):
        assert secret not in out, "a secret in the playbook's output"
    assert snapshot(lab) == before, "a failed run changed the device"


@pytest.mark.parametrize(
    ("command", "setting", "value", "line"), DAEMON, ids=[row[1] for row in DAEMON]
)
def test_daemon_refuses_a_bad_setting_with_one_line(lab, before, command, setting, value, line):
    out = lab.sh(
        f"cd / && setpriv --reuid=hatcam --regid=hatcam --init-groups env "
        f"{setting}={shlex.quote(value)} /opt/hatcam/venv/bin/hatcam --env-file {ENV_FILE} "
        f'{command} 2>&1; echo "status=$?"',
        timeout=60,
    )
    lines = out.strip().splitlines()
    assert lines[-1] == "status=2", out
    assert len(lines) == 2 and lines[0].startswith(line), out
    assert "sig=" not in out.replace("sig=x", "")
    # Only the provisioned daemons run: the refused one started nothing.
    daemons = "pgrep -fc '^/opt/hatcam/venv/bin/python[0-9.]* /opt/hatcam/venv/bin/hatcam '"
    assert lab.sh(daemons).strip() == "2"
    assert lab.sh(f"ls {SPOOL}/recording").count(".ts") <= 1
    assert snapshot(lab) == before
    lab.note("bad inputs (daemons)", **{setting: "exit 2, one line"})
