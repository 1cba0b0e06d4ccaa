"""The ``hatcam`` command: camera, upload, status, check, keygen (device); fetch, view (laptop).

It parses, then hands over to one wing, imported only then: ``hatcam camera``
never loads fetch's code (nor rich), ``hatcam fetch`` never loads the device's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from . import config

EXIT_CONFIG = 2
FETCH_HELP = "download footage and stitch it into MP4 files (--help for its options)"
_JOURNAL_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _JournalFormatter(logging.Formatter):
    """Under systemd, a ``<N>`` prefix gives each line its journald priority."""

    def format(self, record):
        return f"<{_JOURNAL_PRIORITY.get(record.levelname, 6)}>{super().format(record)}"


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "%(name)s: %(message)s"
    if os.environ.get("JOURNAL_STREAM"):  # journald adds the time itself
        handler.setFormatter(_JournalFormatter(fmt))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s " + fmt))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # The SDK logs every HTTP request at INFO; keep its warnings only.
    logging.getLogger("azure").setLevel(logging.WARNING)


def handle_signals(stop) -> None:
    """SIGTERM (systemd stop) and SIGINT end a daemon cleanly (the camera closes its segment)."""
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def load_settings(args, *, blob: str | None = None, redis: bool = False) -> config.Settings:
    """Validate the configuration before any camera or network is touched."""
    settings = config.load(args.env_file)
    if blob is not None:
        settings.require_blob(blob)
    if redis:
        settings.require_redis()
    return settings


def cmd_camera(args) -> int:
    from .device.recorder import Recorder

    settings = load_settings(args, redis=True)
    recorder = Recorder(settings)
    handle_signals(recorder.stop)
    return recorder.run()


def cmd_upload(args) -> int:
    from .device.spool import Spool
    from .device.uploader import Uploader

    settings = load_settings(args, blob=config.DEVICE_SAS_PERMISSIONS)
    uploader = Uploader(settings, Spool(settings.spool_dir).ensure())
    handle_signals(lambda *_: uploader.stop())
    uploader.run()
    return 0


def cmd_status(args) -> int:
    from .device.spool import Spool
    from .device.status import render, report

    settings = load_settings(args)
    spool = Spool(settings.spool_dir)
    if not spool.root.is_dir():
        print(
            f"HATCAM_SPOOL_DIR: {spool.root} does not exist (has the camera run?)", file=sys.stderr
        )
        return 1
    info = report(spool)
    print(json.dumps(info, indent=1) if args.json else render(info))
    return 0


def cmd_verify(args) -> int:
    # Needs only the MP4, its report and the public key: no settings, no network.
    from .verify import run

    return run(args.mp4, args.report, args.key)


def cmd_check(args) -> int:
    from .device.check import run_checks

    settings = load_settings(args)
    return run_checks(settings)


def cmd_keygen(args) -> int:
    """Make the device's signing key (never replacing one), or with --public show the
    public key line of the existing one. Only the public line is ever printed."""
    from pathlib import Path

    from . import proof

    if not config.valid_device(args.device):
        print(f"hatcam: --device: not a valid device name: {args.device!r}", file=sys.stderr)
        return EXIT_CONFIG
    path = Path(args.path)
    try:
        key = proof.DeviceKey.load(path) if args.public else proof.DeviceKey.generate(path)
    except FileExistsError:
        print(f"hatcam: {path} already holds a key: not replaced", file=sys.stderr)
        return 1
    except FileNotFoundError:
        what = "does not exist" if args.public else "is in a directory that does not exist"
        print(f"hatcam: {path} {what}", file=sys.stderr)
        return 1
    except PermissionError:
        print(f"hatcam: {path}: permission denied", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not a device key"
        print(f"hatcam: {path}: {why}", file=sys.stderr)
        return 1
    print(key.public_line(args.device))
    return 0


def cmd_fetch(args) -> int:
    # fetch parses its own options: its imports (rich, stitching) stay out of the
    # daemons, which run on a Pi Zero's 512 MB. It needs the blob settings alone.
    from .fetch import command

    parser = argparse.ArgumentParser(
        prog="hatcam fetch", description=command.__doc__.splitlines()[0].replace("`", "")
    )
    command.add_arguments(parser)
    options = parser.parse_args(args.fetch_args)
    values = config.read_environment(args.env_file)
    settings = config.parse_blob(values)
    # Off a card alone, no cloud is needed; with the cloud's settings, both are merged.
    if options.from_card is None or settings.has_blob_credential:
        settings.require_blob("rl" + ("d" if options.delete_after else ""))
    # HATCAM_KEYS_DIR: the inventory's public keys (the downloader role sets it).
    return command.run_fetch(settings, options, values.get("HATCAM_KEYS_DIR"))


def cmd_view(args) -> int:
    # The web view (operator wing): its imports (Starlette, uvicorn) load only here.
    from .view.server import run_view

    return run_view(args.env_file, args.fetch_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hatcam", description=__doc__)
    parser.add_argument(
        "--env-file",
        help="dotenv file with the settings (default: /etc/hatcam/hatcam.env if present, "
        "else ./.env); the process environment overrides it",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("camera", help="record video segments (and stills) into the spool").set_defaults(
        func=cmd_camera
    )
    sub.add_parser("upload", help="upload closed segments to Azure Blob Storage").set_defaults(
        func=cmd_upload
    )
    status = sub.add_parser("status", help="queue, last upload, last error, free disk, camera")
    status.add_argument("--json", action="store_true", help="print the raw state as JSON")
    status.set_defaults(func=cmd_status)
    sub.add_parser("check", help="validate settings, reach blob storage and Redis").set_defaults(
        func=cmd_check
    )
    keygen = sub.add_parser(
        "keygen", help="make the device's signing key (mode 0400) and print its public line"
    )
    keygen.add_argument("path", help="the private key file to create (or read, with --public)")
    keygen.add_argument("--device", required=True, help="the device name the public line names")
    keygen.add_argument(
        "--public", action="store_true", help="print the public line of an existing key"
    )
    keygen.set_defaults(func=cmd_keygen)
    fetch = sub.add_parser("fetch", help=FETCH_HELP, add_help=False)
    fetch.set_defaults(func=cmd_fetch)
    view = sub.add_parser(
        "view",
        help="the footage, stills and health in a browser (--help for options)",
        add_help=False,
    )
    view.set_defaults(func=cmd_view)
    verify = sub.add_parser(
        "verify",
        help="check an MP4 from fetch against the device's signed records (exit 0: all verified)",
    )
    verify.add_argument("mp4", help="the MP4 fetch wrote")
    verify.add_argument("report", nargs="?", help="its report (default: MP4.proof.json)")
    verify.add_argument(
        "--key",
        action="append",
        required=True,
        help="the device's public key file, or a directory of *.pub (repeatable)",
    )
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("fetch", "view"):
        args.fetch_args = extra  # `hatcam fetch --help` included
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.verbose)
    try:
        return args.func(args)
    except config.ConfigError as exc:
        for line in exc.lines:
            print(f"hatcam: {line}", file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
