"""The test SD card itself: a power cut keeps exactly what was synced, a stall delays."""

from __future__ import annotations

import os
import time

import pytest

from tests.support.sdcard import SdCard

pytestmark = pytest.mark.root("mounts a FUSE file system (the test SD card)")


@pytest.fixture
def card(tmp_path):
    with SdCard(tmp_path / "card", tmp_path / "card-process") as card:
        yield card


def sync_dir(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_a_power_cut_loses_the_bytes_written_since_the_last_sync(card):
    sync_dir(card.path)  # so the names below are on the card; this test is about bytes
    kept, lost = card.path / "kept", card.path / "lost"
    with open(kept, "wb") as fh:
        fh.write(b"synced ")
        fh.flush()
        os.fdatasync(fh.fileno())
        fh.write(b"written, never synced")
    with open(lost, "wb") as fh:
        fh.write(b"never synced")
    sync_dir(card.path)
    assert kept.read_bytes() == b"synced written, never synced", "reads see what was written"

    assert card.power_cut() == len(b"written, never synced") + len(b"never synced")

    assert kept.read_bytes() == b"synced "
    assert lost.read_bytes() == b"", "a file never synced is empty, as on ext4"


def test_bytes_overwritten_but_not_synced_revert_to_the_synced_ones(card):
    path = card.path / "counter"
    with open(path, "wb") as fh:
        fh.write(b"0041")
        fh.flush()
        os.fsync(fh.fileno())
    sync_dir(card.path)
    with open(path, "r+b") as fh:
        fh.write(b"0042")

    card.power_cut()

    assert path.read_bytes() == b"0041"


def test_a_new_name_survives_only_once_its_directory_is_synced(card):
    (card.path / "ready").mkdir()
    sync_dir(card.path)
    for name in ("named", "unnamed"):
        with open(card.path / name, "wb") as fh:
            fh.write(b"data")
            fh.flush()
            os.fsync(fh.fileno())
        if name == "named":
            sync_dir(card.path)
    os.replace(card.path / "named", card.path / "ready" / "moved")  # directory not synced

    card.power_cut()

    assert sorted(p.name for p in card.path.iterdir()) == ["named", "ready"]
    assert (card.path / "named").read_bytes() == b"data"
    assert not list((card.path / "ready").iterdir()), "an unsynced rename did not happen"


def test_a_card_filled_from_a_directory_keeps_all_of_it_through_a_power_cut(card, tmp_path):
    source = tmp_path / "spool"
    (source / "ready").mkdir(parents=True)
    (source / "ready" / "a.ts").write_bytes(b"G" * 1000)
    (source / "seq").write_bytes(b"7")
    os.chmod(source / "seq", 0o640)
    os.chown(source / "ready", 1234, 5678)
    card.fill(source)

    assert card.power_cut() == 0
    assert (card.path / "ready" / "a.ts").read_bytes() == b"G" * 1000
    assert (card.path / "seq").read_bytes() == b"7"
    assert (card.path / "seq").stat().st_mode & 0o777 == 0o640
    owner = (card.path / "ready").stat()
    assert (owner.st_uid, owner.st_gid) == (1234, 5678)


def test_a_file_held_open_across_a_power_cut_is_gone_for_its_holder(card):
    with open(card.path / "open", "wb", buffering=0) as fh:
        card.power_cut()
        with pytest.raises(OSError):
            fh.write(b"after the cut")


@pytest.mark.parametrize("what", ["write", "sync"])
def test_a_stalled_card_delays_each_operation_by_about_the_asked_time(card, what):
    def operation():
        started = time.monotonic()
        with open(card.path / "file", "ab") as fh:
            if what == "write":
                fh.write(b"x")
                fh.flush()
            else:
                os.fdatasync(fh.fileno())
        return time.monotonic() - started

    card.stall(what, 0.5, count=2)
    stalled = [operation(), operation()]
    after = operation()
    # Generous upper bounds: a loaded machine adds time, never removes it.
    assert all(0.5 <= s < 1.5 for s in stalled), f"stalled {what}s took {stalled}"
    assert after < 0.4, f"a {what} after the stall ended took {after:.2f} s"
    assert card.stats()[f"{what}s"] >= 3
