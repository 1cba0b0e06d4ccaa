"""Blob access: the container client, what a credential allows, and what went wrong.

The client comes from a connection string or a container SAS URL. The SDK's own
retries stay short (our outer loops never give up), and per-request timeouts are
short so a dead hotspot is noticed quickly. The SDK is imported only where it is
used: settings validation needs what a SAS allows, not the SDK (the camera daemon
runs on a Pi Zero's 512 MB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

# The storage SDK's default retry waits 15 s, then 18 s... before giving up: far
# too long under an outer loop that already retries forever.
SDK_OPTIONS = {"connection_timeout": 10, "read_timeout": 60}
RIGHTS = {
    "c": "create",
    "a": "add (append)",
    "w": "write",
    "r": "read",
    "l": "list",
    "d": "delete",
}
LIVE_PERMISSIONS = "ca"  # what live upload needs: create append blobs, append to them


def container_client(settings, retries: int = 2, **overrides) -> ContainerClient:
    from azure.storage.blob import ContainerClient, ExponentialRetry

    options = {
        "retry_policy": ExponentialRetry(
            initial_backoff=0.5, increment_base=2, retry_total=retries, random_jitter_range=1
        ),
        **SDK_OPTIONS,
        **overrides,
    }
    if settings.blob_sas_url:
        return ContainerClient.from_container_url(settings.blob_sas_url, **options)
    return ContainerClient.from_connection_string(
        settings.blob_connection_string, settings.blob_container, **options
    )


def describe(client: ContainerClient) -> str:
    """Where blobs go, safe to log: host and container, never a key or signature."""
    how = "SAS" if client.credential is None else "account key"
    return f"{client.primary_hostname}/{client.container_name} ({how})"


def sas_permissions(url_or_token: str) -> str:
    """The ``sp=`` of a SAS URL or token: what its holder may do (c create, r read, ...)."""
    query = urlsplit(url_or_token).query if "://" in url_or_token else url_or_token
    return parse_qs(query.lstrip("?")).get("sp", [""])[0]


def allows_live(sp: str) -> bool:
    """Whether a SAS with these permissions can upload live (create and append)."""
    return all(p in sp for p in LIVE_PERMISSIONS)


def settings_allow_live(settings) -> bool:
    """Live upload works with a connection string's key, or a SAS granting ``ca``."""
    if settings.blob_sas_url:
        return allows_live(sas_permissions(settings.blob_sas_url))
    sas = connection_string_sas(settings.blob_connection_string)
    return True if sas is None else allows_live(sas_permissions(sas))


def connection_string_parts(text: str | None) -> dict[str, str]:
    """A connection string's ``Name=value`` parts (AccountName, AccountKey, ...)."""
    return dict(item.split("=", 1) for item in (text or "").split(";") if "=" in item)


def connection_string_sas(text: str | None) -> str | None:
    """The SAS token inside a connection string (SharedAccessSignature=), if any."""
    return connection_string_parts(text).get("SharedAccessSignature")


def error_code(exc: Exception) -> str:
    """The service's error code as plain text (the SDK gives an enum or a string)."""
    code = getattr(exc, "error_code", None) or ""
    return str(getattr(code, "value", code))


def explain(exc: Exception, action: str = "upload", needs: str = "c", sp: str = "") -> str:
    """What went wrong, in one line a person can act on, with no secret in it.

    ``action`` is what was refused ("upload", "download", "listing", "delete"),
    ``needs`` the SAS permissions it takes, ``sp`` those of the SAS to provide
    (default: ``needs``).
    """
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )

    code = error_code(exc)
    status = getattr(exc, "status_code", None)
    if status == 403 and code == "AuthorizationPermissionMismatch":
        rights = " and ".join(RIGHTS.get(p, p) for p in needs)
        return (
            f"{action} refused (403 AuthorizationPermissionMismatch): the credential has no "
            f"{rights} right; provision a SAS with sp={sp or needs}"
        )
    if status == 403 or isinstance(exc, ClientAuthenticationError):
        return (
            f"{action} refused ({status} {code}): the credential is wrong, expired or revoked; "
            "provision a new SAS or connection string"
        )
    if status == 404 and code == "ContainerNotFound":
        return f"container not found ({code}): create it or fix HATCAM_BLOB_CONTAINER"
    if status == 404:
        return f"{action} failed (404 {code}): the blob is not there (deleted meanwhile?)"
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return f"blob store unreachable ({type(exc).__name__})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    what = f"{status or type(exc).__name__} {code}".strip()
    return f"{action} failed ({what}): {first[:200]}"
