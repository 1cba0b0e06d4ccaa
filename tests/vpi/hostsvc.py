#!/usr/bin/env python3
"""Azurite and redis-server on the host side of a virtual Pi's bridge, and checks on them.

    hostsvc.py start --host 10.213.7.1 --state FILE     start both, write FILE (JSON, 0600)
    hostsvc.py stop --state FILE                        stop both by PID, remove FILE
    hostsvc.py stop-one --state FILE --service azurite|redis
                                        stop one of them (an outage); its port, data and
                                        password stay in FILE
    hostsvc.py start-one --state FILE --service azurite|redis
                                        start it again on the same port and data directory
    hostsvc.py blobs --state FILE --device D [--min N] [--names a.ts,b.ts] [--timeout S]
                                                        wait for segments; decode the newest
    hostsvc.py stills --state FILE --device D [--min N] [--timeout S]
                                                        wait for stills with a TTL in Redis

Run it with the project's venv Python (it uses tests/services.py and the Azure SDK).
The services listen only on the bridge address, so only the guest (and the host) reach
them. Secrets (the Redis password) stay in FILE and are never printed. ``start --account
NAME`` gives Azurite its own account NAME with a random key (AZURITE_ACCOUNTS) instead of
the published development account, so the key is a real secret a test can search for.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services import ACCOUNT, ACCOUNT_KEY, AZURITE_BIN, free_port  # noqa: E402
from vpi import alive  # noqa: E402  (its neighbour: a live, non-zombie process)

CONTAINER = "videos"


def wait_port(host: str, port: int, pid: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.3):
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                raise RuntimeError(f"{what} exited while starting")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def spawn(cmd: list[str], log: Path, env: dict | None = None) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def terminate(pid: int | None, timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; reaps it if it is our child."""
    if not alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def azurite_command(state: dict, work: Path) -> tuple[list[str], dict | None]:
    env = None
    if state.get("custom_account"):
        env = {**os.environ, "AZURITE_ACCOUNTS": f"{state['account']}:{state['account_key']}"}
    cmd = [
        str(AZURITE_BIN),
        "--blobHost",
        state["host"],
        "--blobPort",
        str(state["azurite_port"]),
        "--location",
        str(work / "azurite"),
        "--disableTelemetry",
        "--skipApiVersionCheck",
        "--silent",
    ]
    return cmd, env


def start_azurite(state: dict, work: Path) -> None:
    cmd, env = azurite_command(state, work)
    state["azurite_pid"] = spawn(cmd, work / "azurite.log", env)


def start_redis(state: dict, work: Path) -> None:
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    state["redis_pid"] = spawn([redis_bin, str(work / "redis" / "redis.conf")], work / "redis.log")


def load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def cmd_start(args) -> int:
    state_path = Path(args.state)
    if state_path.exists():
        cmd_stop(args)
    work = state_path.parent / "hostsvc"
    shutil.rmtree(work, ignore_errors=True)
    (work / "azurite").mkdir(parents=True)
    (work / "redis").mkdir(parents=True)
    if not AZURITE_BIN.exists():
        sys.exit(f"hostsvc: {AZURITE_BIN} is missing: run `make setup` first")
    state: dict = {"host": args.host, "container": CONTAINER, "account": ACCOUNT}
    if getattr(args, "account", None):
        if not re.fullmatch(r"[a-z0-9]{3,24}", args.account):
            sys.exit("hostsvc: --account must be 3-24 lowercase letters and digits")
        state.update(
            account=args.account,
            custom_account=True,
            account_key=base64.b64encode(secrets.token_bytes(64)).decode(),
        )
    state_path.touch(mode=0o600)
    try:
        state["azurite_port"] = args.azurite_port or free_port()
        start_azurite(state, work)
        state_path.write_text(json.dumps(state))
        wait_port(args.host, state["azurite_port"], state["azurite_pid"], "azurite-blob")
        password = secrets.token_urlsafe(24)
        state["redis_port"] = args.redis_port or free_port()
        conf = work / "redis" / "redis.conf"
        conf.write_text(
            f'bind {args.host}\nport {state["redis_port"]}\nsave ""\nappendonly no\n'
            f"dir {work / 'redis'}\nrequirepass {password}\n"
        )
        conf.chmod(0o600)
        start_redis(state, work)
        state_path.write_text(json.dumps(state))
        wait_port(args.host, state["redis_port"], state["redis_pid"], "redis-server")
        state["redis_password"] = password
        state["redis_url"] = f"redis://:{password}@{args.host}:{state['redis_port']}/0"
        state["blob_endpoint"] = f"http://{args.host}:{state['azurite_port']}/{state['account']}"
        state.setdefault("account_key", ACCOUNT_KEY)  # Azurite's published development key
        state_path.write_text(json.dumps(state))
        client = container(state)
        if not client.exists():
            client.create_container()
    except BaseException:
        cmd_stop(args)
        raise
    print(
        json.dumps(
            {
                k: v
                for k, v in state.items()
                if k not in ("redis_password", "redis_url", "account_key")
            }
        )
    )
    return 0


def container(state: dict):
    from azure.storage.blob import ContainerClient

    conn = (
        f"DefaultEndpointsProtocol=http;AccountName={state.get('account', ACCOUNT)};"
        f"AccountKey={state.get('account_key', ACCOUNT_KEY)};"
        f"BlobEndpoint={state['blob_endpoint']};"
    )
    return ContainerClient.from_connection_string(conn, state["container"])


def cmd_stop(args) -> int:
    path = Path(args.state)
    if not path.exists():
        return 0
    state = load(args.state)
    for key in ("azurite_pid", "redis_pid"):
        pid = state.get(key)
        if not pid:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                os.kill(pid, 0)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
    path.unlink()
    shutil.rmtree(path.parent / "hostsvc", ignore_errors=True)
    return 0


SERVICES = {
    "azurite": ("azurite_pid", "azurite_port", "azurite-blob"),
    "redis": ("redis_pid", "redis_port", "redis-server"),
}


def cmd_stop_one(args) -> int:
    """Stop one service (SIGTERM, then SIGKILL); its port and data stay for start-one."""
    path = Path(args.state)
    state = load(args.state)
    pid_key, _, _ = SERVICES[args.service]
    terminate(state.get(pid_key))
    state[pid_key] = None
    path.write_text(json.dumps(state))
    return 0


def cmd_start_one(args) -> int:
    """Start a stopped service again on the same port, data directory (and password)."""
    path = Path(args.state)
    state = load(args.state)
    pid_key, port_key, what = SERVICES[args.service]
    if alive(state.get(pid_key)):
        sys.exit(f"hostsvc: {what} is already running (PID {state[pid_key]})")
    work = path.parent / "hostsvc"
    (start_azurite if args.service == "azurite" else start_redis)(state, work)
    path.write_text(json.dumps(state))
    wait_port(state["host"], state[port_key], state[pid_key], what)
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
        blobs = sorted(b.name for b in client.list_blobs(name_starts_with=f"{args.device}/"))
        names = {b.rsplit("/", 1)[-1] for b in blobs}
        if len(blobs) >= args.min and want <= names:
            break
        if time.monotonic() > deadline:
            print(json.dumps({"ok": False, "blobs": len(blobs), "missing": sorted(want - names)}))
            return 1
        time.sleep(2)
    newest = blobs[-1]
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
