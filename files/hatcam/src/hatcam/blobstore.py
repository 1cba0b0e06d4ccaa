"""The Azure container client, from a connection string or a container SAS URL.

The SDK's own retries stay short (our outer loops never give up), and
per-request timeouts are short so a dead hotspot is noticed quickly.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from azure.storage.blob import ContainerClient, ExponentialRetry

# The storage SDK's default retry waits 15 s, then 18 s... before giving up: far
# too long under an outer loop that already retries forever.
SDK_OPTIONS = {"connection_timeout": 10, "read_timeout": 60}


def container_client(settings, retries: int = 2, **overrides) -> ContainerClient:
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


def describe(settings) -> str:
    """Where blobs go, safe to log: account host and container, no key or signature."""
    if settings.blob_sas_url:
        url = urlsplit(settings.blob_sas_url)
        return f"{url.netloc}{url.path} (SAS)"
    parts = dict(
        item.split("=", 1) for item in settings.blob_connection_string.split(";") if "=" in item
    )
    account = parts.get("AccountName", "devstoreaccount1")
    endpoint = parts.get("BlobEndpoint", f"https://{account}.blob.core.windows.net")
    return f"{urlsplit(endpoint).netloc}/{settings.blob_container} (connection string)"
