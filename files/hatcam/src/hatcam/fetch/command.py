"""``hatcam fetch``: download a device's footage and stitch it into MP4 files.

    hatcam fetch --device hatcam1 --since today --out footage

Lists only the blobs in range (listing.py), downloads them in parallel into
``<out>/.cache`` with MD5 verification and resume (download.py), remuxes each
continuous run into ``<out>/<device>_<UTC start>.mp4`` (stitch.py), prints a
report, and with ``--delete-after`` deletes the blobs whose MP4 was written
and checked. Exit status: 0 all well, 1 something was not downloaded,
verified, stitched or deleted, or a live segment was tampered with (the report
says which), 2 bad options.

Live segments (append blobs, see listing.py): a finished one is used up to its
closing record's length and checked against its MD5; bytes appended after it
are reported and left out. An unfinished one (no closing record) is stitched
with what it holds in whole frames and reported as unfinished.

With the devices' public keys (``--keys``, else HATCAM_KEYS_DIR), each segment of a
device with a key is checked against its signed record and the records' chain
(verify.py): the run ends with what was verified, what is missing (with the time
lost), altered, badly signed, written by someone else or appended to; an unfinished
segment is stitched up to its last checkpoint only. Beside each MP4, ``<mp4>.proof.json``
(report.py) embeds the signed records for ``hatcam verify``. ``--from-card PATH`` reads
a mounted SD card's spool (card.py) the same way, merged with the cloud's copies.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from .. import config, proof
from ..blob import connection_string_sas, container_client, describe, explain, sas_permissions
from ..files import write_atomic
from ..segment import DAY_INDEX, Contents, probe
from . import card, listing, report, stitch, verify
from .download import Batch, Cache, Downloader, Outcome, md5_of
from .progress import make_progress

log = logging.getLogger("hatcam.fetch")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_JOBS = 8


class _NotDownloaded(Exception):
    """A segment planned into a file did not arrive: plan again from what did."""


def add_arguments(parser) -> None:
    parser.add_argument(
        "--device",
        action="append",
        metavar="NAME",
        help="camera to fetch (repeatable; default: every device in the container). "
        f"'{listing.LEGACY_DEVICE}' selects the original hat cam's raw .h264 blobs",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="start of the range: today, yesterday, now, a date (2026-11-21) or an ISO "
        "time (2026-11-21T08:30, local time unless it has an offset); default: the beginning",
    )
    parser.add_argument(
        "--until",
        metavar="WHEN",
        default="now",
        help="end of the range, same forms; a date means the end of that day (default: now)",
    )
    parser.add_argument(
        "--out", default="footage", type=Path, help="output directory (default: ./footage)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        help=f"parallel downloads (default: {DEFAULT_JOBS})",
    )
    parser.add_argument(
        "--delete-after",
        action="store_true",
        help="delete each blob from the cloud once the MP4 holding it is written and checked "
        "(needs delete rights: a SAS with sp=rld)",
    )
    parser.add_argument(
        "--max-gap",
        type=float,
        metavar="SECONDS",
        help="a longer gap starts a new file (default: about two segment lengths)",
    )
    parser.add_argument(
        "--legacy-fps",
        type=float,
        default=30.0,
        metavar="FPS",
        help="frame rate of legacy raw .h264 footage, which does not record it (default: 30)",
    )
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="the devices' public keys (*.pub): segments of a device with a key are checked "
        "against its signed records (default: HATCAM_KEYS_DIR from the settings)",
    )
    parser.add_argument(
        "--include-unverified",
        action="store_true",
        help="also stitch segments of a device with a key that carry no valid record "
        "(they are reported either way)",
    )
    parser.add_argument(
        "--from-card",
        type=Path,
        metavar="PATH",
        help="a mounted SD card (its hatcam spool): stitch and verify its segments, merged "
        "with what the cloud holds when the cloud's settings are given too",
    )
    parser.add_argument(
        "--legacy-tz",
        metavar="ZONE",
        help="time zone of the legacy blob names, e.g. Europe/London (default: this computer's)",
    )


def build_args(argv: list[str]):
    """The fetch options alone, parsed (for scripts and tests that skip the CLI)."""
    parser = argparse.ArgumentParser(prog="hatcam fetch")
    add_arguments(parser)
    return parser.parse_args(argv)


# --- report helpers ---------------------------------------------------------------


def _local(moment: datetime, with_date: bool = True) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z" if with_date else "%H:%M:%S")


def _span(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{int(hours)}h {int(minutes):02d}m {secs:04.1f}s"
    if minutes:
        return f"{int(minutes)}m {secs:04.1f}s"
    return f"{secs:.2f}s"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _gap_text(gap: stitch.Gap) -> str:
    missing = f", {gap.missing} segment(s) missing" if gap.missing else ""
    return f"{_local(gap.at, with_date=False)} for {_span(gap.seconds)}{missing}"


# --- the steps ----------------------------------------------------------------------


class Fetch:
    def __init__(self, settings, args, out=None, err=None, ring=None, progress=None):
        self.settings = settings
        self.progress = progress  # the download's progress (default: bars or lines on out)
        self.args = args
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.problems: list[str] = []
        self.root = Path(args.out)
        self.cache = Cache(self.root / ".cache")
        self.stitched_path = self.root / ".cache" / "stitched.json"
        self.client = None
        self.ring = ring or proof.KeyRing()
        # Per segment (blob name): what its record says, then what its bytes say.
        self.verdicts: dict[str, verify.Verdict] = {}
        self.settled: set[str] = set()
        self.remotes: dict[str, listing.Remote] = {}

    # --- verification -------------------------------------------------------------

    def keyed(self, device: str) -> bool:
        return device in self.ring.devices()

    def judge(self, device: str, remotes: list[listing.Remote]) -> None:
        """Each segment's verdict from its record alone (its bytes are checked once here)."""
        for remote in remotes:
            self.remotes[remote.name] = remote
        if not self.keyed(device):
            why = "legacy footage" if device == listing.LEGACY_DEVICE else "no key registered"
            for remote in remotes:
                self.verdicts[remote.name] = verify.Verdict(verify.UNVERIFIED, problem=why)
            return
        valid = []
        for remote in remotes:
            record = remote.proof
            if remote.kind == listing.UNFINISHED:
                # Its checkpoints are inside the file: judged once it is here.
                self.verdicts[remote.name] = verify.Verdict(verify.CHECKPOINT)
                continue
            if record is None:
                self.verdicts[remote.name] = verify.Verdict(verify.NO_RECORD, problem="no record")
                continue
            wrong = verify.record_problem(self.ring, record, device, remote.filename)
            if wrong is not None:
                self.verdicts[remote.name] = verify.Verdict(wrong[0], record, wrong[1])
                continue
            valid.append(record)
            self.verdicts[remote.name] = verify.Verdict(
                verify.VERIFIED, record, size=record.get("size"), appended=remote.added
            )
        first = verify.genesis(valid)
        for remote in remotes:
            verdict = self.verdicts[remote.name]
            unsigned = verdict.status == verify.NO_RECORD and verdict.record is None
            if unsigned and first is not None and remote.start < first:
                self.verdicts[remote.name] = verify.Verdict(
                    verify.UNVERIFIED, problem="from before the device had a key"
                )
            elif unsigned and first is None and remote.kind != listing.UNFINISHED:
                verdict.problem = (
                    f"no record (footage from before {device} had a key is stitched only "
                    "with --include-unverified when its first record is not in range)"
                )

    def wanted(self, remote: listing.Remote) -> bool:
        """Whether a segment goes into the MP4 by what is known of it so far."""
        verdict = self.verdicts.get(remote.name)
        if verdict is None or verdict.stitched:
            return True
        return self.args.include_unverified and verdict.status in (
            verify.NO_RECORD,
            verify.BAD_SIGNATURE,
        )

    def settle(self, remote: listing.Remote, path: Path) -> verify.Verdict:
        """A segment's verdict once its bytes are here (checked once per run)."""
        verdict = self.verdicts[remote.name]
        if remote.name in self.settled or not self.keyed(remote.device):
            return verdict
        self.settled.add(remote.name)
        if verdict.status == verify.VERIFIED:
            checked = verify.check_bytes(verdict.record, path)
            checked.appended = verdict.appended if checked.status == verify.VERIFIED else 0
            verdict = checked
        elif verdict.status == verify.CHECKPOINT and remote.kind == listing.UNFINISHED:
            found = verify.last_checkpoint(self.ring, path, remote.device, remote.filename)
            verdict = found or verify.Verdict(
                verify.NO_RECORD, problem="unfinished, and no checkpoint in it verifies"
            )
        self.verdicts[remote.name] = verdict
        return verdict

    def path_of(self, remote: listing.Remote) -> Path:
        return remote.local or self.cache.path(remote)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def options(self):
        """Validated range, zone and devices; raises ValueError with a message."""
        args = self.args
        now = datetime.now(UTC)
        since = listing.parse_when(args.since, end=False, now=now) if args.since else None
        until = listing.parse_when(args.until, end=True, now=now)
        if since is not None and since >= until:
            raise ValueError(f"--since {args.since} is not before --until {args.until}")
        zone = None
        if args.legacy_tz:
            try:
                zone = ZoneInfo(args.legacy_tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"--legacy-tz: unknown time zone {args.legacy_tz!r}") from None
        for device in args.device or []:
            if device != listing.LEGACY_DEVICE and not config.valid_device(device):
                raise ValueError(f"--device: {device!r} is not a device name")
        if args.jobs < 1 or args.jobs > 64:
            raise ValueError("--jobs must be from 1 to 64")
        if not 1 <= args.legacy_fps <= 240:
            raise ValueError("--legacy-fps must be from 1 to 240")
        if args.max_gap is not None and args.max_gap < 0:
            raise ValueError("--max-gap must not be negative")
        return since, until, zone

    def delete_right_missing(self) -> str | None:
        """A SAS inside a connection string that lacks 'd' (config checks SAS URLs)."""
        token = connection_string_sas(self.settings.blob_connection_string)
        if token is None:
            return None
        granted = sas_permissions(token)
        if "d" in granted:
            return None
        return (
            f"--delete-after needs delete rights, but the SAS in BLOB_CONNECTION_STRING grants "
            f"sp={granted or '(none)'}; nothing was downloaded or deleted. Use a SAS with "
            "sp=rld, or run without --delete-after"
        )

    def inspect(self, remote: listing.Remote, path: Path) -> Contents:
        """What stitching needs to know of a verified file: the device's own account
        (its metadata) when it gave one, else what demuxing the file shows."""
        if remote.kind == listing.UNFINISHED:
            return stitch.whole_frames(path)
        return remote.contents or probe(path, legacy=remote.legacy)

    def verified_prefix(self, remote, verdict: verify.Verdict) -> tuple[Path, Contents]:
        """An unfinished segment's bytes up to the checkpoint that verifies them, as a file
        of their own (only those are stitched), and what they hold."""
        prefix = self.root / ".cache" / "verified" / remote.cache_name
        prefix.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path_of(remote) if remote.local is None else remote.local, "rb") as fh:
            data = fh.read(verdict.size)
        if not prefix.is_file() or prefix.read_bytes() != data:
            write_atomic(prefix, data, durable=False)
        contents = probe(prefix)
        frames = verdict.record.get("frames")
        if contents.frames != frames:
            raise ValueError(
                f"its verified bytes hold {contents.frames} frames, its checkpoint {frames}"
            )
        audio = verdict.record.get("audio_packets") or 0
        if (contents.audio_packets or 0) < audio:
            raise ValueError(
                f"its verified bytes hold {contents.audio_packets or 0} audio packets, "
                f"its checkpoint {audio}"
            )
        if contents.audio_packets is not None:  # only what the checkpoint covers
            contents = replace(contents, audio_packets=audio)
        return prefix, contents

    def segment(
        self, remote: listing.Remote, path: Path, contents: Contents, cut: bool | None = None
    ) -> stitch.Segment:
        return stitch.Segment.from_contents(
            remote.name,
            path,
            remote.device,
            remote.start,
            contents,
            boot=remote.boot,
            seq=remote.seq,
            legacy_fps=self.args.legacy_fps if remote.legacy else None,
            cut=remote.kind == listing.UNFINISHED if cut is None else cut,
        )

    def segments(self, outcomes: list[Outcome]) -> list[stitch.Segment]:
        """The verified segments, each described by demuxing its file (the careful path:
        this device could not be stitched from its metadata)."""
        found = []
        for outcome in outcomes:
            if not outcome.ok:
                self.problem(f"{outcome.remote.name}: {outcome.error}; not stitched")
                continue
            verdict = self.settle(outcome.remote, outcome.path)
            if not self.wanted(outcome.remote):
                continue
            if verdict.status == verify.CHECKPOINT and verdict.record is not None:
                try:
                    prefix, contents = self.verified_prefix(outcome.remote, verdict)
                except (ValueError, OSError) as exc:
                    self.problem(f"{outcome.remote.name}: {exc}; not stitched")
                    continue
                segment = self.segment(outcome.remote, prefix, contents, cut=False)
                segment.audio_prefix = True
                found.append(segment)
                continue
            contents = outcome.contents
            if contents.from_metadata:
                try:
                    contents = probe(outcome.path, legacy=outcome.remote.legacy)
                except ValueError as exc:
                    self.problem(f"{outcome.remote.name}: {exc}; not stitched")
                    continue
                if outcome.remote.local is None:
                    self.cache.record(outcome.remote, contents)
            found.append(self.segment(outcome.remote, outcome.path, contents))
        return found

    def plan(self, segments: list[stitch.Segment]):
        max_gap = self.args.max_gap
        if max_gap is None:
            max_gap = stitch.default_max_gap(segments)
        return stitch.plan(segments, max_gap)

    def load_stitched(self) -> dict:
        try:
            return json.loads(self.stitched_path.read_text())
        except (OSError, ValueError):
            return {}

    def save_stitched(self, record: dict) -> None:
        text = json.dumps(record, indent=0, sort_keys=True)
        write_atomic(self.stitched_path, text.encode(), durable=False)

    def stitch_run(self, run: stitch.Run, record: dict, ready=None) -> str:
        """Write (or keep) one MP4: "written" or "unchanged"; raises if it cannot be written.

        An MP4 from an earlier run is kept when it holds the same segments and
        still has its size; before its blobs are deleted its hash must match too,
        else it is stitched again from the cache. ``ready`` as in stitch.write.
        """
        path = self.root / run.filename
        want = {"segments": run.names, "frames": run.frames, "ticks": run.duration_ticks}
        audio = sum(p.segment.audio_packets or 0 for p in run.items)
        if audio:  # an MP4 of these segments stitched without their sound is not the same
            want["audio"] = audio
        old = record.get(run.filename)
        same = old and {k: old.get(k) for k in want} == want
        kept = same and path.is_file() and path.stat().st_size == old.get("size")
        if kept and (not self.args.delete_after or md5_of(path).hexdigest() == old.get("md5")):
            gaps = old.get("audio_gaps") or []
            run.audio_gaps = [stitch.AudioGap.from_dict(g, run.start) for g in gaps]
            return "unchanged"
        stitch.write(run, path, reread=self.args.delete_after, ready=ready)
        # The hash only matters before deleting blobs; hashing a day of video costs time.
        md5 = md5_of(path).hexdigest() if self.args.delete_after else None
        record[run.filename] = {**want, "size": path.stat().st_size, "md5": md5}
        if run.audio_gaps:
            record[run.filename]["audio_gaps"] = [g.to_dict(run.start) for g in run.audio_gaps]
        return "written"

    def stitch_runs(self, runs: list[stitch.Run], record: dict) -> list[str | None]:
        """Each run's state, None for one that failed (recorded as a problem)."""
        states = []
        for run in runs:
            try:
                states.append(self.stitch_run(run, record))
            except (ValueError, OSError, stitch.av.error.FFmpegError) as exc:
                self.problem(f"{run.filename}: could not be written ({exc})")
                states.append(None)
        return states

    def stitch_ahead(self, remotes: list[listing.Remote], batch: Batch, record: dict):
        """Stitch a device's footage while it downloads, planned from the blobs' metadata.

        Returns (runs, splits, states), or None to stitch after the downloads instead:
        when a blob lacks the metadata, fails to download, or holds other than it says.
        """
        if not all(r.contents and not r.legacy for r in remotes):
            return None
        remotes = [r for r in remotes if self.wanted(r)]
        if not remotes:
            return None
        runs, splits = self.plan([self.segment(r, self.path_of(r), r.contents) for r in remotes])

        def ready(segment: stitch.Segment) -> None:
            outcome = batch.outcome(segment.name)
            if not outcome.ok:
                raise _NotDownloaded(segment.name)
            self.settle(outcome.remote, outcome.path)
            if not self.wanted(outcome.remote):
                raise _NotDownloaded(segment.name)  # altered: planned again without it

        try:
            states = [self.stitch_run(run, record, ready) for run in runs]
        except _NotDownloaded:
            return None
        except (ValueError, OSError, stitch.av.error.FFmpegError) as exc:
            log.warning("stitching from the blobs' metadata failed (%s); demuxing them", exc)
            return None
        return runs, splits, states

    def report_device(self, device, remotes, outcomes, runs, splits, states) -> None:
        fetched = sum(o.fetched for o in outcomes)
        cached = sum(o.status == "cached" for o in outcomes)
        resumed = sum(o.status == "resumed" for o in outcomes)
        failed = sum(not o.ok for o in outcomes)
        on_card = sum(o.status == "card" for o in outcomes)
        self.say(
            f"{device}: {len(remotes)} segment(s) in range, {len(runs)} file(s); downloaded "
            f"{len(outcomes) - cached - failed - on_card} ({resumed} resumed, {_mb(fetched)}), "
            f"{cached} already here"
            + (f", {on_card} read off the card" if on_card else "")
            + (f", {failed} FAILED" if failed else "")
        )
        unhashed = sum(r.md5 is None and r.kind == listing.WHOLE for r in remotes)
        if unhashed:
            self.say(f"  {unhashed} blob(s) have no stored MD5: checked by size only")
        live = sum(r.kind == listing.LIVE for r in remotes)
        if live:
            self.say(f"  {live} sent live and finished: checked against their closing records")
        kept = {o.remote.name: o.contents for o in outcomes if o.ok}
        for remote in remotes:
            if remote.kind == listing.UNFINISHED and not self.keyed(device):
                contents = kept.get(remote.name)
                held = f"{contents.frames} whole frames kept" if contents else "nothing usable"
                self.say(
                    f"  unfinished (no closing record): {remote.name}: {held}; "
                    "its bytes cannot be verified"
                )
        for index, run in enumerate(runs):
            path = self.root / run.filename
            size = path.stat().st_size if path.is_file() else 0
            state = states[index] or "NOT WRITTEN"
            self.say(f"  {path}  [{state}]")
            self.say(
                f"    {_local(run.start)} to {_local(run.end, with_date=False)}, "
                f"{_span(run.duration)} ({run.duration:.3f} s), {run.frames} frames, "
                f"{len(run.items)} segment(s), {_mb(size)}"
            )
            for gap in run.gaps:
                self.say(f"    gap kept in the file: {_gap_text(gap)}")
            for gap in run.audio_gaps:
                at = _local(gap.at, with_date=False)
                self.say(f"    audio gap (picture, no sound): {at} for {_span(gap.seconds)}")
            if index < len(splits):
                self.say(f"  gap, new file: {_gap_text(splits[index])}")

    def delete_spent_indexes(self, deleted: list[str]) -> None:
        """A day index whose folder holds nothing else once the deletes are done goes
        too: it would name segments that are gone."""
        for folder in sorted({name.rpartition("/")[0] for name in deleted}):
            left = [
                b.name
                for b in itertools.islice(
                    self.client.list_blobs(name_starts_with=f"{folder}/", results_per_page=2), 2
                )
            ]
            if left == [f"{folder}/{DAY_INDEX}"]:
                with contextlib.suppress(ResourceNotFoundError):
                    self.client.delete_blob(left[0])

    def delete(self, names: list[str]) -> int:
        """Delete blobs; the first alone, so missing rights delete nothing at all."""
        if not names:
            return 0

        def one(name: str) -> None:
            with contextlib.suppress(ResourceNotFoundError):  # already gone: fine
                self.client.delete_blob(name)

        try:
            one(names[0])
        except HttpResponseError as exc:
            self.problem(
                f"--delete-after: {explain(exc, 'delete', 'd', 'rld')}; nothing was deleted"
            )
            return 0
        deleted = 1
        with ThreadPoolExecutor(max_workers=self.args.jobs) as pool:
            futures = {pool.submit(one, name): name for name in names[1:]}
            for future, name in futures.items():
                try:
                    future.result()
                    deleted += 1
                except HttpResponseError as exc:
                    self.problem(f"--delete-after: {name}: {explain(exc, 'delete', 'd', 'rld')}")
        return deleted

    def run(self) -> int:
        try:
            since, until, zone = self.options()
        except ValueError as exc:
            print(f"hatcam fetch: {exc}", file=self.err)
            return EXIT_USAGE
        card_root = None
        if self.args.from_card is not None:
            card_root = card.spool_root(self.args.from_card)
            if card_root is None:
                print(
                    f"hatcam fetch: --from-card: {self.args.from_card} holds no hatcam spool "
                    "(no ready/, recording/ or kept/ folder)",
                    file=self.err,
                )
                return EXIT_USAGE
        cloud = self.settings is not None and self.settings.has_blob_credential
        if self.args.delete_after and not cloud:
            print("hatcam fetch: --delete-after needs the cloud's settings", file=self.err)
            return EXIT_USAGE
        if self.args.delete_after and (message := self.delete_right_missing()):
            print(f"hatcam fetch: {message}", file=self.err)
            return EXIT_USAGE
        span = f"{_local(since) if since else 'the beginning'} to {_local(until)}"
        chosen: dict[str, list[listing.Remote]] = {}
        notes: list[str] = []
        where = "nowhere"
        if cloud:
            self.client = container_client(self.settings, retries=4, read_timeout=120)
            where = describe(self.client)
            self.say(f"fetching from {where}, {span}")
            try:
                chosen = listing.select(self.client, self.args.device, since, until, zone, notes)
            except HttpResponseError as exc:
                print(f"hatcam fetch: listing {where} failed: {explain(exc, 'listing', 'l', 'rl')}")
                return EXIT_FAILED
        if card_root is not None:
            self.say(f"reading the card at {card_root}, {span}")
            on_card = card.list_card(card_root, self.args.device, since, until)
            chosen = self.merge(chosen, on_card)
        for note in notes:
            self.problem(note)
        for device, in_range in chosen.items():
            self.judge(device, in_range)
        remotes = [r for device in chosen.values() for r in device if self.wanted(r)]
        if not any(chosen.values()) and not notes:
            self.say(f"no footage in range for {', '.join(chosen) or 'any device'}")
            return EXIT_OK
        self.root.mkdir(parents=True, exist_ok=True)
        downloader = Downloader(
            self.client,
            self.cache,
            self.inspect,
            self.progress or make_progress(self.out),
            self.args.jobs,
        )
        record = self.load_stitched()
        stitched = {}
        batch = downloader.start(remotes)
        try:
            # Stitching overlaps the downloads: segments are fetched in time order.
            for device, in_range in chosen.items():
                if in_range:
                    stitched[device] = self.stitch_ahead(in_range, batch, record)
            outcomes = batch.finish()
        except KeyboardInterrupt:
            print(
                "hatcam fetch: interrupted; run it again to resume where it stopped",
                file=self.err,
            )
            return EXIT_INTERRUPTED
        finally:
            batch.close()
            self.save_stitched(record)
        by_device: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_device.setdefault(outcome.remote.device, []).append(outcome)
        deletable: list[str] = []
        for device, in_range in chosen.items():
            if not in_range:
                self.say(f"{device}: no footage in range")
                continue
            results = by_device.get(device, [])
            for outcome in results:
                if outcome.ok:
                    self.settle(outcome.remote, outcome.path)
            for remote in in_range:
                if remote.added and self.verdicts[remote.name].status != verify.ALTERED:
                    self.problem(
                        f"{remote.name}: {remote.added} bytes added after the device "
                        "finished it; left out"
                    )
            done = stitched.get(device)
            if done is None:
                runs, splits = self.plan(self.segments(results))
                states = self.stitch_runs(runs, record)
                self.save_stitched(record)
            else:
                runs, splits, states = done
            self.report_device(device, in_range, results, runs, splits, states)
            self.prove(device, in_range, runs, states)
            if self.args.delete_after:
                for run, state in zip(runs, states, strict=True):
                    if state is None:
                        continue
                    # An unfinished segment stays: it may still grow, and its closing
                    # record may yet come. A finished one goes with its closing record.
                    kind = {r.name: r for r in in_range}
                    for blob in run.names:
                        if kind[blob].kind == listing.UNFINISHED or kind[blob].local:
                            continue
                        deletable.append(blob)
                        if kind[blob].kind == listing.LIVE:
                            deletable.append(blob + listing.END_SUFFIX)
        self.cache.save()
        if self.args.delete_after:
            deleted = self.delete(deletable)
            if deleted:
                self.delete_spent_indexes(deletable)
            # Blobs in range: each finished live segment has its closing record too.
            total = len(remotes) + sum(r.kind == listing.LIVE for r in remotes)
            self.say(f"deleted {deleted} of {total} blob(s) from {where}")
            unfinished = sum(r.kind == listing.UNFINISHED for r in remotes)
            if unfinished:
                self.say(f"kept {unfinished} unfinished segment(s): they may still grow")
        if self.problems:
            self.say("problems:")
            for line in self.problems:
                self.say(f"  {line}")
            print(
                f"hatcam fetch: {len(self.problems)} problem(s); see the report above",
                file=self.err,
            )
            return EXIT_FAILED
        return EXIT_OK

    def merge(self, cloud: dict, on_card: dict) -> dict:
        """The cloud's and the card's segments, each once (same file name: same segment),
        the copy that proves more preferred: the card's when it verifies at least as far
        as the cloud's record promises (it needs no download)."""
        merged = {device: list(remotes) for device, remotes in cloud.items()}
        for device, remotes in on_card.items():
            have = {r.filename: i for i, r in enumerate(merged.setdefault(device, []))}
            probe_card, probe_cloud = Fetch(None, self.args, ring=self.ring), None
            probe_card.judge(device, remotes)
            for remote in remotes:
                rank = verify.RANK.get(probe_card.settle(remote, remote.local).status, 0)
                at = have.get(remote.filename)
                if at is None:
                    merged[device].append(remote)
                    continue
                other = merged[device][at]
                if probe_cloud is None:
                    probe_cloud = Fetch(None, self.args, ring=self.ring)
                    probe_cloud.judge(device, [r for r in merged[device] if not r.local])
                promised = probe_cloud.verdicts[other.name].status
                if other.kind == listing.UNFINISHED and promised == verify.CHECKPOINT:
                    promised_rank = verify.RANK[verify.CHECKPOINT]
                else:
                    promised_rank = verify.RANK.get(promised, 0)
                if rank >= promised_rank:
                    merged[device][at] = remote
            merged[device].sort(key=lambda r: (r.start, r.boot or "", r.seq or 0))
        return merged

    def prove(self, device, in_range, runs, states) -> None:
        """The verification summary on the console and a proof report beside each MP4."""
        entries, records = [], []
        for remote in in_range:
            verdict = self.verdicts[remote.name]
            if verdict.record is not None and verdict.status not in (
                verify.BAD_SIGNATURE,
                verify.NO_RECORD,
            ):
                records.append((remote.name, verdict.record))
            entries.append((remote, verdict))
        gaps = verify.chain(device, records) if self.keyed(device) else []
        placed = {}
        for run in runs:
            first = heard = 0
            for item in run.items:
                audio = item.segment.audio_packets or 0
                placed[item.segment.name] = (
                    run,
                    first,
                    item.segment.frames,
                    item.shift,
                    *((heard, audio) if audio else ()),
                )
                first += item.segment.frames
                heard += audio
        self.summarize(device, entries, gaps, placed)
        for run, state in zip(runs, states, strict=True):
            if state is None:
                continue
            mine = [
                report.Entry(
                    r.name,
                    "card" if r.local else "cloud",
                    v,
                    placed[r.name][1:] if placed.get(r.name, (None,))[0] is run else None,
                )
                for r, v in entries
                if placed.get(r.name, (None,))[0] is run
                or (r.name not in placed and run.start <= r.start <= run.end)
            ]
            mine.sort(key=lambda e: e.placement is None)
            inside = [g for g in gaps if run.start <= g.end and g.start <= run.end]
            report.write(
                self.root / run.filename,
                report.build(
                    self.root / run.filename,
                    device,
                    self.ring,
                    mine,
                    inside,
                    [gap.to_dict(run.start) for gap in run.audio_gaps],
                ),
            )

    def summarize(self, device, entries, gaps, placed) -> None:
        if not self.keyed(device):
            if device != listing.LEGACY_DEVICE:
                self.say(f"  unverified: no key registered for {device} (see --keys)")
            return
        ranges, current = [], None
        for remote, verdict in entries:
            good = verdict.status in (verify.VERIFIED, verify.CHECKPOINT) and remote.name in placed
            broken = any(g.before == remote.name for g in gaps)
            if good and current is not None and not broken:
                current[1], current[2] = remote, current[2] + 1
            elif good:
                current = [remote, remote, 1]
                ranges.append(current)
            else:
                current = None
        for first, last, count in ranges:
            end = self.remotes[last.name].end or last.start
            self.say(
                f"  verified: {_local(first.start)} to {_local(end, with_date=False)}, "
                f"{count} segment(s), signed by {device}'s key"
            )
        for gap in gaps:
            line = (
                f"MISSING: {device}: segment(s) between {gap.after} and {gap.before}: "
                f"{_local(gap.start)} to {_local(gap.end, with_date=False)} "
                f"({_span(gap.seconds)}) lost (a break in the chain of records)"
            )
            self.say(f"  {line}")
            self.problem(line)
        words = {
            verify.ALTERED: "ALTERED",
            verify.BAD_SIGNATURE: "BAD SIGNATURE",
            verify.NO_RECORD: "NO VALID RECORD",
        }
        pre_key = 0
        for remote, verdict in entries:
            if verdict.status == verify.CHECKPOINT and verdict.record is not None:
                self.say(
                    f"  unfinished: {remote.name}: verified up to its last checkpoint "
                    f"({verdict.record.get('frames')} frames, {verdict.size} bytes)"
                )
            elif verdict.status == verify.UNVERIFIED:
                pre_key += 1
            elif verdict.status in words:
                fate = "stitched (--include-unverified)" if remote.name in placed else "left out"
                line = f"{words[verdict.status]}: {remote.name}: {verdict.problem}; {fate}"
                self.say(f"  {line}")
                self.problem(line)
            if verdict.appended:
                self.say(
                    f"  appended: {remote.name}: {verdict.appended} bytes after the device's; "
                    "cut off"
                )
        if pre_key:
            self.say(f"  unverified: {pre_key} segment(s) from before {device} had a key")


def load_keys(args, keys_dir: str | None) -> proof.KeyRing:
    """The key ring from --keys, else HATCAM_KEYS_DIR; raises ValueError naming the option."""
    where, name = (args.keys, "--keys") if args.keys else (keys_dir, "HATCAM_KEYS_DIR")
    if not where:
        return proof.KeyRing()
    path = Path(where)
    if not path.exists():
        raise ValueError(f"{name}: {path} does not exist")
    try:
        return proof.KeyRing.load(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: {exc}") from None


def run_fetch(settings, args, keys_dir: str | None = None) -> int:
    try:
        ring = load_keys(args, keys_dir)
    except ValueError as exc:
        print(f"hatcam fetch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return Fetch(settings, args, ring=ring).run()
