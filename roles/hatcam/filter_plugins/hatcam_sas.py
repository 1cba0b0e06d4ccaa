"""hatcam_container_sas: mint an Azure Blob container SAS on the control machine.

The account key stays on the control machine (ansible-vault); only the SAS URL,
limited to the given permissions and an expiry, is rendered into the device's env
file. A device gets ``a`` and ``c`` (written ``sp=ac``, the service's order): it can
create blobs and append to append blobs (live upload), but not list, read, replace,
overwrite or delete anything. What a thief can do with it: add new blobs, and append
bytes to an existing append blob; fetch finds bytes appended after a segment's
closing record and leaves them out. Pure standard library (HMAC-SHA256 per
the Service SAS specification), so the control machine needs no Azure SDK.

The expiry is rounded up to the first day of a month (UTC), so re-running the
play within the same month renders the same SAS and changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

from ansible.errors import AnsibleFilterError

SAS_VERSION = "2021-08-06"
PERMISSION_ORDER = "racwdxyltfmeop"


def _expiry(valid_days: int, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    end = now + timedelta(days=int(valid_days))
    year, month = (end.year + 1, 1) if end.month == 12 else (end.year, end.month + 1)
    return f"{year:04d}-{month:02d}-01T00:00:00Z"


def hatcam_container_sas(
    account_key: str,
    account: str,
    container: str,
    permissions: str = "ac",
    valid_days: int = 365,
    endpoint: str = "",
    expiry: str = "",
) -> str:
    """Return ``<endpoint>/<container>?<sas>`` for a container SAS.

    The account and container names were checked by the role's pre-flight
    (tasks/validate.yml, the container against settings.json) before any host changed.
    """
    if not account or not container:
        raise AnsibleFilterError("hatcam_blob_account_name and hatcam_blob_container are needed")
    if not permissions or any(p not in PERMISSION_ORDER for p in permissions):
        raise AnsibleFilterError(f"SAS permissions must be letters of {PERMISSION_ORDER}")
    try:
        key = base64.b64decode(account_key, validate=True)
    except Exception:  # noqa: BLE001 - never echo the key
        raise AnsibleFilterError("hatcam_blob_account_key: not a base64 account key") from None
    if not key:
        raise AnsibleFilterError("hatcam_blob_account_key: empty")
    endpoint = (endpoint or f"https://{account}.blob.core.windows.net").rstrip("/")
    protocol = "https" if endpoint.startswith("https://") else ""
    sp = "".join(p for p in PERMISSION_ORDER if p in permissions)
    se = expiry or _expiry(valid_days)
    resource = f"/blob/{account}/{container}"
    string_to_sign = "\n".join(
        [sp, "", se, resource, "", "", protocol, SAS_VERSION, "c", "", "", "", "", "", "", ""]
    )
    sig = base64.b64encode(
        hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    ).decode()
    query = [("sv", SAS_VERSION), ("se", se), ("sr", "c"), ("sp", sp)]
    if protocol:
        query.insert(2, ("spr", protocol))
    query.append(("sig", sig))
    token = "&".join(f"{k}={quote(v, safe='')}" for k, v in query)
    return f"{endpoint}/{container}?{token}"


class FilterModule:
    def filters(self):
        return {"hatcam_container_sas": hatcam_container_sas}
