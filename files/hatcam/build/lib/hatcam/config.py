"""Settings: the one place configuration enters hatcam.

Values come from the process environment, then from one dotenv file
(``--env-file``, else ``/etc/hatcam/hatcam.env`` if present, else ``./.env``).
The dotenv file is read into a dict, never into ``os.environ``, so secrets are
not inherited by child processes. Every problem is reported as one line naming
the setting; secret values are never echoed.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from dotenv import dotenv_values

DEFAULT_ENV_FILES = (Path("/etc/hatcam/hatcam.env"), Path(".env"))

DEVICE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
CONTAINER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
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


@dataclass(frozen=True)
class Settings:
    device: str
    spool_dir: Path
    camera: str
    segment_seconds: float
    width: int
    height: int
    fps: int
    bitrate: int
    blob_container: str
    min_free_mb: int
    disk_policy: str
    stills: bool
    image_capture_frequency: float
    image_expiry: int
    stills_buffer: int
    camera_autofocus: bool
    synthetic_pace: str
    retry_max_seconds: float
    # Secrets: kept out of repr() so a traceback or debug print cannot leak them.
    blob_connection_string: str | None = field(default=None, repr=False)
    blob_sas_url: str | None = field(default=None, repr=False)
    redis_url: str | None = field(default=None, repr=False)

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

    def require_redis(self) -> None:
        if self.stills and not self.redis_url:
            raise ConfigError(["REDIS_URL: must be set when HATCAM_STILLS is on"])


def sas_permissions(url: str) -> str:
    """The ``sp=`` of a SAS URL: what its holder may do (c create, w write, r read, ...)."""
    return parse_qs(urlsplit(url).query).get("sp", [""])[0]


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

    def number(self, name, default, kind, low, high, unit=""):
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

    def choice(self, name, default, choices):
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
    parts = dict(item.split("=", 1) for item in text.split(";") if "=" in item)
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
    if url.scheme not in ("redis", "rediss", "unix") or not (url.hostname or url.path):
        p.fail("REDIS_URL", "must look like redis://[:password@]host:port/db or rediss://...")


def _resolution(p: _Parser) -> tuple[int, int]:
    text = p.raw("HATCAM_RESOLUTION", "1280x720")
    match = re.fullmatch(r"(\d{2,4})x(\d{2,4})", text)
    if not match:
        p.fail("HATCAM_RESOLUTION", f"must be WIDTHxHEIGHT such as 1280x720, got {text!r}")
        return 1280, 720
    width, height = int(match[1]), int(match[2])
    if width % 2 or height % 2 or not (64 <= width <= 4096 and 64 <= height <= 2592):
        p.fail(
            "HATCAM_RESOLUTION",
            f"must have even sides from 64x64 to 4096x2592, got {text!r}",
        )
        return 1280, 720
    return width, height


def parse(values: dict[str, str]) -> Settings:
    """Validate every setting; raise ConfigError listing all problems at once."""
    p = _Parser(values)
    device = p.raw("HATCAM_DEVICE") or default_device()
    if not DEVICE_RE.match(device):
        p.fail(
            "HATCAM_DEVICE",
            f"must be lowercase letters, digits and inner hyphens (like a hostname), "
            f"got {device!r}",
        )
    container = p.raw("HATCAM_BLOB_CONTAINER", "videos")
    if not CONTAINER_RE.match(container):
        p.fail(
            "HATCAM_BLOB_CONTAINER",
            f"must be an Azure container name (3-63 lowercase letters, digits, hyphens), "
            f"got {container!r}",
        )
    width, height = _resolution(p)
    connection_string = p.raw("BLOB_CONNECTION_STRING")
    sas_url = p.raw("HATCAM_BLOB_SAS_URL")
    _check_connection_string(p, connection_string)
    _check_sas_url(p, sas_url)
    if connection_string and sas_url:
        p.fail("HATCAM_BLOB_SAS_URL", "set either it or BLOB_CONNECTION_STRING, not both")
    redis_url = p.raw("REDIS_URL")
    _check_redis_url(p, redis_url)
    settings = Settings(
        device=device,
        spool_dir=Path(p.raw("HATCAM_SPOOL_DIR", "/var/lib/hatcam/spool")),
        camera=p.choice("HATCAM_CAMERA", "picamera2", ("picamera2", "synthetic")),
        segment_seconds=p.number("HATCAM_SEGMENT_SECONDS", 10.0, float, 1, 600, " seconds"),
        width=width,
        height=height,
        fps=p.number("HATCAM_FPS", 30, int, 1, 120, " frames per second"),
        bitrate=p.number("HATCAM_BITRATE", 4_000_000, int, 100_000, 50_000_000, " bit/s"),
        blob_container=container,
        min_free_mb=p.number("HATCAM_MIN_FREE_MB", 200, int, 0, 10_000_000, " MB"),
        disk_policy=p.choice("HATCAM_DISK_POLICY", "pause", ("pause", "drop-oldest")),
        stills=p.flag("HATCAM_STILLS", False),
        # Keys are image:<unix seconds>, so more than one still a second would collide.
        image_capture_frequency=p.number(
            "IMAGE_CAPTURE_FREQUENCY", 60.0, float, 1, 86_400, " seconds"
        ),
        image_expiry=p.number("IMAGE_EXPIRY", 86_400, int, 1, 31_536_000, " seconds"),
        stills_buffer=p.number("HATCAM_STILLS_BUFFER", 20, int, 1, 1000, " stills"),
        camera_autofocus=p.flag("CAMERA_AUTOFOCUS", False),
        synthetic_pace=p.choice("HATCAM_SYNTHETIC_PACE", "realtime", ("realtime", "fast")),
        retry_max_seconds=p.number("HATCAM_RETRY_MAX_SECONDS", 60.0, float, 0.1, 3600, " s"),
        blob_connection_string=connection_string,
        blob_sas_url=sas_url,
        redis_url=redis_url,
    )
    if p.errors:
        raise ConfigError(p.errors)
    return settings


def load(env_file: str | Path | None = None, environ=None) -> Settings:
    return parse(read_environment(env_file, environ))
