"""The blob listing, read fast enough for a page: a day of 10 s segments is 8,640 blobs.

The Blob SDK's ``list_blobs`` turns each page of XML into objects through its generic
model deserializer, milliseconds per blob: a day took many seconds before anything was
drawn. This sends the same List Blobs request through the SDK's own pipeline (its
credential, retries and signing, account key or SAS alike) and reads the XML with
ElementTree, yielding objects with the attributes fetch's listing reads (name, size,
etag, metadata, blob type, Content-MD5, times). Everything else is the SDK's:
``QuickListing`` passes any other call to the ContainerClient it wraps, so fetch's
``listing`` module works on it unchanged.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlencode

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.rest import HttpRequest

PAGE = 5000  # the service's largest page


@dataclass
class ContentSettings:
    content_md5: bytes | None = None


@dataclass
class Listed:
    """One blob of a listing: what fetch's listing and the view read of it (the times
    parsed only when asked: most listings never look at them)."""

    name: str
    size: int
    etag: str
    blob_type: str
    modified: str | None
    created: str | None
    metadata: dict[str, str] = field(default_factory=dict)
    content_settings: ContentSettings = field(default_factory=ContentSettings)

    @property
    def last_modified(self) -> datetime | None:
        return parsedate_to_datetime(self.modified) if self.modified else None

    @property
    def creation_time(self) -> datetime | None:
        return parsedate_to_datetime(self.created) if self.created else None


def _blob(node: ET.Element) -> Listed:
    props = node.find("Properties")
    get = props.findtext if props is not None else (lambda _name: None)
    md5 = get("Content-MD5")
    meta = node.find("Metadata")
    return Listed(
        name=node.findtext("Name") or "",
        size=int(get("Content-Length") or 0),
        etag=get("Etag") or "",
        blob_type=get("BlobType") or "",
        modified=get("Last-Modified"),
        created=get("Creation-Time"),
        metadata={m.tag: m.text or "" for m in meta} if meta is not None else {},
        content_settings=ContentSettings(base64.b64decode(md5) if md5 else None),
    )


def _raise(response) -> None:
    """The service's refusal as the SDK raises it: status, and the error code it sent."""
    status = response.status_code
    kind = (
        ResourceNotFoundError
        if status == 404
        else ClientAuthenticationError
        if status == 403
        else HttpResponseError
    )
    exc = kind(message=f"{status} {response.reason}", response=response)
    exc.error_code = response.headers.get("x-ms-error-code")
    raise exc


class QuickListing:
    """A ContainerClient whose ``list_blobs`` is fast; everything else is the client's."""

    def __init__(self, client):
        self.client = client

    def __getattr__(self, name):
        return getattr(self.client, name)

    def list_blobs(self, name_starts_with: str | None = None, include=None, **_):
        """The blobs under the prefix, in name order, a page (5,000) per request."""
        marker = ""
        base, _, sas = self.client.url.partition("?")
        while True:
            query = {"restype": "container", "comp": "list", "maxresults": str(PAGE)}
            if name_starts_with:
                query["prefix"] = name_starts_with
            if include:
                query["include"] = ",".join(include)
            if marker:
                query["marker"] = marker
            url = f"{base}?{urlencode(query)}" + (f"&{sas}" if sas else "")
            request = HttpRequest("GET", url, headers={"x-ms-version": self.client.api_version})
            response = self.client._client._client.send_request(request)
            if response.status_code != 200:
                _raise(response)
            root = ET.fromstring(response.read())
            blobs = root.find("Blobs")
            for node in blobs if blobs is not None else ():
                if node.tag == "Blob":
                    yield _blob(node)
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return
