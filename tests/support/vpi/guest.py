"""A guest's life: its per-run identity, booting it on a fresh overlay under a supervisor
that restarts systemd-nspawn when the guest reboots, SSH into it, pulling its power,
booting it again, and tearing everything down by PID.

Everything it learns about a run it hands to ``state`` (the one owner of state.json).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import ROOT
from ..procs import alive, children, reap, wait_for
from . import state as vstate
from .host import foreign, host_arch, log, require_root, run
from .network import host_nameservers, setup_network, teardown_network
from .qemu import install_native_nm, install_qemu_dropins
from .rootfs import build, lower_dir

# The supervisor runs as its own process (it outlives `up`): this package's CLI.
SUPERVISE = [sys.executable, "-m", "tests.support.vpi", "_supervise"]


def prepare_guest(state: dict, merged: Path, rdir: Path) -> None:
    """Per-run identity: SSH host keys, the client key, and the guest's network profile."""
    key = rdir / "id_ed25519"
    run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"vpi-{state['name']}",
            "-f",
            str(key),
        ]
    )
    (merged / "etc/ssh").mkdir(parents=True, exist_ok=True)
    run(["ssh-keygen", "-q", "-A", "-f", str(merged)])
    ssh_dir = merged / "home/pi/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text((rdir / "id_ed25519.pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    pi_uid = pi_gid = 1000
    for line in (merged / "etc/passwd").read_text().splitlines():
        if line.startswith("pi:"):
            pi_uid, pi_gid = int(line.split(":")[2]), int(line.split(":")[3])
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, pi_uid, pi_gid)
    host_pub = (merged / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    (rdir / "known_hosts").write_text(f"{state['ip']} {host_pub[0]} {host_pub[1]}\n")
    # Like the profile Raspberry Pi Imager writes ("preconfigured"), but wired.
    profile = merged / "etc/NetworkManager/system-connections/preconfigured.nmconnection"
    profile.parent.mkdir(parents=True, exist_ok=True)
    profile.write_text(
        "[connection]\nid=preconfigured\nuuid=6e1d4b8a-8a8d-4c5e-9f5e-0f1c2d3e4f50\n"
        "type=ethernet\ninterface-name=host0\nautoconnect=true\n\n"
        f"[ipv4]\nmethod=manual\naddress1={state['ip']}/24,{state['subnet']}.1\n"
        f"dns={';'.join(host_nameservers())};\n\n[ipv6]\nmethod=disabled\n"
    )
    profile.chmod(0o600)


def nspawn_command(state: dict) -> list[str]:
    cmd = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        "--register=no",
        "--keep-unit",
        f"--machine={state['name']}",
        f"--directory={state['merged']}",
        f"--network-bridge={state['bridge']}",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        "--console=read-only",
    ]
    if state.get("foreign"):
        # nspawn's default SIGRTMIN+3 (halt) reaches systemd under qemu as another
        # signal (qemu shifts the real-time ones), which leaves the guest in rescue
        # mode; the host's SIGRTMIN+6 arrives as SIGRTMIN+4, a clean poweroff.
        cmd.append("--kill-signal=SIGRTMIN+6")
    for host, guest in state.get("binds", []):
        cmd.append(f"--bind={host}:{guest}")
    return cmd


def supervise(name: str) -> int:
    """Run nspawn until the guest powers off; restart it when the guest reboots (133)."""
    rdir = vstate.run_dir(name)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `down` signals nspawn, not us
    boots = 0
    while True:
        state = vstate.load(name)
        if (rdir / "stop").exists():
            return 0
        proc = subprocess.Popen(nspawn_command(state), stdin=subprocess.DEVNULL)
        boots += 1
        vstate.update(name, nspawn_pid=proc.pid, boots=boots)
        rc = proc.wait()
        print(f"vpi: nspawn exited with status {rc}", flush=True)
        if rc != 133 or (rdir / "stop").exists():
            vstate.update(name, nspawn_exit=rc, nspawn_pid=None)
            return 0
        time.sleep(0.5)


def start_supervisor(name: str) -> subprocess.Popen:
    """The supervisor in a session of its own, its output appended to console.log."""
    with open(vstate.run_dir(name) / "console.log", "ab") as console:
        return subprocess.Popen(
            [*SUPERVISE, name],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def ssh_base(state: dict) -> list[str]:
    rdir = vstate.run_dir(state["name"])
    return [
        "ssh",
        "-i",
        str(rdir / "id_ed25519"),
        "-o",
        f"UserKnownHostsFile={rdir / 'known_hosts'}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=3",
        "-o",
        "LogLevel=ERROR",
        f"pi@{state['ip']}",
    ]


def wait_for_ssh(name: str, timeout: float) -> None:
    state = vstate.load(name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not vstate.running(name):
            raise RuntimeError("the guest stopped while booting; see console.log")
        r = run(
            [*ssh_base(state), "systemctl is-system-running --wait >/dev/null; true"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        if r.returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"no SSH on {state['ip']} within {timeout:.0f} s; see console.log")


def up(
    name: str,
    subnet: str = "10.213.7",
    arch: str | None = None,
    timeout: float | None = None,
    caches: list[str] | None = None,
) -> dict:
    """Boot guest ``name`` on a fresh overlay and wait for its SSH; its state. ``caches``
    are HOSTDIR:GUESTDIR binds that survive the run (apt archives, pip)."""
    require_root()
    if not vstate.NAME_RE.match(name):
        sys.exit("vpi: NAME must be 1-11 lowercase letters/digits, starting with a letter")
    if not re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})", subnet):
        sys.exit("vpi: --subnet must be three octets such as 10.213.7")
    rdir = vstate.run_dir(name)
    if vstate.running(name):
        sys.exit(f"vpi: {name} is already running (vpi down {name})")
    down(name)  # leftovers of a run that was killed
    arch = arch or host_arch()
    tar = build(arch)
    timeout = timeout or (600 if foreign(arch) else 90)
    lower = lower_dir(tar)
    rdir.mkdir(parents=True)
    merged, upper, work = rdir / "merged", rdir / "upper", rdir / "work"
    for d in (merged, upper, work):
        d.mkdir()
    binds = []
    for spec in caches or []:
        host, guest = spec.split(":", 1)
        Path(host).mkdir(parents=True, exist_ok=True)
        binds.append([str(Path(host).resolve()), guest])
    state = {
        "name": name,
        "subnet": subnet,
        "ip": f"{subnet}.2",
        "host_ip": f"{subnet}.1",
        "bridge": f"vpi-{name}",
        "nft_table": f"vpi_{name}",
        "merged": str(merged),
        "user": "pi",
        "ssh_key": str(rdir / "id_ed25519"),
        "known_hosts": str(rdir / "known_hosts"),
        "binds": binds,
        "arch": arch,
        "foreign": foreign(arch),
        "created": [],
        "supervisor_pid": None,
        "nspawn_pid": None,
    }
    vstate.create(name, state)
    try:
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={lower},upperdir={upper},workdir={work}",
                str(merged),
            ]
        )
        state["created"].append("mount")
        vstate.update(name, created=state["created"])
        prepare_guest(state, merged, rdir)
        if state["foreign"]:
            install_qemu_dropins(merged)
            install_native_nm(merged)
        try:
            setup_network(state)
        finally:  # down() undoes what was made, also when a later step failed
            before = state.get("ip_forward_before")
            vstate.update(name, created=state["created"], ip_forward_before=before)
        started = time.monotonic()
        vstate.update(name, supervisor_pid=start_supervisor(name).pid)
        wait_for_ssh(name, timeout)
        log(f"{name} is up at {state['ip']} after {time.monotonic() - started:.1f} s")
    except BaseException:
        log(f"{name} failed to start; cleaning up")
        tail = rdir / "console.log"
        if tail.exists():
            sys.stderr.write(tail.read_text(errors="replace")[-3000:])
        down(name)
        raise
    return vstate.load(name)


def down(name: str, timeout: float | None = None) -> bool:
    """Stop the guest and undo everything `up` did; safe to call repeatedly. False if
    there was nothing to stop."""
    rdir = vstate.run_dir(name)
    if not rdir.exists():
        return False
    (rdir / "stop").touch()
    state = vstate.load(name)
    timeout = timeout or (180 if state.get("foreign") else 60)  # emulated: slow shutdown
    state.setdefault("name", name)
    sup = state.get("supervisor_pid")
    nspawn = state.get("nspawn_pid")
    if alive(nspawn):
        # nspawn turns SIGTERM into an orderly poweroff of the guest.
        os.kill(nspawn, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (alive(sup) or alive(nspawn)) and time.monotonic() < deadline:
        time.sleep(0.2)
        nspawn = vstate.load(name).get("nspawn_pid") or nspawn
    if alive(nspawn):
        # The guest did not power off in time. Its init (nspawn's child) goes first:
        # killing the init of a PID namespace kills everything in it, whereas killing
        # only nspawn would leave the guest's processes running, orphaned.
        for child in children(nspawn):
            log(f"killing the guest's init, PID {child}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
    for pid in (nspawn, sup):
        if alive(pid):
            log(f"killing PID {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in (nspawn, sup):  # reap if they are our children
        reap(pid)
    merged = rdir / "merged"
    if "mount" in state.get("created", []) or os.path.ismount(merged):
        for _ in range(20):
            if not os.path.ismount(merged):
                break
            if run(["umount", str(merged)], check=False, stderr=subprocess.DEVNULL).returncode != 0:
                time.sleep(0.5)
        if os.path.ismount(merged):
            run(["umount", "--lazy", str(merged)], check=False)
    if state.get("bridge"):
        teardown_network(state)
    shutil.rmtree(rdir, ignore_errors=True)
    return True


def power_cut(name: str, timeout: float = 30) -> float:
    """Pull the battery: SIGKILL the guest's systemd-nspawn and its PID 1 at once.

    Killing nspawn alone leaves the guest's systemd and every daemon running,
    orphaned; killing PID 1 of the guest's PID namespace makes the kernel kill every
    process in it at the same moment, with no shutdown. The supervisor sees a status
    other than 133 and exits. Returns the time of the kill (time.time())."""
    state = vstate.load(name)
    nspawn, sup = state.get("nspawn_pid"), state.get("supervisor_pid")
    if not alive(nspawn):
        raise RuntimeError(f"{name}: no running systemd-nspawn to kill")
    init = vstate.guest_init(name)
    for pid in (init, nspawn):
        os.kill(pid, signal.SIGKILL)
    killed = time.time()

    def gone() -> bool:
        reap(sup)  # ours if boot_again() started it
        return not alive(nspawn) and not alive(sup) and not alive(init)

    wait_for(gone, timeout, "the guest's processes, nspawn and its supervisor to go", 0.1)
    # The host end of the guest's veth normally goes with its network namespace, but
    # the kernel may free that late; the next boot needs the name, so delete it.
    veth = f"vb-{name}"[:15]
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: _link_gone(veth), 3, f"{veth} to go", 0.1)
    if not _link_gone(veth):
        run(["ip", "link", "del", veth], check=False, stderr=subprocess.DEVNULL)
    return killed


def _link_gone(link: str) -> bool:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return run(["ip", "link", "show", link], check=False, **quiet).returncode != 0


def boot_again(name: str, timeout: float = 120) -> None:
    """Power on again after power_cut(): a new supervisor boots nspawn on the same
    overlay (the upper dir, the SD card, survived), as `up` does. nspawn binds the
    guest's root with the mounts under it: a test SD card mounted on the host under
    ``merged`` meanwhile is there in the guest."""
    state = vstate.load(name)
    if alive(state.get("supervisor_pid")) or alive(state.get("nspawn_pid")):
        raise RuntimeError(f"{name} is still running")
    vstate.update(name, drop=("nspawn_exit",), nspawn_pid=None)
    vstate.update(name, supervisor_pid=start_supervisor(name).pid)
    wait_for(lambda: vstate.load(name).get("nspawn_pid"), 30, "systemd-nspawn to start", 0.1)
    wait_for_ssh(name, timeout)


def inventory_line(name: str) -> str:
    state = vstate.load(name)
    return (
        f"{name} ansible_host={state['ip']} ansible_user=pi "
        f"ansible_ssh_private_key_file={state['ssh_key']} "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={state['known_hosts']} "
        "-o StrictHostKeyChecking=yes'"
    )
