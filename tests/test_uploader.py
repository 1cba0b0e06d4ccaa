"""The uploader against a real Azurite: exactly once, never loses a queued segment."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import time
import uuid

import pytest
from azure.core.exceptions import HttpResponseError

from hatcam.segment import DAY_INDEX, SegmentName, is_day_index, read_day_index

from tests.support.footage import record, start_hatcam, wait_until
from tests.support.http_proxy import HttpProxy
from tests.support.services import Azurite


@pytest.fixture
def container_name():
    return f"t{uuid.uuid4().hex[:12]}"


def queued(tmp_path, segments=6):
    """A spool holding real segments, and what each should look like in the cloud."""
    spool = record(tmp_path / "spool", 30 * segments, segment_seconds=1.0)
    expected = {}
    for path in spool.ready_segments():
        meta = spool.read_metadata(path)
        blob = SegmentName.parse(path.name).blob_name(meta["device"])
        expected[blob] = (hashlib.md5(path.read_bytes()).digest(), meta)
    return spool, expected


def settings_for(spool, **extra):
    return {"HATCAM_SPOOL_DIR": spool.root, "HATCAM_RETRY_MAX_SECONDS": "1", **extra}


@contextlib.contextmanager
def uploader_running(spool, log, **settings):
    """`hatcam upload` as a daemon for the duration of the block, stopped with SIGTERM."""
    proc = start_hatcam("upload", log=log, settings=settings_for(spool, **settings))
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def drained(spool, timeout=30):
    wait_until(lambda: not spool.ready_segments(), timeout, "the spool to drain")


def account(azurite, container_name, proxy=None) -> dict:
    connection = azurite.connection_string()
    return {
        "BLOB_CONNECTION_STRING": through(connection, proxy) if proxy else connection,
        "HATCAM_BLOB_CONTAINER": container_name,
    }


def through(url: str, proxy: HttpProxy) -> str:
    """A connection string or SAS URL that reaches Azurite by way of the proxy."""
    return url.replace(f"{proxy.upstream[0]}:{proxy.upstream[1]}/", f"{proxy.host}:{proxy.port}/")


def assert_landed_exactly_once(client, expected, live=True):
    """Every segment once with its bytes and metadata. Live (an append blob): its
    closing record ``<blob>.end`` holds the metadata, the length and the MD5, and the
    blob's bytes are exactly the segment's. Whole: a block blob with Content-MD5."""
    blobs = {b.name: b for b in client.list_blobs(include=["metadata"])}
    segments = sorted(name for name in blobs if name.endswith(".ts"))
    assert segments == sorted(expected), "every segment once, nothing else"
    closing = sorted(name for name in blobs if name.endswith(".end"))
    assert closing == (sorted(n + ".end" for n in expected) if live else [])
    indexes = sorted(name for name in blobs if is_day_index(name))
    assert len(blobs) == len(segments) + len(closing) + len(indexes), "nothing else"
    indexed: dict = {}
    for index in indexes:  # live: each segment's closing record in its day index, once
        lines = client.download_blob(index).readall()
        found, bad = read_day_index(lines, index[: -len(DAY_INDEX)])
        assert bad == 0 and len(found) == len(lines.splitlines()), "no line twice or bad"
        indexed.update(found)
    assert sorted(indexed) == (sorted(expected) if live else [])
    for name, (md5, meta) in expected.items():
        blob = blobs[name]
        if live:
            assert blob.blob_type == "AppendBlob"
            data = client.download_blob(name).readall()
            assert hashlib.md5(data).digest() == md5, "the bytes as recorded, once"
            record = blobs[name + ".end"].metadata
            assert record["md5"] == md5.hex() and record["length"] == str(len(data))
            blob = blobs[name + ".end"]
        else:
            assert blob.content_settings.content_md5 == md5
        assert blob.metadata["device"] == meta["device"]
        assert blob.metadata["start"] == meta["start"]
        for key in ("frames", "first_pts", "last_pts", "width", "height"):
            assert blob.metadata[key] == str(meta[key]), key  # fetch plans from these
        assert blob.metadata["clock_synced"] in ("true", "false")


def test_segments_land_once_with_md5_and_metadata_and_the_spool_empties(
    tmp_path, azurite, container_name
):
    spool, expected = queued(tmp_path)
    with uploader_running(
        spool, tmp_path / "upload.log", **account(azurite, container_name)
    ) as proc:
        drained(spool)
    assert proc.returncode == 0
    assert_landed_exactly_once(azurite.container(container_name), expected)
    assert not list(spool.ready.glob("*.json")), "metadata goes with its segment"
    state = json.loads((spool.state / "uploader.json").read_text())
    assert state["uploaded"] == len(expected) and state["last_error"] is None


def test_blob_store_down_then_back_every_segment_lands_once(tmp_path, container_name):
    store = Azurite(tmp_path / "azurite").start()
    store.container(container_name)
    store.stop()  # the hotspot drops before anything is sent
    spool, expected = queued(tmp_path)
    log = tmp_path / "upload.log"
    try:
        with uploader_running(spool, log, **account(store, container_name)):
            wait_until(lambda: "blob store unreachable" in log.read_text(), 30, "an error line")
            time.sleep(3)
            assert len(spool.ready_segments()) == len(expected), "nothing deleted while down"
            store.start()  # same port, same data directory
            drained(spool, 60)
    finally:
        store.stop()
    store.start()
    try:
        assert_landed_exactly_once(store.container(container_name, create=False), expected)
    finally:
        store.stop()


def test_uploader_killed_mid_upload_loses_nothing_and_duplicates_nothing(
    tmp_path, azurite, container_name
):
    """SIGKILL inside a request, seen from outside by a proxy in front of Azurite: while
    the body is on its way, and while the answer is on its way back (the blob landed,
    the file is still queued). Every segment lands once. Whole segments (a create-only
    SAS); the live path's kills are in test_live_upload."""
    azurite.container(container_name)
    spool, expected = queued(tmp_path, segments=60)
    log = tmp_path / "upload.log"
    with HttpProxy(azurite.port) as proxy:
        sas = {"HATCAM_BLOB_SAS_URL": through(azurite.sas_url(container_name, "c"), proxy)}
        settings = settings_for(spool, **sas)
        # Slow enough that a kill lands inside a request: about 0.4 s per body, and
        # each answer held 0.5 s before it goes back.
        proxy.body_rate, proxy.hold = 100_000, 0.5
        killed = []  # (stage, body bytes arrived, body length) at the uploader's death
        for stage in ("body", "reply held") * 3:
            before = len(proxy.puts())
            proc = start_hatcam("upload", settings=settings, log=log)

            def inside(before=before, stage=stage):
                """A request at this stage, after one upload of this process went through."""
                mine = proxy.puts()[before:]
                return any(put.stage == "answered" for put in mine) and any(
                    put.stage == stage and put.received for put in mine
                )

            wait_until(inside, 30, f"a request at the stage '{stage}'", poll=0.005)
            [put] = [put for put in proxy.puts()[before:] if not put.over]
            proc.kill()
            proc.wait()
            killed.append((put.stage, put.received, put.length))
            wait_until(lambda: all(put.over for put in proxy.puts()), 10, "the proxy to see it")
        assert spool.ready_segments(), "the test must kill it before the queue is empty"
        assert all(arrived < length for stage, arrived, length in killed[::2]), killed
        assert all(stage in ("reply held", "reply lost") for stage, _, _ in killed[1::2]), killed
        # Each kill left a request unfinished: a body cut short, or (mostly: the rest of
        # a body the dead process had handed to its kernel still arrives) an answer that
        # found no one, for a blob that had landed.
        cut, lost = proxy.ended("cut mid-body"), proxy.ended("reply lost")
        assert len(cut) + len(lost) == 6 and len(lost) >= 3, "each kill landed inside a request"
        assert all(put.status == 201 for put in lost), "those blobs landed"
        proxy.body_rate, proxy.hold = None, 0.0
        with uploader_running(spool, log, **sas):
            drained(spool, 60)
    assert_landed_exactly_once(azurite.container(container_name), expected, live=False)
    # Each blob whose answer was lost is offered again and refused as already there, once.
    refused = [put for put in proxy.puts() if put.status == 403]
    assert sorted(put.path for put in refused) == sorted(put.path for put in lost)
    assert "damaged" not in log.read_text()


@pytest.mark.parametrize("credential", ["create-only SAS"])
def test_a_lost_reply_is_not_an_error_and_not_a_loop(tmp_path, azurite, container_name, credential):
    """The first Put Blob lands but its answer never comes back: the same bytes are sent
    again, the service answers 409 (or 403 to a create-only SAS, which may not replace),
    and that counts as uploaded: no error, no damaged copy, no retry loop. (Whole
    segments: a create-only SAS; the live path's lost append is in test_live_upload.)"""
    azurite.container(container_name)
    spool, expected = queued(tmp_path, segments=2)
    first = SegmentName.parse(spool.ready_segments()[0].name).blob_name("cam1")
    log = tmp_path / "upload.log"
    with HttpProxy(azurite.port) as proxy:
        proxy.lose_replies = 1
        if credential == "connection string":
            env = account(azurite, container_name, proxy)
        else:
            env = {"HATCAM_BLOB_SAS_URL": through(azurite.sas_url(container_name, "c"), proxy)}
        with uploader_running(spool, log, **env):
            drained(spool)
    assert_landed_exactly_once(azurite.container(container_name), expected, live=False)
    sent = [put for put in proxy.puts() if put.path.split("?")[0].endswith("/" + first)]
    refusal = 409 if credential == "connection string" else 403
    assert [(put.stage, put.status) for put in sent] == [
        ("reply dropped", 201),
        ("answered", refusal),
    ], "the answer was lost once, then the service said it has the blob"
    assert sent[0].md5 == sent[1].md5 == expected[first][0], "the same bytes, offered again"
    blob = azurite.container(container_name).get_blob_client(first).get_blob_properties()
    assert blob.etag == sent[0].etag, "the blob written by the lost request, never replaced"
    assert "damaged" not in blob.metadata
    text = log.read_text()
    assert "damaged" not in text and " ERROR " not in text, text
    assert text.count(f"{first} was already in the blob store") == 1
    state = json.loads((spool.state / "uploader.json").read_text())
    assert state["already_there"] == 1 and state["last_error"] is None
    assert not spool.ready_segments()


def test_create_only_sas_uploads_but_cannot_list_read_or_delete(tmp_path, azurite, container_name):
    azurite.container(container_name)
    spool, expected = queued(tmp_path, segments=2)
    sas_url = azurite.sas_url(container_name, "c")
    with uploader_running(spool, tmp_path / "upload.log", HATCAM_BLOB_SAS_URL=sas_url):
        drained(spool)
    assert_landed_exactly_once(azurite.container(container_name), expected, live=False)

    from azure.storage.blob import ContainerClient

    device = ContainerClient.from_container_url(sas_url)
    some_blob = next(iter(expected))
    for attempt in (
        lambda: list(device.list_blobs()),
        lambda: device.download_blob(some_blob).readall(),
        lambda: device.delete_blob(some_blob),
        lambda: device.upload_blob(some_blob, b"replaced", overwrite=True),
    ):
        with pytest.raises(HttpResponseError) as refused:
            attempt()
        assert refused.value.status_code == 403
    assert some_blob in {b.name for b in azurite.container(container_name).list_blobs()}


def test_bad_credentials_keep_the_queue_and_say_why(tmp_path, azurite, container_name):
    azurite.container(container_name)
    spool, expected = queued(tmp_path, segments=2)
    forged = azurite.sas_url(container_name, "c").replace("sig=", "sig=AAAA")
    log = tmp_path / "upload.log"
    with uploader_running(spool, log, HATCAM_BLOB_SAS_URL=forged) as proc:
        wait_until(lambda: log.read_text().count("upload refused") >= 2, 30, "two back-offs")
        assert proc.poll() is None, "the uploader keeps running"
    refused = [line for line in log.read_text().splitlines() if "upload refused" in line]
    assert "credential is wrong, expired or revoked" in refused[0]
    assert "keeping 2 segment(s) queued" in refused[0]
    assert "AAAA" not in log.read_text() and "sig=" not in log.read_text()
    assert len(spool.ready_segments()) == len(expected)
    state = json.loads((spool.state / "uploader.json").read_text())
    assert "credential is wrong" in state["last_error"]


def test_a_segment_damaged_on_the_card_is_uploaded_marked_damaged(
    tmp_path, azurite, container_name
):
    spool, expected = queued(tmp_path, segments=2)
    damaged = spool.ready_segments()[0]
    data = bytearray(damaged.read_bytes())
    data[5000] ^= 0xFF  # a bit flip on the SD card after the segment was closed
    damaged.write_bytes(bytes(data))
    log = tmp_path / "upload.log"
    with uploader_running(spool, log, **account(azurite, container_name)):
        drained(spool)
    client = azurite.container(container_name)
    blob = SegmentName.parse(damaged.name).blob_name("cam1")
    # Live: the closing record carries the metadata (the blob's own is set at open).
    props = client.get_blob_client(blob + ".end").get_blob_properties()
    assert props.metadata.get("damaged") == "true"
    assert client.download_blob(blob).readall() == bytes(data), "kept as it is on the card"
    assert props.metadata["md5"] == hashlib.md5(data).hexdigest()
    assert f"{damaged.name} changed on the card since it was recorded" in log.read_text()
    intact = [name for name in expected if name != blob]
    assert (
        "damaged" not in client.get_blob_client(intact[0] + ".end").get_blob_properties().metadata
    )
