"""A blob's bytes, streamed from Blob storage to the browser, honouring ``Range:``.

The browser never talks to the storage account (that would need a CORS rule there and
a credential in the page): the app reads with the operator's credential,
``download_blob(offset, length)``, and passes the chunks on as they come.
"""

from __future__ import annotations

import re

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
MEDIA_TYPES = {".ts": "video/mp2t"}


class RangeError(ValueError):
    """A Range header this blob cannot satisfy (the answer is 416)."""


def parse_range(header: str | None) -> tuple[int | None, int | None, int | None] | None:
    """``bytes=a-b`` as (first, last, suffix): None without a header (or one we do not
    take: several ranges, other units), so the whole blob is sent, as HTTP allows."""
    if not header:
        return None
    match = RANGE_RE.match(header.strip())
    if not match or match[1] == match[2] == "":
        return None
    if match[1] == "":
        return None, None, int(match[2])
    first = int(match[1])
    last = int(match[2]) if match[2] else None
    if last is not None and last < first:
        raise RangeError(header)
    return first, last, None


def media_type(blob: str) -> str | None:
    for suffix, kind in MEDIA_TYPES.items():
        if blob.endswith(suffix):
            return kind
    return None


def open_range(client, blob: str, wanted) -> tuple[object, int, int, int]:
    """(downloader, first byte, byte count, blob size) for ``wanted`` (parse_range's).
    Raises the SDK's errors (404 not there, 403 no read right, 416 past the end)."""
    handle = client.get_blob_client(blob)
    if wanted is None:
        down = handle.download_blob(max_concurrency=1)
        return down, 0, down.size, down.size
    first, last, suffix = wanted
    if suffix is not None:
        size = handle.get_blob_properties().size
        if suffix == 0 or size == 0:
            raise RangeError(f"bytes=-{suffix}")
        first = max(0, size - suffix)
        last = size - 1
    length = None if last is None else last - first + 1
    down = handle.download_blob(offset=first, length=length, max_concurrency=1)
    # The SDK reports the range's size; the blob's is after the slash of Content-Range.
    whole = (down.properties.content_range or "").rpartition("/")[2]
    return down, first, down.size, int(whole) if whole.isdigit() else first + down.size
