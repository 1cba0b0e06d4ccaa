"""Settings: the one place configuration enters hatcam.

Values come from the process environment, then from one dotenv file
(``--env-file``, else ``/etc/hatcam/hatcam.env`` if present, else ``./.env``).
The dotenv file is read into a dict, never into ``os.environ``, so secrets are
not inherited by child processes. Every problem is reported as one line naming
the setting; secret values are never echoed.

The ranges and patterns live in ``settings.json`` beside this file, which the
playbook's pre-flight reads too. The laptop loads only the blob settings
(``load_blob``): a device's settings mean nothing there.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from dotenv import dotenv_values

from .blob import connection_string_parts, sas_permissions

DEFAULT_ENV_FILES = (Path("/etc/hatcam/hatcam.env"), Path(".env"))
RULES = json.loads((Path(__file__).with_name("settings.json")).read_text())
DEVICE_SAS_PERMISSIONS = RULES["device_sas_permissions"]
DEVICE_RE = re.compile(RULES["patterns"]["HATCAM_DEVICE"]["regex"])
CONTAINER_RE = re.compile(RULES["patterns"]["HATCAM_BLOB_CONTAINER"]["regex"])
RESOLUTION_RE = re.compile(RULES["resolution"]["regex"])
AUDIO = RULES["audio"]
AUDIO_DEVICE_RE = re.compile(AUDIO["device"]["regex"])
CARD_INDEX_RE = re.compile(AUDIO["device"]["card_index"])
BOARDS = RULES["boards"]
MODEL_FILE = Path(BOARDS["model_file"])
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}
# The original hat cam's names keep working beside the HATCAM_* ones.
SEED = {
    "BLOB_CONNECTION_STRING",
    "REDIS_URL",
    "IMAGE_CAPTURE_FREQUENCY",
    "IMAGE_EXPIRY",
    "CAMERA_AUTOFOCUS",
}


class ConfigError(Exception):
    """One or more settings are wrong; ``lines`` holds one message per problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def valid_device(name: str) -> bool:
    return bool(DEVICE_RE.match(name))


@dataclass(frozen=True, kw_only=True)
class BlobSettings:
    """Where the footage is: all that ``hatcam fetch`` needs."""

    blob_container: str
    # Secrets: kept out of repr() so a traceback or debug print cannot leak them.
    blob_connection_string: str | None = field(default=None, repr=False)
    blob_sas_url: str | None = field(default=None, repr=False)

    @property
    def has_blob_credential(self) -> bool:
        return bool(self.blob_connection_string or self.blob_sas_url)

    def require_blob(self, permissions: str = "") -> None:
        """A blob credential must be set; a SAS must grant ``permissions`` (e.g. "c")."""
        if not self.has_blob_credential:
            raise ConfigError(
                ["BLOB_CONNECTION_STRING / HATCAM_BLOB_SAS_URL: one of them must be set"]
            )
        if self.blob_sas_url:
            granted = sas_permissions(self.blob_sas_url)
            missing = [p for p in permissions if p not in granted]
            if missing:
                raise ConfigError(
                    [
                        f"HATCAM_BLOB_SAS_URL: the SAS grants sp={granted or '(none)'} but this "
                        f"command needs {permissions} (missing {''.join(missing)})"
                    ]
                )


@dataclass(frozen=True, kw_only=True)
class Settings(BlobSettings):
    """Everything a device's daemons read."""

    device: str
    spool_dir: Path
    camera: str
    segment_seconds: float
    width: int
    height: int
    fps: int
    bitrate: int
    min_free_mb: int
    disk_policy: str
    stills: bool
    image_capture_frequency: float
    image_expiry: int
    stills_buffer: int
    camera_autofocus: bool
    synthetic_pace: str
    retry_max_seconds: float
    # The board's model from the device tree ("" when unknown): its encoder's limits.
    pi_model: str = ""
    redis_url: str | None = field(default=None, repr=False)
    # The device's private signing key (hatcam.proof); None: footage is not signed.
    device_key: Path | None = None
    # Sound: the ALSA PCM the camera daemon captures (or "synthetic"); None: audio is off.
    audio_device: str | None = None
    audio_rate: int = int(RULES["choices"]["HATCAM_AUDIO_RATE"]["default"])
    audio_bitrate: int = int(RULES["numbers"]["HATCAM_AUDIO_BITRATE"]["default"])

    @property
    def camera_buffers(self) -> tuple[str | None, int | None]:
        """(main stream format, buffer count) for picamera2; None: picamera2's own defaults."""
        return camera_buffers(self.pi_model, self.width, self.height)

    def require_redis(self) -> None:
        if self.stills and not self.redis_url:
            raise ConfigError(["REDIS_URL: must be set when HATCAM_STILLS is on"])

    def load_device_key(self):
        """The device's signing key (a hatcam.proof.DeviceKey), or None when
        HATCAM_DEVICE_KEY is not set. Never says anything of the file's content."""
        if self.device_key is None:
            return None
        from . import proof

        name, path = "HATCAM_DEVICE_KEY", self.device_key
        try:
            return proof.DeviceKey.load(path)
        except FileNotFoundError:
            problem = f"{path} does not exist (make it with `hatcam keygen`)"
        except IsADirectoryError:
            problem = f"{path} is a directory, not a key file"
        except PermissionError:
            problem = f"{path} is not readable by this user"
        except OSError as exc:
            problem = f"{path} cannot be read ({exc.strerror})"
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            problem = f"{path} does not hold a device key (base64 of a 32-byte Ed25519 seed)"
        raise ConfigError([f"{name}: {problem}"])


def read_environment(env_file: str | Path | None = None, environ=None) -> dict[str, str]:
    """Merge the dotenv file under the process environment (the environment wins)."""
    environ = os.environ if environ is None else environ
    if env_file is not None:
        path = Path(env_file)
        if not path.exists() or path.is_dir():
            raise ConfigError([f"--env-file: {path} does not exist or is not a file"])
    else:
        path = next((p for p in DEFAULT_ENV_FILES if p.is_file()), None)
    values: dict[str, str] = {}
    if path is not None:
        try:
            values = {k: v for k, v in dotenv_values(path).items() if v is not None}
        except PermissionError:
            raise ConfigError([f"--env-file: {path} is not readable by this user"]) from None
    values.update({k: v for k, v in environ.items() if k.startswith("HATCAM_") or k in SEED})
    return values


class _Parser:
    """Collects one error line per bad setting instead of stopping at the first."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.errors: list[str] = []

    def raw(self, name: str, default: str | None = None) -> str | None:
        value = self.values.get(name)
        if value is None or value.strip() == "":
            return default
        return value.strip()

    def fail(self, name: str, problem: str) -> None:
        self.errors.append(f"{name}: {problem}")

    def number(self, name):
        """A number within its range from settings.json."""
        rule = RULES["numbers"][name]
        default, low, high = rule["default"], rule["min"], rule["max"]
        kind, unit = (int if rule["type"] == "int" else float), f" {rule['unit']}"
        default = kind(default)
        text = self.raw(name)
        if text is None:
            return default
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            self.fail(name, f"must be {what}{unit}, got {text!r}")
            return default
        if not low <= value <= high:
            self.fail(name, f"must be from {low} to {high}{unit}, got {text!r}")
            return default
        return value

    def choice(self, name):
        """One of the values in settings.json, as text (numbers too: callers convert)."""
        rule = RULES["choices"][name]
        default, choices = str(rule["default"]), [str(v) for v in rule["values"]]
        text = self.raw(name, default)
        if text not in choices:
            self.fail(name, f"must be one of {', '.join(choices)}, got {text!r}")
            return default
        return text

    def flag(self, name, default: bool) -> bool:
        text = self.raw(name)
        if text is None:
            return default
        if text.lower() in TRUE:
            return True
        if text.lower() in FALSE:
            return False
        self.fail(name, f"must be on or off (true/false, 1/0, yes/no), got {text!r}")
        return default


def default_device() -> str:
    """The hostname, made a valid device name (a laptop's may hold '_' or spaces)."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return name[:63].strip("-") or "hatcam"


def _check_connection_string(p: _Parser, text: str | None) -> None:
    if text is None:
        return
    parts = connection_string_parts(text)
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        return
    if "AccountName" not in parts or not (
        "AccountKey" in parts or "SharedAccessSignature" in parts
    ):
        # Never echo the value: it holds the account key.
        p.fail(
            "BLOB_CONNECTION_STRING",
            "is not an Azure Storage connection string "
            "(needs AccountName= and AccountKey= or SharedAccessSignature=)",
        )


def _check_sas_url(p: _Parser, text: str | None) -> None:
    if text is None:
        return
    url = urlsplit(text)
    container = url.path.strip("/")
    if url.scheme not in ("https", "http") or not url.netloc:
        p.fail("HATCAM_BLOB_SAS_URL", "must be an https:// container URL with a SAS token")
    elif not container or container.count("/") > 1:
        # https://account.blob.core.windows.net/container, or path-style
        # http://host:port/account/container (emulators, private endpoints).
        p.fail("HATCAM_BLOB_SAS_URL", "must name exactly one container in its path")
    elif "sig" not in parse_qs(url.query):
        p.fail("HATCAM_BLOB_SAS_URL", "has no SAS token (sig=...) in its query string")


def _check_redis_url(p: _Parser, text: str | None) -> None:
    if text is None:
        return
    url = urlsplit(text)
    if url.scheme not in RULES["redis_schemes"] or not (url.hostname or url.path):
        p.fail("REDIS_URL", "must look like redis://[:password@]host:port/db or rediss://...")
        return
    options = parse_qs(url.query)
    db = options.get("db", [""])[0] or (url.path.strip("/") if url.scheme != "unix" else "")
    if set(options) - {"db"}:
        unknown = ", ".join(sorted(set(options) - {"db"}))
        p.fail("REDIS_URL", f"only the option db= is supported, got {unknown}")
    elif db and not db.isdigit():
        p.fail("REDIS_URL", f"the database must be a whole number, got {db!r}")


def _resolution(p: _Parser) -> tuple[int, int]:
    rule = RULES["resolution"]
    default = tuple(int(side) for side in rule["default"].split("x"))
    text = p.raw("HATCAM_RESOLUTION", rule["default"])
    match = RESOLUTION_RE.match(text)
    if not match:
        p.fail("HATCAM_RESOLUTION", f"must be WIDTHxHEIGHT such as 1280x720, got {text!r}")
        return default
    width, height = int(match[1]), int(match[2])
    (min_w, max_w), (min_h, max_h) = rule["width"], rule["height"]
    if width % 2 or height % 2 or not (min_w <= width <= max_w and min_h <= height <= max_h):
        p.fail(
            "HATCAM_RESOLUTION",
            f"must have even sides from {min_w}x{min_h} to {max_w}x{max_h}, got {text!r}",
        )
        return default
    return width, height


def read_pi_model(values: dict[str, str], model_file: Path = MODEL_FILE) -> str:
    """HATCAM_PI_MODEL if set, else the device tree's model ("" off a Pi)."""
    given = (values.get("HATCAM_PI_MODEL") or "").strip()
    if given:
        return given
    try:
        return model_file.read_bytes().rstrip(b"\0").decode(errors="replace").strip()
    except OSError:
        return ""


def board_family(model: str) -> dict | None:
    """The encoder limits for this model; None for a board hatcam does not know."""
    return next((f for f in BOARDS["families"] if model and re.match(f["match"], model)), None)


def board_name(model: str) -> str:
    """ "Raspberry Pi 4 Model B Rev 1.4" -> "Raspberry Pi 4 Model B": the revision is noise."""
    return re.sub(r"\s+Rev\s+\S+$", "", model)


def _blocks(width: int, height: int) -> int:
    """16x16 macroblocks a frame: the unit of H.264's level limits."""
    return ((width + 15) // 16) * ((height + 15) // 16)


def _buffer_mb(width: int, height: int) -> float:
    """One YUV420 main-stream buffer: rows padded to 64 bytes, height to 16 lines."""
    return ((width + 63) // 64 * 64) * ((height + 15) // 16 * 16) * 1.5 / 2**20


def camera_buffers(model: str, width: int, height: int) -> tuple[str | None, int | None]:
    """On a board with little camera memory, YUV420 and as many buffers as fit."""
    family = board_family(model)
    if not family or "camera_memory_mb" not in family:
        return None, None
    plan = BOARDS["camera_memory"]
    room = family["camera_memory_mb"] - plan["reserved_mb"]
    most, least = plan["buffers"]
    count = max(least, min(most, int(room // _buffer_mb(width, height))))
    return plan["format"], count


def _check_board(p: _Parser, model: str, width: int, height: int, fps: int) -> None:
    """What this board's encoder and camera memory can record (settings.json "boards")."""
    family = board_family(model)
    if family is None:
        return
    name, encoder = board_name(model), family["encoder"]
    size = f"{width}x{height}"
    if width > family["max_width"] or _blocks(width, height) > family["max_blocks"]:
        p.fail(
            "HATCAM_RESOLUTION",
            f"{size} is more than the {name}'s {encoder} can record (at most "
            f"{family['largest']}: {family['max_blocks']} 16x16 blocks a frame, "
            f"{family['max_width']} pixels wide)",
        )
        return
    most_fps = family["max_blocks_per_second"] // _blocks(width, height)
    if fps > most_fps:
        p.fail(
            "HATCAM_FPS",
            f"{fps} at {size} is more than the {name}'s {encoder} can record (at most "
            f"{most_fps} fps at that size: 1080p30's {family['max_blocks_per_second']} "
            f"16x16 blocks a second)",
        )
    if "camera_memory_mb" in family:
        plan = BOARDS["camera_memory"]
        least, buffer_mb = plan["buffers"][1], _buffer_mb(width, height)
        if least * buffer_mb > family["camera_memory_mb"] - plan["reserved_mb"]:
            p.fail(
                "HATCAM_RESOLUTION",
                f"{size} does not fit the {name}'s camera memory ({family['camera_memory_mb']} "
                f"MB: {least} buffers of {buffer_mb:.1f} MB beside the {plan['reserved_mb']} MB "
                f"the sensor and encoder take)",
            )


def _device_key(p: _Parser) -> Path | None:
    """The key's path (settings.json "paths"); read by the camera alone (load_device_key)."""
    text = p.raw("HATCAM_DEVICE_KEY")
    if text is None:
        return None
    if RULES["paths"]["HATCAM_DEVICE_KEY"]["absolute"] and not text.startswith("/"):
        p.fail("HATCAM_DEVICE_KEY", f"must be an absolute path, got {text!r}")
        return None
    return Path(text)


def audio_device_name(text: str) -> str | None:
    """The ALSA PCM name capture opens for a HATCAM_AUDIO_DEVICE value; None: not one.

    A bare card index N becomes plughw:N,0 (settings.json "audio"): plughw converts the
    rate and sample format, and cheap USB microphones offer only one or two of each, so
    hw:N,0 would refuse 48000 Hz on a microphone that only does 44100.
    """
    rule = AUDIO["device"]
    if CARD_INDEX_RE.match(text):
        return rule["card_index_pcm"].format(card=int(text))
    if text == rule["synthetic"] or AUDIO_DEVICE_RE.match(text):
        return text
    return None


def _audio(p: _Parser) -> dict:
    """The sound settings (off by default); keyword arguments for Settings."""
    rate = int(p.choice("HATCAM_AUDIO_RATE"))
    bitrate = p.number("HATCAM_AUDIO_BITRATE")
    on = p.flag(AUDIO["flag"]["name"], AUDIO["flag"]["default"])
    name, text = AUDIO["device"]["name"], p.raw(AUDIO["device"]["name"])
    device = None
    if on and text is None:
        p.fail(
            name,
            f"must name the microphone when HATCAM_AUDIO is on (an ALSA name such as "
            f"{AUDIO['device']['example']}, a card index such as 1, or synthetic; "
            f"`hatcam check` lists them)",
        )
    elif on:
        device = audio_device_name(text)
        if device is None:
            p.fail(
                name,
                f"must be an ALSA capture device name such as {AUDIO['device']['example']} "
                f"or hw:1,0, a card index such as 1, or synthetic, got {text!r}",
            )
    return {"audio_device": device, "audio_rate": rate, "audio_bitrate": bitrate}


def _blob(p: _Parser) -> dict:
    """The blob settings, checked; keyword arguments for BlobSettings."""
    container = p.raw(
        "HATCAM_BLOB_CONTAINER", RULES["patterns"]["HATCAM_BLOB_CONTAINER"]["default"]
    )
    if not CONTAINER_RE.match(container):
        p.fail(
            "HATCAM_BLOB_CONTAINER",
            f"must be an Azure container name (3-63 lowercase letters, digits, hyphens), "
            f"got {container!r}",
        )
    connection_string = p.raw("BLOB_CONNECTION_STRING")
    sas_url = p.raw("HATCAM_BLOB_SAS_URL")
    _check_connection_string(p, connection_string)
    _check_sas_url(p, sas_url)
    if connection_string and sas_url:
        p.fail("HATCAM_BLOB_SAS_URL", "set either it or BLOB_CONNECTION_STRING, not both")
    return {
        "blob_container": container,
        "blob_connection_string": connection_string,
        "blob_sas_url": sas_url,
    }


def parse_blob(values: dict[str, str]) -> BlobSettings:
    """Only the blob settings (the laptop's), every problem at once."""
    p = _Parser(values)
    settings = BlobSettings(**_blob(p))
    if p.errors:
        raise ConfigError(p.errors)
    return settings


def parse(values: dict[str, str]) -> Settings:
    """Validate every setting; raise ConfigError listing all problems at once."""
    p = _Parser(values)
    device = p.raw("HATCAM_DEVICE") or default_device()
    if not valid_device(device):
        p.fail(
            "HATCAM_DEVICE",
            f"must be lowercase letters, digits and inner hyphens (like a hostname), "
            f"got {device!r}",
        )
    blob = _blob(p)
    width, height = _resolution(p)
    redis_url = p.raw("REDIS_URL")
    _check_redis_url(p, redis_url)
    camera = p.choice("HATCAM_CAMERA")
    fps = p.number("HATCAM_FPS")
    pi_model = read_pi_model(values) if camera == "picamera2" else ""
    if not any(line.startswith(("HATCAM_RESOLUTION", "HATCAM_FPS")) for line in p.errors):
        _check_board(p, pi_model, width, height, fps)
    settings = Settings(
        device=device,
        spool_dir=Path(p.raw("HATCAM_SPOOL_DIR", "/var/lib/hatcam/spool")),
        camera=camera,
        segment_seconds=p.number("HATCAM_SEGMENT_SECONDS"),
        width=width,
        height=height,
        fps=fps,
        bitrate=p.number("HATCAM_BITRATE"),
        min_free_mb=p.number("HATCAM_MIN_FREE_MB"),
        disk_policy=p.choice("HATCAM_DISK_POLICY"),
        stills=p.flag("HATCAM_STILLS", False),
        # Keys are image:<unix seconds>, so more than one still a second would collide.
        image_capture_frequency=p.number("IMAGE_CAPTURE_FREQUENCY"),
        image_expiry=p.number("IMAGE_EXPIRY"),
        stills_buffer=p.number("HATCAM_STILLS_BUFFER"),
        camera_autofocus=p.flag("CAMERA_AUTOFOCUS", False),
        synthetic_pace=p.choice("HATCAM_SYNTHETIC_PACE"),
        retry_max_seconds=p.number("HATCAM_RETRY_MAX_SECONDS"),
        pi_model=pi_model,
        redis_url=redis_url,
        device_key=_device_key(p),
        **_audio(p),
        **blob,
    )
    if p.errors:
        raise ConfigError(p.errors)
    return settings


def load(env_file: str | Path | None = None, environ=None) -> Settings:
    return parse(read_environment(env_file, environ))


def load_blob(env_file: str | Path | None = None, environ=None) -> BlobSettings:
    return parse_blob(read_environment(env_file, environ))
