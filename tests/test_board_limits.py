"""Settings the hardware can record: each board's encoder and camera memory limits.

The rules are settings.json's "boards"; the daemon checks them at start (`hatcam camera`
exits 2 with one line, nothing written) and the role's pre-flight before any change (one
ansible-playbook run against this machine, one inventory host per case). HATCAM_PI_MODEL /
hatcam_pi_model name the board here: this machine has no device tree, like the virtual Pi.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hatcam import config

from tests.support.footage import env

ROOT = Path(__file__).resolve().parent.parent
PI4 = "Raspberry Pi 4 Model B Rev 1.4"
ZERO_W = "Raspberry Pi Zero W Rev 1.1"
ZERO_2 = "Raspberry Pi Zero 2 W Rev 1.0"
PI5 = "Raspberry Pi 5 Model B Rev 1.0"
PI3 = "Raspberry Pi 3 Model B Plus Rev 1.3"

# (board, resolution, fps, the setting refused, the line's text after "SETTING: ")
REFUSED = [
    (
        PI4,
        "2592x1944",
        15,
        "HATCAM_RESOLUTION",
        "2592x1944 is more than the Raspberry Pi 4 Model B's hardware H.264 encoder can "
        "record (at most 1920x1080: 8192 16x16 blocks a frame, 2032 pixels wide)",
    ),
    (
        PI4,
        "1920x1080",
        60,
        "HATCAM_FPS",
        "60 at 1920x1080 is more than the Raspberry Pi 4 Model B's hardware H.264 encoder "
        "can record (at most 30 fps at that size: 1080p30's 245760 16x16 blocks a second)",
    ),
    (
        ZERO_W,
        "2304x1296",
        30,
        "HATCAM_RESOLUTION",
        "2304x1296 is more than the Raspberry Pi Zero W's hardware H.264 encoder can record "
        "(at most 1920x1080: 8192 16x16 blocks a frame, 2032 pixels wide)",
    ),
    (
        PI3,
        "2048x1024",
        30,
        "HATCAM_RESOLUTION",
        "2048x1024 is more than the Raspberry Pi 3 Model B Plus's hardware H.264 encoder",
    ),
    (
        PI5,
        "2592x1944",
        15,
        "HATCAM_RESOLUTION",
        "2592x1944 is more than the Raspberry Pi 5 Model B's software H.264 encoder (libx264 "
        "on its CPU) can record (at most 2304x1296: 11664 16x16 blocks a frame, 2304 pixels "
        "wide)",
    ),
    (
        PI5,
        "1920x1080",
        50,
        "HATCAM_FPS",
        "50 at 1920x1080 is more than the Raspberry Pi 5 Model B's software H.264 encoder "
        "(libx264 on its CPU) can record (at most 30 fps at that size",
    ),
]

# (board, resolution, fps): what each board can record.
ALLOWED = [
    (PI4, "1920x1080", 30),
    (PI4, "1280x720", 60),
    (PI4, "1640x1232", 30),  # the v2 camera's full field of view, binned
    (ZERO_W, "1920x1080", 30),
    (ZERO_2, "1280x720", 30),
    (PI5, "2304x1296", 20),
    (PI5, "1280x720", 60),
    ("", "4096x2592", 120),  # no device tree: only the generic ranges
    ("Some Other Board", "4096x2592", 120),
]


def ids(rows):
    return [f"{row[0].split(' Rev')[0] or 'unknown'} {row[1]}@{row[2]}" for row in rows]


def write_env(path: Path, model: str, resolution: str, fps: int) -> Path:
    path.write_text(
        f"HATCAM_CAMERA=picamera2\nHATCAM_PI_MODEL='{model}'\n"
        f"HATCAM_RESOLUTION={resolution}\nHATCAM_FPS={fps}\n"
    )
    return path


@pytest.mark.parametrize(
    ("model", "resolution", "fps", "setting", "text"), REFUSED, ids=ids(REFUSED)
)
def test_the_daemon_refuses_what_the_boards_encoder_cannot_record(
    tmp_path, model, resolution, fps, setting, text
):
    spool = tmp_path / "spool"
    env_file = write_env(tmp_path / "hatcam.env", model, resolution, fps)
    result = subprocess.run(
        [sys.executable, "-m", "hatcam.cli", "--env-file", str(env_file), "camera"],
        env=env(HATCAM_SPOOL_DIR=spool),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hatcam: {setting}: {text}"), lines[0]
    assert not spool.exists(), "a refused setting must change nothing"


@pytest.mark.parametrize(("model", "resolution", "fps"), ALLOWED, ids=ids(ALLOWED))
def test_what_the_board_can_record_is_accepted(tmp_path, model, resolution, fps):
    env_file = write_env(tmp_path / "hatcam.env", model, resolution, fps)
    settings = config.load(env_file, environ={})
    assert f"{settings.width}x{settings.height}" == resolution and settings.fps == fps


def test_the_board_is_read_from_the_device_tree_when_not_named(tmp_path):
    model_file = tmp_path / "model"
    model_file.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\0")  # the kernel ends it with NUL
    assert config.read_pi_model({}, model_file) == PI4
    assert config.read_pi_model({"HATCAM_PI_MODEL": ZERO_W}, model_file) == ZERO_W
    assert config.read_pi_model({}, tmp_path / "absent") == "", "no device tree: unknown board"


def test_the_synthetic_camera_is_not_held_to_a_boards_encoder(tmp_path):
    env_file = write_env(tmp_path / "hatcam.env", PI4, "2592x1944", 60)
    settings = config.load(env_file, environ={"HATCAM_CAMERA": "synthetic"})
    assert (settings.width, settings.fps) == (2592, 60)


def test_a_zero_records_yuv420_with_as_many_buffers_as_fit_its_camera_memory():
    # picamera2's default (XBGR8888, 6 buffers) needs 6 x 8.4 MB at 1080p: more than a
    # Zero's 64 MB of camera memory holds beside the sensor's and encoder's buffers.
    fmt, count = config.camera_buffers(ZERO_W, 1920, 1080)
    assert fmt == "YUV420" and count == 6
    assert config.camera_buffers(ZERO_2, 640, 480) == ("YUV420", 6)
    assert config.camera_buffers(PI4, 1920, 1080) == (None, None), "others: picamera2's own"


# --- the role's pre-flight, the same rules --------------------------------------------


def run_validation(cases: dict[str, dict], *extra: str) -> dict[str, str | None]:
    """Run both roles' validate tasks for each case (an inventory host on this machine);
    the failure message per host, None where it passed."""
    work = Path(os.environ.get("TMPDIR", "/tmp"))
    base = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "hatcam_package_src": str(ROOT / "files" / "hatcam"),
        "hatcam_blob_sas_url": "https://acct.blob.core.windows.net/videos?sv=1&sp=c&sig=x",
        "hatcam_camera": "picamera2",
        "pi_camera_sensor": "imx219",
    }
    inventory = {"all": {"hosts": {name: {**base, **vars_} for name, vars_ in cases.items()}}}
    play = [
        {
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {"ansible.builtin.include_role": {"name": "pi_camera", "tasks_from": "validate"}},
                {"ansible.builtin.include_role": {"name": "hatcam", "tasks_from": "validate"}},
            ],
        }
    ]
    inv_path = work / f"hatcam-board-inventory-{os.getpid()}.yml"
    play_path = work / f"hatcam-board-validate-{os.getpid()}.yml"
    inv_path.write_text(yaml.safe_dump(inventory))
    play_path.write_text(yaml.safe_dump(play))
    try:
        result = subprocess.run(
            ["ansible-playbook", "-i", str(inv_path), str(play_path), *extra],
            cwd=ROOT,
            env={
                **os.environ,
                "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
                "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
                "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
                "ANSIBLE_CALLBACK_FORMAT_PRETTY": "false",
                "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            },
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        inv_path.unlink(missing_ok=True)
        play_path.unlink(missing_ok=True)
    out = result.stdout
    failures = {
        host: json.loads(body).get("msg")
        for host, body in re.findall(r"^fatal: \[([\w-]+)\]: FAILED! => (\{.*\})$", out, re.M)
    }
    recap = dict(
        re.findall(r"^([\w-]+)\s+: ok=\d+\s+changed=\d+\s+unreachable=0\s+failed=(\d)", out, re.M)
    )
    assert set(recap) == set(cases), out[-3000:] + result.stderr[-2000:]
    for host, failed in recap.items():
        assert (failed == "1") == (host in failures), out[-3000:]
    return {host: failures.get(host) for host in cases}


ROLE_REFUSED = {
    f"refused-{i}": (model, resolution, fps, setting, text)
    for i, (model, resolution, fps, setting, text) in enumerate(REFUSED)
}
ROLE_ALLOWED = {f"allowed-{i}": row for i, row in enumerate(ALLOWED)}
OVERLAY_OK = [
    "clock-frequency=74250000",
    "link-frequency=456000000",
    "always-on",
    "sync-sink",
    "rotation=0",
    "cam0",
]
OVERLAY_JUNK = {
    "overlay-space": ["rotation = 0"],
    "overlay-comma": ["rotation=0,cam1"],
    "overlay-upper": ["Clock-Frequency=1"],
    "overlay-shell": ["x=$(reboot)"],
}


@pytest.fixture(scope="module")
def role_results():
    cases = {}
    for host, (model, resolution, fps, *_rest) in {**ROLE_REFUSED, **ROLE_ALLOWED}.items():
        cases[host] = {"hatcam_pi_model": model, "hatcam_resolution": resolution, "hatcam_fps": fps}
    cases["overlay-real-syntax"] = {"pi_camera_overlay_params": OVERLAY_OK}
    for host, params in OVERLAY_JUNK.items():
        cases[host] = {"pi_camera_overlay_params": params}
    cases["overlay-auto"] = {"pi_camera_sensor": "auto", "pi_camera_overlay_params": ["cam0"]}
    # No device tree on this machine and no model named: no limit beyond the ranges.
    cases["unknown-board"] = {"hatcam_pi_model": "", "hatcam_resolution": "2592x1944"}
    return run_validation(cases)


@pytest.mark.parametrize("host", list(ROLE_REFUSED), ids=ids(REFUSED))
def test_the_playbook_refuses_what_the_boards_encoder_cannot_record(role_results, host):
    _model, _resolution, _fps, setting, text = ROLE_REFUSED[host]
    message = role_results[host]
    assert message is not None, f"{host} passed the pre-flight"
    assert "\n" not in message.strip()
    assert message.startswith(f"{setting.lower()}: {text}"), message


@pytest.mark.parametrize("host", list(ROLE_ALLOWED), ids=ids(ALLOWED))
def test_the_playbook_accepts_what_the_board_can_record(role_results, host):
    assert role_results[host] is None, role_results[host]


def test_the_playbook_reads_no_limit_for_a_board_it_cannot_identify(role_results):
    assert role_results["unknown-board"] is None, role_results["unknown-board"]


def test_overlay_parameters_in_dtoverlay_syntax_are_accepted(role_results):
    assert role_results["overlay-real-syntax"] is None, role_results["overlay-real-syntax"]


@pytest.mark.parametrize("host", list(OVERLAY_JUNK))
def test_overlay_junk_is_refused_with_one_line_naming_it(role_results, host):
    message = role_results[host]
    assert message is not None, f"{OVERLAY_JUNK[host]} was accepted"
    assert message.startswith(
        f"pi_camera_overlay_params: {json.dumps(OVERLAY_JUNK[host])} is not dtoverlay syntax"
    ), message


def test_overlay_parameters_need_a_named_sensor(role_results):
    assert role_results["overlay-auto"] == (
        'pi_camera_overlay_params: ["cam0"] need a named pi_camera_sensor (not auto)'
    )


def test_a_size_that_cannot_fit_the_camera_memory_is_refused_with_the_reason(monkeypatch):
    # With 64 MB every size a Zero's encoder takes fits (YUV420, no raw stream of ours); a
    # board with less camera memory shows the rule: three buffers must fit beside the rest.
    zero = next(f for f in config.BOARDS["families"] if f["family"] == "zero")
    monkeypatch.setitem(zero, "camera_memory_mb", 38)
    with pytest.raises(config.ConfigError) as refused:
        config.parse(
            {
                "HATCAM_CAMERA": "picamera2",
                "HATCAM_PI_MODEL": ZERO_W,
                "HATCAM_RESOLUTION": "1920x1080",
            }
        )
    assert refused.value.lines == [
        "HATCAM_RESOLUTION: 1920x1080 does not fit the Raspberry Pi Zero W's camera memory "
        "(38 MB: 3 buffers of 3.0 MB beside the 31 MB the sensor and encoder take)"
    ]
    assert config.camera_buffers(ZERO_W, 1280, 720) == ("YUV420", 5), (
        "720p: 5 of 1.3 MB fit in 7 MB"
    )


def test_the_playbook_reads_the_board_from_the_targets_device_tree(tmp_path):
    """The pre-flight reads the model on the target (here: a file standing in for
    /proc/device-tree/model, NUL-terminated as the kernel writes it); hatcam_pi_model wins."""
    model_file = tmp_path / "model"
    model_file.write_bytes(PI4.encode() + b"\0")
    rules = json.loads((ROOT / "files/hatcam/src/hatcam/settings.json").read_text())
    rules["boards"]["model_file"] = str(model_file)
    extra = tmp_path / "rules.json"
    extra.write_text(json.dumps({"hatcam_rules": rules}))
    results = run_validation(
        {
            "read": {"hatcam_pi_model": "", "hatcam_resolution": "2592x1944"},
            "named": {"hatcam_pi_model": PI5, "hatcam_resolution": "2304x1296", "hatcam_fps": 20},
        },
        "-e",
        f"@{extra}",
    )
    assert results["read"] == (
        "hatcam_resolution: 2592x1944 is more than the Raspberry Pi 4 Model B's hardware H.264 "
        "encoder can record (at most 1920x1080: 8192 16x16 blocks a frame, 2032 pixels wide)"
    )
    assert results["named"] is None
