"""``hatcam view``: the web view on this computer, over the footage in the cloud.

    hatcam view [--port 8765] [--bind 127.0.0.1] [--token T] [--out footage]

Built on Starlette, served by uvicorn: small and ASGI, with streaming and ranged
responses and static files built in, and nothing we do not need (no templates, no ORM;
FastAPI would add pydantic for a dozen routes). The browser talks only to this app: it
reads the blobs with the same credential ``hatcam fetch`` reads (account-key connection
string, or a read+list SAS), so the key never reaches the page and the storage account
needs no CORS rule. It listens on loopback; bound anywhere else it refuses to start
without an access token, which every request must then carry.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import sys
from pathlib import Path

from .. import config

DEFAULT_PORT = 8765
EXIT_USAGE = 2


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: 8765")
    parser.add_argument(
        "--bind",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this computer only; any other "
        "needs --token)",
    )
    parser.add_argument(
        "--token",
        help="access token every request must carry (?token= once, or Authorization: Bearer)",
    )
    parser.add_argument(
        "--out", default="footage", type=Path, help="where exports go (default: ./footage)"
    )
    parser.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="the devices' public keys (default: HATCAM_KEYS_DIR), as for hatcam fetch",
    )


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build(values: dict[str, str], args):
    """The app for these settings and options; raises ValueError with the line to print."""
    from ..blob import container_client
    from ..fetch.command import load_keys
    from .app import View, create_app
    from .export import Exports
    from .quicklist import QuickListing
    from .stills import RedisReader

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be from 1 to 65535, got {args.port}")
    if not loopback(args.bind) and not args.token:
        raise ValueError(
            f"--bind {args.bind} serves the footage beyond this computer: give an access "
            f"token too, e.g. --token {secrets.token_urlsafe(18)}"
        )
    if args.token is not None and len(args.token) < 12:
        raise ValueError("--token must be at least 12 characters")
    settings = config.parse_blob(values)
    settings.require_blob("rl")
    ring = load_keys(args, values.get("HATCAM_KEYS_DIR"))
    redis = None
    if values.get("REDIS_URL"):
        try:
            redis = RedisReader(values["REDIS_URL"])
        except ValueError as exc:
            raise ValueError(f"REDIS_URL: {exc}") from None
    try:
        segment_seconds = float(values.get("HATCAM_SEGMENT_SECONDS") or 10)
    except ValueError:
        segment_seconds = 10.0
    view = View(
        client=QuickListing(container_client(settings, retries=1)),
        ring=ring,
        exports=Exports(settings, ring, args.out),
        redis=redis,
        token=args.token,
        segment_seconds=segment_seconds,
    )
    return create_app(view)


def run_view(env_file, argv: list[str]) -> int:
    """Options first (``--help`` needs no settings), then the settings fetch reads."""
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="hatcam view", description=__doc__.splitlines()[0].replace("`", "")
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        app = build(config.read_environment(env_file), args)
    except ValueError as exc:
        print(f"hatcam view: {exc}", file=sys.stderr)
        return EXIT_USAGE
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    link = f"http://{host}:{args.port}/" + (f"?token={args.token}" if args.token else "")

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)  # exits 1, saying why, when it cannot bind
            if self.started:
                print(f"hatcam view: open {link}", flush=True)

    server = Server(
        uvicorn.Config(app, host=args.bind, port=args.port, log_level="warning", access_log=False)
    )
    server.run()
    return 0 if server.started else 1
