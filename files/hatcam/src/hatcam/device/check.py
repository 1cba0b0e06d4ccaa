"""``hatcam check``: the settings are valid; can blob storage and Redis be reached?

A device's SAS may only create blobs, so the blob check reads the container's
properties and interprets the refusal: AuthorizationPermissionMismatch means
the signature was accepted (the credential works, it just may not read).
"""

from __future__ import annotations

import os
from pathlib import Path

from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

from ..blob import (
    connection_string_sas,
    container_client,
    describe,
    error_code,
    explain,
    sas_permissions,
    settings_allow_live,
)
from ..config import board_family, board_name
from .audio import cards as sound_cards
from .camera import picamera2_version, stall_warning
from .redislink import RedisLink, RedisReplyError, redis_location
from .spool import Spool


def check_blob(settings) -> tuple[bool, str]:
    if not settings.has_blob_credential:
        return False, "not configured (BLOB_CONNECTION_STRING or HATCAM_BLOB_SAS_URL)"
    client = container_client(settings, retries=0)
    where = describe(client)
    try:
        client.get_container_properties()
        return True, f"{where}: reachable, container exists"
    except HttpResponseError as exc:
        if error_code(exc) == "AuthorizationPermissionMismatch":
            return True, f"{where}: reachable, credential accepted (create-only SAS)"
        if error_code(exc) == "ContainerNotFound" and not settings.blob_sas_url:
            return True, f"{where}: reachable; the uploader creates the container"
        return False, f"{where}: {explain(exc)}"
    except (ServiceRequestError, ServiceResponseError) as exc:
        return False, f"{where}: {explain(exc)}"


def check_live(settings) -> tuple[bool, str]:
    """Which rights the credential has, and whether live upload will work. A SAS
    without ``a`` still uploads (whole segments): not a failure, but said."""
    if not settings.has_blob_credential:
        return False, "no blob credential"
    sas = settings.blob_sas_url or connection_string_sas(settings.blob_connection_string)
    rights = f"SAS sp={sas_permissions(sas) or '(none)'}" if sas else "account key (all rights)"
    if settings_allow_live(settings):
        return True, f"{rights}: live upload on (create + append)"
    return True, (
        f"{rights}: live upload OFF, segments go up whole when they close "
        "(the SAS has no a, append); provision again to mint sp=ac"
    )


def check_redis(settings) -> tuple[bool, str]:
    if not settings.redis_url:
        return (not settings.stills), "not configured (REDIS_URL)"
    where = redis_location(settings.redis_url)
    link = RedisLink(settings.redis_url, timeout=5)  # the daemon's own link, not another client
    try:
        link.call(("PING",))
        return True, f"{where}: reachable"
    except RedisReplyError as exc:
        if str(exc).startswith(("WRONGPASS", "NOAUTH")):
            return False, f"{where}: password refused (check REDIS_URL)"
        return False, f"{where}: refused ({exc})"
    except OSError as exc:
        return False, f"{where}: unreachable ({type(exc).__name__})"
    finally:
        link.close()


def check_camera(settings) -> tuple[bool | None, str]:
    """picamera2's version, and whether it is one that can stall (None: a warning; the
    upgrade is the operator's choice, so it does not fail the check)."""
    if settings.camera != "picamera2":
        return True, f"{settings.camera} camera (no picamera2 needed)"
    family = board_family(settings.pi_model)
    board = board_name(settings.pi_model) if family else "board not known (no limits applied)"
    version = picamera2_version()
    if not version:
        return False, f"{board}: picamera2 is not installed (python3-picamera2 from Pi OS's apt)"
    warning = None if family and family["family"] == "pi5" else stall_warning(version)
    if warning:
        return None, f"{board}: {warning}"
    return True, f"{board}: picamera2 {version}"


def check_spool(settings) -> tuple[bool, str]:
    spool = Spool(settings.spool_dir)
    if not spool.root.is_dir():
        parent = next((p for p in spool.root.parents if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK):
            return True, f"{spool.root}: not there yet; the camera creates it"
        return False, f"{spool.root} does not exist and cannot be created by this user"
    return True, f"{spool.root}: {spool.free_mb():.0f} MB free (floor {settings.min_free_mb} MB)"


def check_sound(settings, cards: list[sound_cards.Card]) -> tuple[bool, str]:
    """Is the configured microphone there? Off is fine (the list below helps choose one)."""
    device = settings.audio_device
    if device is None:
        return True, "off (HATCAM_AUDIO; the capture devices seen are listed below)"
    if device == "synthetic":
        return True, "synthetic microphone (no sound card needed)"
    problem = sound_cards.problem(cards, device)
    if problem:
        return False, f"{device}: not there: {problem}"
    card_name, number = sound_cards.split_name(device)
    card = next((c for c in cards if card_name in (str(c.index), c.id)), None)
    if card is None:  # "default" and the like: ALSA's configuration picks the card
        return True, f"{device}: ALSA's configuration picks the card (a capture device exists)"
    number = card.capture[0] if number is None else number
    return True, f"{device}: {card.describe()}, capture device {number}"


def microphones(cards: list[sound_cards.Card]) -> list[str]:
    """One line per capture device: where it is, and what to put in HATCAM_AUDIO_DEVICE."""
    lines = [
        f"{card.describe()}: capture device {number}: HATCAM_AUDIO_DEVICE={card.pcm_name(number)}"
        for card in cards
        for number in card.capture
    ]
    return lines or [sound_cards.problem(cards, "") or sound_cards.NO_CARD]


def run_checks(settings, asound: Path = sound_cards.PROC_DIR) -> int:
    print(f"settings:      valid (device {settings.device}, camera {settings.camera})")
    results = [
        ("camera", check_camera(settings)),
        ("spool", check_spool(settings)),
        ("blob storage", check_blob(settings)),
        ("live upload", check_live(settings)),
        ("redis", check_redis(settings)),
    ]
    cards = sound_cards.read_cards(asound)
    results.append(("sound", check_sound(settings, cards)))
    for label, (ok, message) in results:
        mark = "warn" if ok is None else "ok  " if ok else "FAIL"
        print(f"{label + ':':<14} {mark} {message}")
    for line in microphones(cards):
        print(f"{'microphones:':<14} {line}")
    return 0 if all(ok is not False for _, (ok, _) in results) else 1
