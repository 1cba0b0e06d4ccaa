"""The virtual Pi's command line: ``python -m tests.support.vpi`` from the repository root.

build [--force] [--arch A]          build (or reuse) the cached root filesystem tarball
up NAME [--subnet 10.213.7] [--arch A] [--cache HOSTDIR:GUESTDIR]...
                                    boot a guest on a fresh overlay, wait for SSH;
                                    prints its state as JSON
down NAME                           stop it and clean up everything it set up
status NAME                         print its state as JSON (exit 1 if not running)
ssh NAME [COMMAND...]               SSH into it as user pi
inventory NAME                      print an Ansible inventory line for it
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from . import guest
from . import state as vstate
from .host import log, require_root
from .rootfs import build

ARCH_HELP = "Debian architecture, e.g. arm64 or armhf under qemu-user (default: the host's)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vpi", description="A throwaway virtual Raspberry Pi.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build or reuse the cached root filesystem")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument("--arch", help=ARCH_HELP)
    u = sub.add_parser("up", help="boot a guest and wait for SSH")
    u.add_argument("name")
    u.add_argument("--subnet", default="10.213.7", help="first three octets (default %(default)s)")
    u.add_argument(
        "--timeout", type=float, help="seconds to wait for SSH (default 90; 600 under qemu)"
    )
    u.add_argument("--arch", help=ARCH_HELP)
    u.add_argument(
        "--cache",
        action="append",
        metavar="HOSTDIR:GUESTDIR",
        help="bind a host cache directory into the guest (repeatable), e.g. "
        "apt archives; survives the run",
    )
    for verb, text in (
        ("down", "stop the guest and clean up"),
        ("status", "print the state as JSON"),
        ("inventory", "an Ansible inventory line for the guest"),
        ("_supervise", None),
    ):
        sub.add_parser(verb, help=text).add_argument("name")
    x = sub.add_parser("ssh", help="ssh into the guest as pi")
    x.add_argument("name")
    x.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    if args.cmd == "build":
        build(args.arch, args.force)
    elif args.cmd == "up":
        state = guest.up(args.name, args.subnet, args.arch, args.timeout, args.cache)
        print(json.dumps(state, indent=1))
    elif args.cmd == "down":
        require_root()
        existed = guest.down(args.name)
        log(f"{args.name} is down" if existed else f"{args.name} was not running")
    elif args.cmd == "status":
        state = vstate.load(args.name)
        state["running"] = vstate.running(args.name)
        print(json.dumps(state, indent=1))
        return 0 if state["running"] else 1
    elif args.cmd == "_supervise":
        return guest.supervise(args.name)
    else:
        state = vstate.load(args.name)
        if not state:
            sys.exit(f"vpi: {args.name} is not running")
        if args.cmd == "ssh":
            return subprocess.call([*guest.ssh_base(state), *args.command])
        print(guest.inventory_line(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
