"""Azurite and redis-server on the host side of a virtual Pi's bridge, for processes that
come and go (molecule's playbooks, the demo, the fault suite): their PIDs, ports and
secrets live in a state file (JSON, 0600) that this module alone reads and writes.

    python -m tests.support.hostsvc start --host 10.213.7.1 --state FILE [--account NAME]
                                        start both, write FILE
    ... stop --state FILE               stop both by PID, remove FILE
    ... stop-one --state FILE --service azurite|redis
                                        stop one of them (an outage); its port, data and
                                        password stay in FILE
    ... start-one --state FILE --service azurite|redis
                                        start it again on the same port and data directory
    ... blobs --state FILE --device D [--min N] [--names a.ts,b.ts] [--timeout S]
                                        wait for segments; decode the newest
    ... stills --state FILE --device D [--min N] [--timeout S]
                                        wait for stills with a TTL in Redis

The services are started the one way (``services``) and listen only on the bridge
address, so only the guest (and the host) reach them. Secrets (the Redis password) stay
in FILE and are never printed. ``--account NAME`` gives Azurite its own account NAME
with a random key instead of the published development account, so the key is a real
secret a test can search for.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import secrets
import shutil
import sys
import time
from pathlib import Path

from azure.storage.blob import ContainerClient

from hatcam.segment import is_day_index

from .procs import alive, free_port
from .services import ACCOUNT, ACCOUNT_KEY, Azurite, RedisServer, connection_string

CONTAINER = "videos"
SECRETS = ("redis_password", "redis_url", "account_key")


def load(path: Path | str) -> dict:
    return json.loads(Path(path).read_text())


def _save(path: Path, state: dict) -> None:
    path.touch(mode=0o600)
    path.write_text(json.dumps(state))


def _work(path: Path) -> Path:
    return path.parent / "hostsvc"


def _azurite(state: dict, path: Path) -> Azurite:
    return Azurite(
        _work(path) / "azurite",
        state["host"],
        state["azurite_port"],
        state["account"],
        state.get("account_key", ACCOUNT_KEY),
        detach=True,
        pid=state.get("azurite_pid"),
    )


def _redis(state: dict, path: Path) -> RedisServer:
    return RedisServer(
        _work(path) / "redis",
        state["redis_port"],
        state["redis_password"],
        state["host"],
        detach=True,
        pid=state.get("redis_pid"),
    )


SERVICES = {"azurite": ("azurite_pid", _azurite), "redis": ("redis_pid", _redis)}


def start(
    host: str,
    path: Path | str,
    account: str | None = None,
    azurite_port: int | None = None,
    redis_port: int | None = None,
) -> dict:
    """Start both on ``host``; their state (secrets included), as written to ``path``."""
    path = Path(path)
    if path.exists():
        stop(path)
    shutil.rmtree(_work(path), ignore_errors=True)
    state: dict = {"host": host, "container": CONTAINER, "account": ACCOUNT}
    if account:
        if not re.fullmatch(r"[a-z0-9]{3,24}", account):
            sys.exit("hostsvc: --account must be 3-24 lowercase letters and digits")
        state.update(
            account=account,
            custom_account=True,
            account_key=base64.b64encode(secrets.token_bytes(64)).decode(),
        )
    state.setdefault("account_key", ACCOUNT_KEY)  # Azurite's published development key
    state.update(
        azurite_port=azurite_port or free_port(),
        redis_port=redis_port or free_port(),
        redis_password=secrets.token_urlsafe(24),
    )
    _save(path, state)
    try:
        for name, (pid_key, service) in SERVICES.items():
            started = service(state, path)
            state[pid_key] = started.start().pid
            if name == "azurite":
                state["blob_endpoint"] = started.endpoint
            _save(path, state)
        state["redis_url"] = _redis(state, path).url
        _save(path, state)
        client = container(state)
        if not client.exists():
            client.create_container()
    except BaseException:
        stop(path)
        raise
    return state


def stop(path: Path | str) -> None:
    """Stop both by PID and remove the state file and their data."""
    path = Path(path)
    if not path.exists():
        return
    state = load(path)
    for pid_key, service in SERVICES.values():
        if state.get(pid_key):
            service(state, path).stop()
    path.unlink()
    shutil.rmtree(_work(path), ignore_errors=True)


def stop_one(path: Path | str, service: str) -> dict:
    """Stop one service (SIGTERM, then SIGKILL); its port and data stay for start_one."""
    path = Path(path)
    state = load(path)
    pid_key, make = SERVICES[service]
    make(state, path).stop()
    state[pid_key] = None
    _save(path, state)
    return state


def start_one(path: Path | str, service: str) -> dict:
    """Start a stopped service again on the same port, data directory (and password)."""
    path = Path(path)
    state = load(path)
    pid_key, make = SERVICES[service]
    if alive(state.get(pid_key)):
        sys.exit(f"hostsvc: {service} is already running (PID {state[pid_key]})")
    state[pid_key] = make(state, path).start().pid
    _save(path, state)
    return state


def connection(state: dict) -> str:
    """The connection string of the Azurite in ``state`` (its account and key)."""
    return connection_string(state["blob_endpoint"], state["account"], state["account_key"])


def container(state: dict) -> ContainerClient:
    return ContainerClient.from_connection_string(connection(state), state["container"])


def cmd_start(args) -> int:
    state = start(args.host, args.state, args.account, args.azurite_port, args.redis_port)
    print(json.dumps({k: v for k, v in state.items() if k not in SECRETS}))
    return 0


def cmd_stop(args) -> int:
    stop(args.state)
    return 0


def cmd_stop_one(args) -> int:
    stop_one(args.state, args.service)
    return 0


def cmd_start_one(args) -> int:
    start_one(args.state, args.service)
    return 0


def decode(data: bytes) -> dict:
    import av

    with av.open(io.BytesIO(data), format="mpegts") as media:
        stream = media.streams.video[0]
        frames = sum(1 for _ in media.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "frames": frames,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
        }


def cmd_blobs(args) -> int:
    state = load(args.state)
    client = container(state)
    want = set(filter(None, (args.names or "").split(",")))
    deadline = time.monotonic() + args.timeout
    while True:
        blobs = sorted(
            b.name
            for b in client.list_blobs(name_starts_with=f"{args.device}/")
            if not is_day_index(b.name)
        )
        names = {b.rsplit("/", 1)[-1] for b in blobs}
        if len(blobs) >= args.min and want <= names:
            break
        if time.monotonic() > deadline:
            print(json.dumps({"ok": False, "blobs": len(blobs), "missing": sorted(want - names)}))
            return 1
        time.sleep(2)
    # The newest segment with bytes in it: with live upload the newest blob can be one
    # created a moment ago and not yet appended to, and closing records are not video.
    sizes = {b.name: b.size for b in client.list_blobs(name_starts_with=f"{args.device}/")}
    newest = max((b for b in blobs if b.endswith(".ts") and sizes.get(b)), default=blobs[-1])
    info = decode(client.download_blob(newest).readall())
    meta = client.get_blob_client(newest).get_blob_properties().metadata
    ok = info["frames"] > 0
    print(
        json.dumps(
            {
                "ok": ok,
                "blobs": len(blobs),
                "newest": newest,
                "decoded": info,
                "metadata": meta,
                "first": blobs[0],
            }
        )
    )
    return 0 if ok else 1


def cmd_stills(args) -> int:
    import redis

    state = load(args.state)
    client = redis.Redis(
        host=state["host"],
        port=state["redis_port"],
        password=state["redis_password"],
        socket_timeout=5,
    )
    deadline = time.monotonic() + args.timeout
    while True:
        keys = sorted(k.decode() for k in client.scan_iter(match="image:*"))
        mine = [k for k in keys if (client.hget(k, "device") or b"").decode() == args.device]
        if len(mine) >= args.min or time.monotonic() > deadline:
            break
        time.sleep(2)
    if not mine:
        print(json.dumps({"ok": False, "stills": 0, "keys": len(keys)}))
        return 1
    key = mine[-1]
    fields = client.hgetall(key)
    ttl = client.ttl(key)
    jpeg = fields.get(b"image_data", b"")
    ok = len(mine) >= args.min and ttl > 0 and jpeg[:2] == b"\xff\xd8"
    print(
        json.dumps(
            {
                "ok": ok,
                "stills": len(mine),
                "key": key,
                "ttl": ttl,
                "fields": sorted(f.decode() for f in fields),
                "mime_type": fields.get(b"mime_type", b"").decode(),
                "jpeg_bytes": len(jpeg),
            }
        )
    )
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--host", required=True)
    s.add_argument("--state", required=True)
    s.add_argument("--azurite-port", type=int)
    s.add_argument("--redis-port", type=int)
    s.set_defaults(func=cmd_start)
    s.add_argument(
        "--account",
        help="an Azurite account of this name with a random key "
        "(default: the published devstoreaccount1)",
    )
    t = sub.add_parser("stop")
    t.add_argument("--state", required=True)
    t.set_defaults(func=cmd_stop)
    for verb, func in (("stop-one", cmd_stop_one), ("start-one", cmd_start_one)):
        o = sub.add_parser(verb)
        o.add_argument("--state", required=True)
        o.add_argument("--service", required=True, choices=sorted(SERVICES))
        o.set_defaults(func=func)
    b = sub.add_parser("blobs")
    b.add_argument("--state", required=True)
    b.add_argument("--device", required=True)
    b.add_argument("--min", type=int, default=1)
    b.add_argument("--names", default="")
    b.add_argument("--timeout", type=float, default=60)
    b.set_defaults(func=cmd_blobs)
    r = sub.add_parser("stills")
    r.add_argument("--state", required=True)
    r.add_argument("--device", required=True)
    r.add_argument("--min", type=int, default=1)
    r.add_argument("--timeout", type=float, default=60)
    r.set_defaults(func=cmd_stills)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
