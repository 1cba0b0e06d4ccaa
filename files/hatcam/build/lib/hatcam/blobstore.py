"""The Azure container client, from a connection string or a container SAS URL.

The SDK's own retries stay short (our outer loops never give up), and
per-request timeouts are short so a dead hotspot is noticed quickly.
"""

from __future__ import annotations

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


def describe(client: ContainerClient) -> str:
    """Where blobs go, safe to log: host and container, never a key or signature."""
    how = "SAS" if client.credential is None else "account key"
    return f"{client.primary_hostname}/{client.container_name} ({how})"
