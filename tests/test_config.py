"""Bad settings: one clear line naming the setting, exit status 2, nothing touched."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hatcam import config

from tests.support.footage import hatcam

SECRET_KEY = "c2VjcmV0LWtleS10aGF0LW11c3QtbmV2ZXItYmUtcHJpbnRlZA=="
GOOD_CS = (
    f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={SECRET_KEY};"
    "EndpointSuffix=core.windows.net"
)

BAD = [
    ({"HATCAM_FPS": "fast"}, "HATCAM_FPS: must be a whole number"),
    ({"HATCAM_FPS": "0"}, "HATCAM_FPS: must be from 1 to 120"),
    ({"HATCAM_SEGMENT_SECONDS": "-5"}, "HATCAM_SEGMENT_SECONDS: must be from 1 to 600"),
    ({"HATCAM_RESOLUTION": "1280*720"}, "HATCAM_RESOLUTION: must be WIDTHxHEIGHT"),
    ({"HATCAM_RESOLUTION": "1281x720"}, "HATCAM_RESOLUTION: must have even sides"),
    ({"HATCAM_CAMERA": "webcam"}, "HATCAM_CAMERA: must be one of picamera2, synthetic"),
    ({"HATCAM_DISK_POLICY": "panic"}, "HATCAM_DISK_POLICY: must be one of pause, drop-oldest"),
    ({"HATCAM_STILLS": "maybe"}, "HATCAM_STILLS: must be on or off"),
    ({"HATCAM_DEVICE": "Hat Cam!"}, "HATCAM_DEVICE: must be lowercase letters"),
    ({"HATCAM_BLOB_CONTAINER": "My_Videos"}, "HATCAM_BLOB_CONTAINER: must be an Azure container"),
    ({"HATCAM_MIN_FREE_MB": "lots"}, "HATCAM_MIN_FREE_MB: must be a whole number"),
    ({"HATCAM_BITRATE": "10"}, "HATCAM_BITRATE: must be from 100000"),
    ({"IMAGE_CAPTURE_FREQUENCY": "0.5"}, "IMAGE_CAPTURE_FREQUENCY: must be from 1 to 86400"),
    ({"IMAGE_EXPIRY": "soon"}, "IMAGE_EXPIRY: must be a whole number"),
    ({"CAMERA_AUTOFOCUS": "sometimes"}, "CAMERA_AUTOFOCUS: must be on or off"),
    ({"HATCAM_AUDIO": "loud"}, "HATCAM_AUDIO: must be on or off"),
    (
        {"HATCAM_AUDIO": "on"},
        "HATCAM_AUDIO_DEVICE: must name the microphone when HATCAM_AUDIO is on",
    ),
    (
        {"HATCAM_AUDIO": "on", "HATCAM_AUDIO_DEVICE": "USB PnP Sound Device"},
        "HATCAM_AUDIO_DEVICE: must be an ALSA capture device name such as "
        "plughw:CARD=Device,DEV=0 or hw:1,0, a card index such as 1, or synthetic, "
        "got 'USB PnP Sound Device'",
    ),
    (
        {"HATCAM_AUDIO": "on", "HATCAM_AUDIO_DEVICE": "hw:CARD="},
        "HATCAM_AUDIO_DEVICE: must be an ALSA capture device name",
    ),
    (
        {"HATCAM_AUDIO": "on", "HATCAM_AUDIO_DEVICE": "synthetic", "HATCAM_AUDIO_RATE": "22050"},
        "HATCAM_AUDIO_RATE: must be one of 44100, 48000, got '22050'",
    ),
    (
        {"HATCAM_AUDIO": "on", "HATCAM_AUDIO_DEVICE": "1", "HATCAM_AUDIO_BITRATE": "8000"},
        "HATCAM_AUDIO_BITRATE: must be from 32000 to 192000 bit/s, got '8000'",
    ),
    ({"REDIS_URL": "http://x:6379"}, "REDIS_URL: must look like redis://"),
    ({"REDIS_URL": "redis://x:6379/0?health_check_interval=5"}, "REDIS_URL: only the option db="),
    ({"REDIS_URL": "redis://x:6379/images"}, "REDIS_URL: the database must be a whole number"),
    (
        {"HATCAM_BLOB_SAS_URL": "https://a.blob.core.windows.net/videos?sv=1"},
        "HATCAM_BLOB_SAS_URL: has no SAS token",
    ),
    (
        {"HATCAM_BLOB_SAS_URL": "https://a.blob.core.windows.net/?sig=x"},
        "HATCAM_BLOB_SAS_URL: must name exactly one container",
    ),
    (
        {"BLOB_CONNECTION_STRING": f"AccountKey={SECRET_KEY}"},
        "BLOB_CONNECTION_STRING: is not an Azure Storage connection string",
    ),
    (
        {
            "BLOB_CONNECTION_STRING": GOOD_CS,
            "HATCAM_BLOB_SAS_URL": "https://a.blob.core.windows.net/v?sig=s3cr3t",
        },
        "HATCAM_BLOB_SAS_URL: set either it or BLOB_CONNECTION_STRING, not both",
    ),
]


@pytest.mark.parametrize(("settings", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_setting_gives_one_clear_line_and_status_2(tmp_path, settings, message):
    spool = tmp_path / "spool"
    result = hatcam(
        "camera", settings={"HATCAM_CAMERA": "synthetic", "HATCAM_SPOOL_DIR": spool, **settings}
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert SECRET_KEY not in result.stderr and "s3cr3t" not in result.stderr
    assert not spool.exists(), "a bad setting must change nothing"


def test_every_problem_is_reported_at_once(tmp_path):
    result = hatcam(
        "camera",
        settings={"HATCAM_FPS": "x", "HATCAM_CAMERA": "nope", "HATCAM_SPOOL_DIR": tmp_path / "s"},
    )
    assert result.returncode == 2
    names = [line.split(":")[1].strip() for line in result.stderr.splitlines()]
    assert names == ["HATCAM_CAMERA", "HATCAM_FPS"]


def test_uploader_needs_a_credential_and_a_sas_that_may_create(tmp_path):
    base = {"HATCAM_SPOOL_DIR": tmp_path / "s"}
    missing = hatcam("upload", settings=base)
    assert missing.returncode == 2
    assert "BLOB_CONNECTION_STRING / HATCAM_BLOB_SAS_URL: one of them must be set" in (
        missing.stderr
    )
    read_only = hatcam(
        "upload",
        settings={
            **base,
            "HATCAM_BLOB_SAS_URL": "https://a.blob.core.windows.net/v?sp=rl&sig=s3cr3t",
        },
    )
    assert read_only.returncode == 2
    assert "needs c (missing c)" in read_only.stderr
    assert "s3cr3t" not in read_only.stderr


def test_stills_need_redis(tmp_path):
    result = hatcam(
        "camera",
        settings={
            "HATCAM_STILLS": "on",
            "HATCAM_CAMERA": "synthetic",
            "HATCAM_SPOOL_DIR": tmp_path / "s",
        },
    )
    assert result.returncode == 2
    assert "REDIS_URL: must be set when HATCAM_STILLS is on" in result.stderr


def test_seed_names_and_defaults(tmp_path):
    env_file = tmp_path / "hatcam.env"
    env_file.write_text(
        f'BLOB_CONNECTION_STRING="{GOOD_CS}"\nREDIS_URL=redis://:pw@redis.local:6380/0\n'
        "IMAGE_CAPTURE_FREQUENCY=30\nIMAGE_EXPIRY=3600\nCAMERA_AUTOFOCUS=true\n"
        "HATCAM_FPS=25\n"
    )
    settings = config.load(env_file, environ={"HATCAM_FPS": "15"})
    assert settings.blob_connection_string == GOOD_CS
    assert settings.redis_url == "redis://:pw@redis.local:6380/0"
    assert settings.image_capture_frequency == 30 and settings.image_expiry == 3600
    assert settings.camera_autofocus is True
    assert settings.fps == 15, "the process environment overrides the file"
    assert (settings.width, settings.height, settings.segment_seconds) == (1280, 720, 10)
    assert settings.blob_container == "videos" and settings.disk_policy == "pause"
    assert SECRET_KEY not in repr(settings)


def test_sound_is_off_unless_asked_for_even_with_a_device_named():
    settings = config.parse({"HATCAM_AUDIO_DEVICE": "hw:CARD=Mic,DEV=0"})
    assert settings.audio_device is None
    assert (settings.audio_rate, settings.audio_bitrate) == (48000, 64000)


@pytest.mark.parametrize(
    ("given", "opened"),
    [
        ("hw:CARD=Device,DEV=0", "hw:CARD=Device,DEV=0"),
        ("plughw:1,0", "plughw:1,0"),
        ("default:CARD=Mic", "default:CARD=Mic"),
        ("default", "default"),
        ("synthetic", "synthetic"),
        # A bare card index opens through plughw, which converts rate and format.
        ("1", "plughw:1,0"),
        ("  2 ", "plughw:2,0"),
    ],
)
def test_the_microphone_is_named_as_alsa_opens_it(given, opened):
    settings = config.parse(
        {"HATCAM_AUDIO": "on", "HATCAM_AUDIO_DEVICE": given, "HATCAM_AUDIO_RATE": "44100"}
    )
    assert settings.audio_device == opened
    assert settings.audio_rate == 44100


def test_missing_env_file_is_named(tmp_path):
    missing = tmp_path / "nope.env"
    proc = subprocess.run(
        [sys.executable, "-m", "hatcam.cli", "--env-file", str(missing), "status"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hatcam: --env-file: {missing} does not exist or is not a file"


def test_default_device_is_the_hostname_made_valid(monkeypatch):
    monkeypatch.setattr(config.socket, "gethostname", lambda: "Alice_Laptop.local")
    assert config.parse({}).device == "alice-laptop"
