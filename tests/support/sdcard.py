"""A faithful SD card for tests: a FUSE file system that keeps what was written apart from
what was synced, so a power cut loses exactly what a real card would.

What the card holds after ``power_cut()``, on POSIX terms:

- a file's bytes as of its last fsync/fdatasync; whatever was written after is gone, and
  a file never synced is empty;
- a name created, renamed or removed in a directory only once that directory was
  fsync'd; until then the old entry stands (or none).

ext4 is kinder (its journal commits names every 5 s and at any fsync, and dirty pages are
written back within 30 s): the card is the worst moment for the power to go, just before
any of that, which is what a program that promises durability must survive.

It can also stall writes or syncs on demand, as a card busy with its own housekeeping
does (100-200 ms is common on cheap cards).

The file system runs as its own process (``python sdcard.py serve ...``, in memory), so a
test can kill it and unmount it; the test drives it through a Unix socket
(``SdCard.power_cut``, ``SdCard.stall``). Mounting needs root (``/dev/fuse``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

CAPACITY_MB = 4096  # what statfs reports: a small card, far more than a test writes


class SdCard:
    """The test's side: start the card's process, mount it, cut its power, stall it."""

    def __init__(
        self,
        mountpoint: Path,
        workdir: Path,
        owner: tuple[int, int] = (0, 0),
        mode: int = 0o755,
        capacity_mb: int = CAPACITY_MB,
    ):
        self.path = Path(mountpoint)
        self.workdir = Path(workdir)
        self.control = self.workdir / "control.sock"
        self.log = self.workdir / "sdcard.log"
        self.owner, self.mode, self.capacity_mb = owner, mode, capacity_mb
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 15) -> SdCard:
        self.path.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "serve",
                    str(self.path),
                    str(self.control),
                    f"--owner={self.owner[0]}:{self.owner[1]}",
                    f"--mode={self.mode:o}",
                    f"--capacity-mb={self.capacity_mb}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the test run leaves unmounting to stop()
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the SD card's process exited: {self.log.read_text()[-2000:]}")
            if os.path.ismount(self.path) and self.control.exists():
                self.request("ping")
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the SD card did not mount in {timeout} s: {self.log.read_text()}")

    def request(self, op: str, **args) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(self.control))
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            with sock.makefile("r") as replies:
                reply = json.loads(replies.readline())
        if "error" in reply:
            raise RuntimeError(f"SD card: {reply['error']}")
        return reply

    def power_cut(self) -> int:
        """The power goes and comes back: every file holds its last synced bytes, every
        directory its last synced entries; open files are gone (EIO to whoever held one).
        Returns how many bytes the cut took (written, never synced)."""
        return self.request("power_cut")["lost_bytes"]

    def stall(self, what: str, seconds: float, count: int | None = None) -> None:
        """From now on each ``what`` ("write" or "sync": fsync, fdatasync, a directory's
        fsync) takes ``seconds`` longer; only the next ``count`` when given. 0 ends it."""
        self.request("stall", what=what, seconds=seconds, count=count)

    def fill(self, source: Path) -> None:
        """Copy a directory tree onto the card with its owners and modes, every file and
        directory synced: a card that has been in use before the test."""
        for folder, _, files in os.walk(source):
            relative = Path(folder).relative_to(source)
            target = self.path / relative
            if relative != Path("."):
                target.mkdir()
            for name in files:
                with open(Path(folder, name), "rb") as src, open(target / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                    dst.flush()
                    os.fsync(dst.fileno())
                _same_owner_and_mode(Path(folder, name), target / name)
            _same_owner_and_mode(Path(folder), target)
        for folder, _, _ in os.walk(self.path):
            _sync_dir(Path(folder))

    def stats(self) -> dict:
        """How many writes and syncs the card has seen (of files, of directories), and
        how many of them a stall held up."""
        return self.request("stats")

    def stop(self) -> None:
        """Unmount (lazily if something still holds it) and end the card's process."""
        if os.path.ismount(self.path):
            done = subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)
            if done.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(5)
            self.proc = None

    def __enter__(self) -> SdCard:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _same_owner_and_mode(source: Path, target: Path) -> None:
    info = source.stat()
    os.chown(target, info.st_uid, info.st_gid)
    os.chmod(target, stat.S_IMODE(info.st_mode))


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# The card's side: runs in its own process, imports the FUSE binding only there.


class _Node:
    """An inode: live state (what reads see) and durable state (what a power cut leaves)."""

    def __init__(self, ino: int, mode: int, uid: int, gid: int):
        self.ino, self.mode, self.uid, self.gid = ino, mode, uid, gid
        self.atime = self.mtime = self.ctime = time.time_ns()
        self.is_dir = stat.S_ISDIR(mode)
        self.entries: dict[str, _Node] = {}  # directory: live names
        self.durable_entries: dict[str, _Node] = {}  # as of the directory's last fsync
        self.data = bytearray()  # file: live bytes
        self.durable = b""  # as of the file's last fsync/fdatasync

    def attrs(self) -> dict:
        return {
            "st_ino": self.ino,
            "st_mode": self.mode,
            "st_nlink": 2 if self.is_dir else 1,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_size": 4096 if self.is_dir else len(self.data),
            "st_blksize": 4096,
            "st_blocks": (len(self.data) + 511) // 512,
            "st_atime": self.atime,
            "st_mtime": self.mtime,
            "st_ctime": self.ctime,
        }


def _make_operations(mfusepy, owner: tuple[int, int], mode: int, capacity: int):
    FuseOSError = mfusepy.FuseOSError

    class Card(mfusepy.Operations):
        use_ns = True

        def __init__(self):
            self.mutex = threading.Lock()
            self.next_ino = 2
            self.root = _Node(1, stat.S_IFDIR | mode, *owner)
            self.handles: dict[int, _Node] = {}
            self.next_fh = 1
            self.stalls: dict[str, tuple[float, int | None]] = {}
            self.counts = {"writes": 0, "syncs": 0, "dir_syncs": 0, "power_cuts": 0}
            self.counts |= {"stalled_writes": 0, "stalled_syncs": 0}  # operations held up

        # -- helpers (called with the lock held) --

        def _lookup(self, path: str) -> _Node:
            node = self.root
            for part in path.strip("/").split("/"):
                if not part:
                    continue
                if not node.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                node = node.entries.get(part)
                if node is None:
                    raise FuseOSError(errno.ENOENT)
            return node

        def _parent(self, path: str) -> tuple[_Node, str]:
            head, _, name = path.rstrip("/").rpartition("/")
            parent = self._lookup(head or "/")
            if not parent.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            return parent, name

        def _new(self, mode: int) -> _Node:
            uid, gid, _ = mfusepy.fuse_get_context()
            node = _Node(self.next_ino, mode, uid, gid)
            self.next_ino += 1
            return node

        def _handle(self, node: _Node) -> int:
            fh = self.next_fh
            self.next_fh += 1
            self.handles[fh] = node
            return fh

        def _held(self, fh: int) -> _Node:
            node = self.handles.get(fh)
            if node is None:  # opened before a power cut
                raise FuseOSError(errno.EIO)
            return node

        def _used(self) -> int:
            total, seen, todo = 0, set(), [self.root]
            while todo:
                node = todo.pop()
                if node.ino in seen:
                    continue
                seen.add(node.ino)
                total += 4096 if node.is_dir else len(node.data)
                todo.extend(node.entries.values())
            return total

        def _stall(self, what: str) -> None:
            with self.mutex:
                seconds, left = self.stalls.get(what, (0.0, None))
                if left is not None:
                    self.stalls[what] = (seconds, left - 1) if left > 1 else (0.0, None)
                if seconds > 0:
                    self.counts[f"stalled_{what}s"] += 1
            if seconds > 0:
                time.sleep(seconds)  # outside the lock: other files are not held up

        # -- the control socket --

        def control(self, request: dict) -> dict:
            op = request.get("op")
            with self.mutex:
                if op == "ping":
                    return {"ok": True}
                if op == "stats":
                    return dict(self.counts)
                if op == "stall":
                    if request["what"] not in ("write", "sync"):
                        return {"error": f"stall what: 'write' or 'sync', got {request['what']!r}"}
                    self.stalls[request["what"]] = (float(request["seconds"]), request["count"])
                    return {"ok": True}
                if op == "power_cut":
                    lost = self._unsynced()
                    self._power_cut()
                    return {"lost_bytes": lost}
            return {"error": f"unknown request {op!r}"}

        def _files(self, durable: bool) -> dict[int, _Node]:
            found, todo = {}, [self.root]
            while todo:
                node = todo.pop()
                if node.ino in found:
                    continue
                found[node.ino] = node
                todo.extend((node.durable_entries if durable else node.entries).values())
            return {ino: node for ino, node in found.items() if not node.is_dir}

        def _unsynced(self) -> int:
            """Bytes a cut would take: a file's tail written since its last sync (all of
            it where the sync is not a prefix of it, or where its name is not synced)."""
            kept = self._files(durable=True)
            lost = 0
            for ino, node in self._files(durable=False).items():
                synced = node.durable if ino in kept else b""
                appended = node.data[: len(synced)] == synced
                lost += len(node.data) - len(synced) if appended else len(node.data)
            return lost

        def _power_cut(self) -> None:
            self.handles.clear()
            self.counts["power_cuts"] += 1
            seen, todo = set(), [self.root]
            while todo:
                node = todo.pop()
                if node.ino in seen:
                    continue
                seen.add(node.ino)
                if node.is_dir:
                    node.entries = dict(node.durable_entries)
                    todo.extend(node.entries.values())
                else:
                    node.data = bytearray(node.durable)

        # -- file system operations --

        def getattr(self, path, fh=None):
            with self.mutex:
                return self._lookup(path).attrs()

        def readdir(self, path, fh):
            with self.mutex:
                node = self._lookup(path)
                if not node.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                # With use_ino, an entry's inode number must be given: glibc skips ino 0.
                return [
                    (name, {"st_mode": child.mode, "st_ino": child.ino}, 0)
                    for name, child in ((".", node), ("..", node), *node.entries.items())
                ]

        def mkdir(self, path, mode):
            with self.mutex:
                parent, name = self._parent(path)
                if name in parent.entries:
                    raise FuseOSError(errno.EEXIST)
                parent.entries[name] = self._new(stat.S_IFDIR | mode)
                parent.mtime = parent.ctime = time.time_ns()
            return 0

        def rmdir(self, path):
            with self.mutex:
                parent, name = self._parent(path)
                node = self._lookup(path)
                if not node.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                if node.entries:
                    raise FuseOSError(errno.ENOTEMPTY)
                del parent.entries[name]
                parent.mtime = parent.ctime = time.time_ns()
            return 0

        def create(self, path, mode, flags):
            with self.mutex:
                parent, name = self._parent(path)
                node = parent.entries.get(name)
                if node is not None and flags & os.O_EXCL:
                    raise FuseOSError(errno.EEXIST)
                if node is None:
                    node = parent.entries[name] = self._new(stat.S_IFREG | (mode & 0o7777))
                    parent.mtime = parent.ctime = time.time_ns()
                elif flags & os.O_TRUNC:
                    node.data = bytearray()
                return self._handle(node)

        def open(self, path, flags):
            with self.mutex:
                node = self._lookup(path)
                if flags & os.O_TRUNC:
                    node.data = bytearray()
                return self._handle(node)

        def read(self, path, size, offset, fh):
            with self.mutex:
                return bytes(self._held(fh).data[offset : offset + size])

        def write(self, path, data, offset, fh):
            self._stall("write")
            with self.mutex:
                node = self._held(fh)
                grows = max(0, offset + len(data) - len(node.data))
                if grows and self._used() + grows > capacity:
                    raise FuseOSError(errno.ENOSPC)
                if offset > len(node.data):
                    node.data.extend(bytes(offset - len(node.data)))
                node.data[offset : offset + len(data)] = data
                node.mtime = node.ctime = time.time_ns()
                self.counts["writes"] += 1
                return len(data)

        def truncate(self, path, length, fh=None):
            with self.mutex:
                node = self._held(fh) if fh else self._lookup(path)
                if length < len(node.data):
                    del node.data[length:]
                else:
                    node.data.extend(bytes(length - len(node.data)))
                node.mtime = node.ctime = time.time_ns()
            return 0

        def fsync(self, path, datasync, fh):
            self._stall("sync")
            with self.mutex:
                node = self._held(fh)
                node.durable = bytes(node.data)
                self.counts["syncs"] += 1
            return 0

        def fsyncdir(self, path, datasync, fh):
            self._stall("sync")
            with self.mutex:
                node = self._lookup(path)
                node.durable_entries = dict(node.entries)
                self.counts["dir_syncs"] += 1
            return 0

        def release(self, path, fh):
            with self.mutex:
                self.handles.pop(fh, None)
            return 0

        def flush(self, path, fh):
            return 0  # close() is not a sync

        def unlink(self, path):
            with self.mutex:
                parent, name = self._parent(path)
                node = self._lookup(path)
                if node.is_dir:
                    raise FuseOSError(errno.EISDIR)
                del parent.entries[name]
                parent.mtime = parent.ctime = time.time_ns()
            return 0

        def rename(self, old, new):
            with self.mutex:
                src_parent, src_name = self._parent(old)
                dst_parent, dst_name = self._parent(new)
                node = self._lookup(old)
                target = dst_parent.entries.get(dst_name)
                if target is not None and target is not node:
                    if target.is_dir and not node.is_dir:
                        raise FuseOSError(errno.EISDIR)
                    if node.is_dir and not target.is_dir:
                        raise FuseOSError(errno.ENOTDIR)
                    if target.is_dir and target.entries:
                        raise FuseOSError(errno.ENOTEMPTY)
                del src_parent.entries[src_name]
                dst_parent.entries[dst_name] = node
                now = time.time_ns()
                src_parent.mtime = dst_parent.mtime = node.ctime = now
            return 0

        def chmod(self, path, mode):
            with self.mutex:
                node = self._lookup(path)
                node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
                node.ctime = time.time_ns()
            return 0

        def chown(self, path, uid, gid):
            with self.mutex:
                node = self._lookup(path)
                if uid != -1:
                    node.uid = uid
                if gid != -1:
                    node.gid = gid
                node.ctime = time.time_ns()
            return 0

        def utimens(self, path, times=None):
            with self.mutex:
                node = self._lookup(path)
                node.atime, node.mtime = times or (time.time_ns(), time.time_ns())
            return 0

        def statfs(self, path):
            with self.mutex:
                free = max(0, capacity - self._used()) // 4096
            return {
                "f_bsize": 4096,
                "f_frsize": 4096,
                "f_blocks": capacity // 4096,
                "f_bfree": free,
                "f_bavail": free,
                "f_files": 1 << 20,
                "f_ffree": (1 << 20) - self.next_ino,
                "f_namemax": 255,
            }

    return Card()


def _serve_control(card, path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rw") as stream:
            for line in stream:
                try:
                    reply = card.control(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    reply = {"error": f"bad request {line.strip()!r}: {exc}"}
                stream.write(json.dumps(reply) + "\n")
                stream.flush()


def serve(argv: list[str]) -> None:
    import mfusepy

    parser = argparse.ArgumentParser(prog="sdcard.py serve")
    parser.add_argument("mountpoint")
    parser.add_argument("control")
    parser.add_argument("--owner", default="0:0")
    parser.add_argument("--mode", default="755")
    parser.add_argument("--capacity-mb", type=int, default=CAPACITY_MB)
    args = parser.parse_args(argv)
    uid, gid = (int(x) for x in args.owner.split(":"))
    card = _make_operations(mfusepy, (uid, gid), int(args.mode, 8), args.capacity_mb << 20)
    threading.Thread(target=_serve_control, args=(card, Path(args.control)), daemon=True).start()
    mfusepy.FUSE(
        card,
        args.mountpoint,
        foreground=True,
        fsname="sdcard",
        allow_other=True,  # the camera may run as another user (the virtual Pi's hatcam)
        default_permissions=True,  # the kernel checks modes and owners, as on ext4
        # No caching in the kernel: after a power cut, reads must see what the card holds.
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        direct_io=True,
        use_ino=True,
    )


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: sdcard.py serve MOUNTPOINT CONTROL_SOCKET [--owner UID:GID] ...")
    serve(sys.argv[2:])
