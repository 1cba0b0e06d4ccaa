#!/usr/bin/env python3
"""A throwaway virtual Raspberry Pi: Debian bookworm booted with systemd-nspawn.

    vpi.py build [--force] [--arch A]   build (or reuse) the cached root filesystem tarball
    vpi.py up NAME [--subnet 10.213.7] [--arch A]
                                        boot a guest on a fresh overlay, wait for SSH
    vpi.py down NAME                    stop it and clean up everything it set up
    vpi.py status NAME                  print its state as JSON (exit 1 if not running)
    vpi.py ssh NAME [COMMAND...]        SSH into it as user pi
    vpi.py inventory NAME               print an Ansible inventory line for it

The guest is made Pi-OS-like: user ``pi`` with passwordless sudo, an SSH server
whose host keys and the client key are generated per run, NetworkManager (which
configures the guest's ethernet from a keyfile, as a Pi Imager-configured Pi
does), ``/boot/firmware/config.txt`` and ``cmdline.txt`` as Pi OS ships them,
and the host's extra CA certificates (for TLS-inspecting proxies).

It boots with ``systemd-nspawn -b`` in its own network namespace: the host side
of its veth is attached to a bridge ``vpi-NAME`` holding ``SUBNET.1/24``; the
guest is ``SUBNET.2``. A dedicated nftables table ``ip vpi_NAME`` masquerades
its traffic so its apt and pip reach the mirrors. Exit code 133 (the guest asked
to reboot) restarts nspawn, so ``ansible.builtin.reboot`` works. ``down`` stops
the guest by PID, unmounts the overlay, deletes the bridge and the nftables table
and restores ``net.ipv4.ip_forward``; ``up`` does the same if it fails.

``--arch`` (default: the host's, e.g. amd64) builds and boots another Debian
architecture, ``arm64`` or ``armhf`` as on a Raspberry Pi, under qemu-user-static
through binfmt_misc: the host's qemu-user-static and binfmt-support are installed
when missing and the qemu entry is (re-)registered with the F flag (the interpreter
works inside the container without being copied in) and the C flag (sudo, setuid).
Such a guest gets drop-ins for what qemu-user cannot emulate (``QEMU_DROPINS``)
and the host's build of NetworkManager (qemu-user has no NETLINK_GENERIC, which
NetworkManager needs). Its root filesystem is cached in its own tarball; it boots
about 6x slower and is stopped with SIGRTMIN+6, which qemu hands the guest's systemd as a poweroff.

Only the standard library is used; run it as root. Everything lives under
``.cache/vpi`` of the repository (override with ``VPI_CACHE``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VPI_CACHE", ROOT / ".cache" / "vpi"))
RUNS = CACHE / "run"
SUITE = "bookworm"
MIRROR = os.environ.get("VPI_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("VPI_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")
NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,10}$")  # vpi-NAME must fit in 15 characters
HOST_PACKAGES = ["mmdebstrap", "systemd-container", "nftables", "iproute2", "openssh-client"]
# Debian architecture -> qemu-user name (its binfmt entry is qemu-<name>).
QEMU_ARCHES = {"arm64": "aarch64", "armhf": "arm", "armel": "arm"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")

# Roughly what Pi OS Lite (bookworm) has that matters to the roles.
PACKAGES = [
    "systemd",
    "systemd-sysv",
    "systemd-timesyncd",
    "dbus",
    "udev",
    "openssh-server",
    "sudo",
    "network-manager",
    "python3",
    "ca-certificates",
    "iproute2",
    "iputils-ping",
    "procps",
    "less",
    "nano",
    "curl",
    "apt-utils",
]

# /boot/firmware/config.txt as Pi OS Lite bookworm ships it.
CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Additional overlays and parameters are documented
# /boot/firmware/overlays/README

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[all]
"""

CMDLINE_TXT = (
    "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet\n"
)


def log(msg: str) -> None:
    print(f"vpi: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    # stdout is kept for the JSON `up` prints; tools talk on stderr.
    kw.setdefault("stdout", sys.stderr)
    return subprocess.run(cmd, check=check, text=True, **kw)


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("vpi: must run as root (mounts, network namespaces, nftables)")


def ensure_host_tools() -> None:
    """Install what a fresh Debian host lacks (mmdebstrap, systemd-nspawn, nft, ip, ssh)."""
    tools = {
        "mmdebstrap": "mmdebstrap",
        "systemd-nspawn": "systemd-container",
        "nft": "nftables",
        "ip": "iproute2",
        "ssh": "openssh-client",
    }
    missing = sorted({pkg for tool, pkg in tools.items() if not shutil.which(tool)})
    if missing:
        log(f"installing host packages: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", *missing], env=env)


# ---------------------------------------------------------------- build


def extra_cas() -> list[Path]:
    return sorted(EXTRA_CA_DIR.glob("**/*.crt")) if EXTRA_CA_DIR.is_dir() else []


def host_arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, text=True, stdout=subprocess.PIPE
    ).stdout.strip()


def foreign(arch: str) -> bool:
    return arch != host_arch()


def ensure_binfmt(arch: str) -> None:
    """Make the host run ARCH binaries: qemu-user-static, its binfmt entry with flags F and C."""
    if not foreign(arch):
        return
    if arch not in QEMU_ARCHES:
        sys.exit(f"vpi: --arch {arch}: only {', '.join(QEMU_ARCHES)} (or the host's) are known")
    qemu = QEMU_ARCHES[arch]
    if not (BINFMT / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)])
    if not shutil.which(f"qemu-{qemu}-static") or not shutil.which("update-binfmts"):
        log("installing host packages: qemu-user-static binfmt-support")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(
            [
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "qemu-user-static",
                "binfmt-support",
            ],
            env=env,
        )
    entry = BINFMT / f"qemu-{qemu}"
    if not entry.exists():
        run(["update-binfmts", "--enable", f"qemu-{qemu}"], check=False)
    if not entry.exists():
        sys.exit(f"vpi: no binfmt_misc entry {entry} after installing qemu-user-static")
    fields: dict[str, str] = {}
    lines = entry.read_text().splitlines()
    for line in lines[1:]:
        key, _, value = line.partition(" ")
        fields[key.rstrip(":")] = value.strip()
    flags = fields.get("flags", "")
    if lines[0] == "enabled" and "F" in flags and "C" in flags:
        return
    # Re-register the same entry with F (fix binary: the interpreter is opened now, so
    # it works inside the container) and C (credentials of the binary: setuid sudo).
    new_flags = "".join(sorted(set(flags) | {"F", "C"}))
    esc = lambda hexs: "".join(f"\\x{hexs[i : i + 2]}" for i in range(0, len(hexs), 2))  # noqa: E731
    spec = (
        f":qemu-{qemu}:M:{fields.get('offset', '0')}:{esc(fields['magic'])}:"
        f"{esc(fields['mask'])}:{fields['interpreter']}:{new_flags}"
    )
    log(f"re-registering binfmt qemu-{qemu} with flags {new_flags} (was {flags or 'none'})")
    entry.write_text("-1\n")
    (BINFMT / "register").write_text(spec + "\n")
    text = entry.read_text()
    if not text.startswith("enabled") or "C" not in text.split("flags:")[1].split()[0]:
        sys.exit(f"vpi: could not register {entry} with flags F and C:\n{text}")


# What qemu-user cannot emulate, switched off by drop-ins in a foreign-architecture
# guest only (written at `up`; the real units are never changed): LoadCredential=
# (the credentials mount), PrivateNetwork=yes, and PrivateUsers=yes (qemu-user cannot
# set up a user namespace: "Failed to set up user namespacing: Invalid argument").
# Units the playbook installs later are listed too; a drop-in for an absent unit is
# harmless. SystemCallFilter= and MemoryDenyWriteExecute= work as they are.
QEMU_DROPINS = {
    "systemd-sysctl.service": "LoadCredential=",
    "systemd-sysusers.service": "LoadCredential=",
    "systemd-tmpfiles-setup.service": "LoadCredential=",
    "systemd-tmpfiles-setup-dev.service": "LoadCredential=",
    "systemd-hostnamed.service": "PrivateNetwork=no",
    "systemd-localed.service": "PrivateNetwork=no",
    "systemd-timedated.service": "PrivateNetwork=no",
    "systemd-logind.service": "PrivateNetwork=no",
    "redis-server.service": "PrivateUsers=no",
    "hatcam-camera.service": "PrivateUsers=no",
    "hatcam-upload.service": "PrivateUsers=no",
}


def guest_package_version(root: Path, package: str) -> str | None:
    status = (root / "var/lib/dpkg/status").read_text()
    for block in status.split("\n\n"):
        if f"Package: {package}\n" in block + "\n":
            m = re.search(r"^Version: (\S+)", block, re.M)
            return m.group(1) if m else None
    return None


def native_nm_bundle(version: str) -> Path:
    """The host-architecture NetworkManager of VERSION with the libraries it loads (cached).

    qemu-user refuses NETLINK_GENERIC sockets, so an emulated NetworkManager aborts at
    start (nm-linux-platform.c: assertion failed). The host's build of the same version
    runs natively inside the foreign guest (the kernel runs host binaries as they are),
    beside the guest's own package, config, D-Bus policy and nmcli.
    """
    bundle = CACHE / "native-nm" / f"{version}-{host_arch()}"
    if (bundle / ".complete").exists():
        return bundle
    log(f"preparing a native NetworkManager {version} for emulated guests")
    work = CACHE / "native-nm" / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(bundle, ignore_errors=True)
    (work / "debs").mkdir(parents=True)
    deps = subprocess.run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            f"network-manager={version}",
        ],
        check=True,
        text=True,
        stdout=subprocess.PIPE,
    ).stdout.split("\n")
    libs = sorted({d for d in deps if re.fullmatch(r"(lib[a-z0-9.+-]+|zlib1g)", d)})
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(
        ["apt-get", "download", "-qq", f"network-manager={version}", *libs],
        cwd=work / "debs",
        env=env,
        stderr=subprocess.DEVNULL,
    )
    for deb in sorted((work / "debs").glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(work / "root")])
    bundle.mkdir(parents=True)
    shutil.copy2(work / "root/usr/sbin/NetworkManager", bundle / "NetworkManager")
    root = work / "root"
    for libdir in [
        *root.glob("lib/*-linux-gnu*"),
        *root.glob("usr/lib/*-linux-gnu*"),
        root / "lib64",
    ]:
        for so in libdir.glob("*.so*"):
            if not (bundle / so.name).exists():
                shutil.copy2(so, bundle / so.name, follow_symlinks=True)
    loader = next(bundle.glob("ld-linux*.so*"))
    listed = subprocess.run(
        [str(loader), "--library-path", str(bundle), "--list", str(bundle / "NetworkManager")],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    if listed.returncode != 0 or "not found" in listed.stdout:
        sys.exit(f"vpi: the native NetworkManager bundle is incomplete:\n{listed.stdout}")
    needed = {}
    for line in listed.stdout.splitlines():
        if "=>" in line:
            soname, path = line.split()[0], line.split("=>")[1].split()[0]
            needed[soname] = Path(path)
    for soname, path in needed.items():  # found on the host rather than in the debs
        if not (bundle / soname).exists():
            shutil.copy2(path, bundle / soname, follow_symlinks=True)
    for so in bundle.glob("*.so*"):  # keep what NetworkManager loads and the loader
        if so.name not in needed and so != loader:
            so.unlink()
    (bundle / "loader").symlink_to(loader.name)
    shutil.rmtree(work, ignore_errors=True)
    (bundle / ".complete").touch()
    return bundle


def install_native_nm(merged: Path) -> None:
    """Run the host's NetworkManager in a foreign guest: files in /usr/local, a drop-in."""
    version = guest_package_version(merged, "network-manager")
    if not version:
        return
    bundle = native_nm_bundle(version)
    dest = merged / "usr/local/lib/vpi-native-nm"
    shutil.copytree(bundle, dest, symlinks=True, dirs_exist_ok=True)
    dropin = merged / "etc/systemd/system/NetworkManager.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "vpi-native.conf").write_text(
        "# vpi: qemu-user has no NETLINK_GENERIC; run the host's build of the same version.\n"
        "[Service]\nExecStart=\n"
        "ExecStart=/usr/local/lib/vpi-native-nm/loader --library-path "
        "/usr/local/lib/vpi-native-nm /usr/local/lib/vpi-native-nm/NetworkManager --no-daemon\n"
    )


def install_qemu_dropins(merged: Path) -> None:
    for unit, line in QEMU_DROPINS.items():
        d = merged / "etc/systemd/system" / f"{unit}.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / "vpi-qemu-user.conf").write_text(
            "# vpi: not possible under qemu-user (test guest only)\n[Service]\n" + line + "\n"
        )


def customize_script() -> str:
    """Shell run by mmdebstrap on the finished tree ($1 is its root)."""
    return f"""set -eu
R="$1"
chroot "$R" useradd -m -s /bin/bash -G sudo,video,adm,dialout,plugdev pi
echo 'pi ALL=(ALL) NOPASSWD: ALL' > "$R/etc/sudoers.d/010_pi-nopasswd"
chmod 0440 "$R/etc/sudoers.d/010_pi-nopasswd"
echo raspberrypi > "$R/etc/hostname"
printf '127.0.0.1\\tlocalhost\\n::1\\t\\tlocalhost ip6-localhost ip6-loopback\\n' > "$R/etc/hosts"
printf '127.0.1.1\\traspberrypi\\n' >> "$R/etc/hosts"
mkdir -p "$R/boot/firmware"
cat > "$R/boot/firmware/config.txt" <<'EOF'
{CONFIG_TXT}EOF
printf '%s' '{CMDLINE_TXT.strip()}' > "$R/boot/firmware/cmdline.txt"
echo >> "$R/boot/firmware/cmdline.txt"
# The host's extra CAs (TLS-inspecting proxies); pip in a venv must use the system bundle.
mkdir -p "$R/usr/local/share/ca-certificates/vpi-host"
for f in {" ".join(str(p) for p in extra_cas()) or "NONE"}; do
  [ -f "$f" ] && cp "$f" "$R/usr/local/share/ca-certificates/vpi-host/"
done
chroot "$R" update-ca-certificates >/dev/null
printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > "$R/etc/pip.conf"
# Host keys are generated per run by `vpi.py up`.
rm -f "$R"/etc/ssh/ssh_host_*
# NetworkManager manages the guest's ethernet from a keyfile written per run.
mkdir -p "$R/etc/NetworkManager/conf.d"
printf '[main]\\nplugins=keyfile\\n' > "$R/etc/NetworkManager/conf.d/10-vpi.conf"
chroot "$R" systemctl enable ssh NetworkManager systemd-timesyncd >/dev/null 2>&1 || true
# Nothing to do in a container.
chroot "$R" systemctl mask systemd-udev-settle.service >/dev/null 2>&1 || true
echo 'vpi' > "$R/etc/vpi-guest"
"""


def build_key(arch: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([SUITE, MIRROR, SECURITY, PACKAGES]).encode())
    if foreign(arch):  # the host's architecture keeps the key it always had
        h.update(arch.encode())
    h.update(customize_script().encode())
    for ca in extra_cas():
        h.update(ca.read_bytes())
    return h.hexdigest()[:12]


def tarball_prefix(arch: str) -> str:
    """rootfs-bookworm- for the host's architecture, rootfs-bookworm-arm64- for another."""
    return f"rootfs-{SUITE}-{arch}-" if foreign(arch) else f"rootfs-{SUITE}-"


def tarball_path(arch: str) -> Path:
    return CACHE / f"{tarball_prefix(arch)}{build_key(arch)}.tar"


def cmd_build(args) -> Path:
    require_root()
    ensure_host_tools()
    arch = args.arch or host_arch()
    ensure_binfmt(arch)
    tar = tarball_path(arch)
    if tar.exists() and not args.force:
        log(f"cached root filesystem: {tar}")
        return tar
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = tar.with_suffix(".tar.partial")
    log(
        f"building {tar.name} with mmdebstrap (about 2 minutes"
        f"{'; 10 or more under qemu' if foreign(arch) else ''})"
    )
    sources = [
        f"deb {MIRROR} {SUITE} main",
        f"deb {MIRROR} {SUITE}-updates main",
    ]
    if SECURITY:  # VPI_SECURITY_MIRROR= (empty) leaves the security suite out
        sources.append(f"deb {SECURITY} {SUITE}-security main")
    script = CACHE / f"customize-{arch}.sh" if foreign(arch) else CACHE / "customize.sh"
    script.write_text(customize_script())
    run(
        [
            "mmdebstrap",
            "--variant=minbase",
            "--mode=root",
            "--format=tar",
            f"--architectures={arch}",
            f"--include={','.join(PACKAGES)}",
            f'--customize-hook=sh {script} "$1"',
            SUITE,
            str(tmp),
            *sources,
        ]
    )
    tmp.rename(tar)
    # Older builds of the same architecture only (rootfs-bookworm-<key>[.tar] or
    # rootfs-bookworm-<arch>-<key>[.tar]); another architecture's cache stays.
    same_arch = re.compile(re.escape(tarball_prefix(arch)) + r"[0-9a-f]{12}(\.tar)?")
    for old in CACHE.glob(f"rootfs-{SUITE}-*"):
        if same_arch.fullmatch(old.name) and old.name not in (tar.name, tar.stem):
            log(f"removing stale {old.name}")
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    log(f"built {tar}")
    return tar


def lower_dir(tar: Path) -> Path:
    """The tarball extracted once: the read-only lower layer of every run's overlay."""
    lower = CACHE / tar.stem
    stamp = lower / ".vpi-extracted"
    if stamp.exists():
        return lower
    if lower.exists():
        shutil.rmtree(lower)
    lower.mkdir(parents=True)
    log(f"extracting {tar.name}")
    run(["tar", "-C", str(lower), "--numeric-owner", "-xpf", str(tar)])
    stamp.touch()
    return lower


# ---------------------------------------------------------------- state


def run_dir(name: str) -> Path:
    return RUNS / name


def load_state(name: str) -> dict:
    path = run_dir(name) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def save_state(name: str, state: dict) -> None:
    path = run_dir(name) / "state.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.rename(path)


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


# ---------------------------------------------------------------- network


def host_nameservers() -> list[str]:
    servers = []
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                ip = ipaddress.ip_address(parts[1].split("%")[0])
                if ip.version == 4 and not ip.is_loopback:
                    servers.append(str(ip))
    return servers or ["1.1.1.1", "9.9.9.9"]


def setup_network(state: dict) -> None:
    bridge, subnet, table = state["bridge"], state["subnet"], state["nft_table"]
    run(["ip", "link", "add", bridge, "type", "bridge"])
    state["created"].append("bridge")
    run(["ip", "addr", "add", f"{subnet}.1/24", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    ruleset = f"""
table ip {table} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet}.0/24 oifname != "{bridge}" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{bridge}" accept
    oifname "{bridge}" ct state established,related accept
  }}
}}
"""
    run(["nft", "-f", "-"], input=ruleset)
    state["created"].append("nft")
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    state["ip_forward_before"] = forward.read_text().strip()
    if state["ip_forward_before"] != "1":
        forward.write_text("1\n")


def teardown_network(state: dict) -> None:
    created = state.get("created", [])
    if "nft" in created:
        run(
            ["nft", "delete", "table", "ip", state["nft_table"]],
            check=False,
            stderr=subprocess.DEVNULL,
        )
    if "bridge" in created:
        run(["ip", "link", "del", state["bridge"]], check=False, stderr=subprocess.DEVNULL)
    before = state.get("ip_forward_before")
    others = (
        [
            d.name
            for d in RUNS.glob("*")
            if d.name != state["name"] and alive(load_state(d.name).get("supervisor_pid"))
        ]
        if RUNS.exists()
        else []
    )
    if before and before != "1" and not others:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(before + "\n")


# ---------------------------------------------------------------- up / down


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


def cmd_supervise(args) -> int:
    """Run nspawn until the guest powers off; restart it when the guest reboots (133)."""
    name = args.name
    rdir = run_dir(name)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # `down` signals nspawn, not us
    boots = 0
    while True:
        state = load_state(name)
        if (rdir / "stop").exists():
            return 0
        proc = subprocess.Popen(nspawn_command(state), stdin=subprocess.DEVNULL)
        boots += 1
        state["nspawn_pid"] = proc.pid
        state["boots"] = boots
        save_state(name, state)
        rc = proc.wait()
        print(f"vpi: nspawn exited with status {rc}", flush=True)
        if rc != 133 or (rdir / "stop").exists():
            state = load_state(name)
            state["nspawn_exit"] = rc
            state["nspawn_pid"] = None
            save_state(name, state)
            return 0
        time.sleep(0.5)


def ssh_base(state: dict) -> list[str]:
    rdir = run_dir(state["name"])
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


def wait_for_ssh(state: dict, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(load_state(state["name"]).get("supervisor_pid")):
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


def cmd_up(args) -> int:
    require_root()
    name = args.name
    if not NAME_RE.match(name):
        sys.exit("vpi: NAME must be 1-11 lowercase letters/digits, starting with a letter")
    subnet = args.subnet
    if not re.fullmatch(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})", subnet):
        sys.exit("vpi: --subnet must be three octets such as 10.213.7")
    rdir = run_dir(name)
    if alive(load_state(name).get("supervisor_pid")):
        sys.exit(f"vpi: {name} is already running (vpi.py down {name})")
    cleanup(name)  # leftovers of a run that was killed
    arch = args.arch or host_arch()
    tar = cmd_build(argparse.Namespace(force=False, arch=arch))
    timeout = args.timeout or (600 if foreign(arch) else 90)
    lower = lower_dir(tar)
    rdir.mkdir(parents=True)
    merged, upper, work = rdir / "merged", rdir / "upper", rdir / "work"
    for d in (merged, upper, work):
        d.mkdir()
    binds = []
    for spec in args.cache or []:
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
    save_state(name, state)
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
        save_state(name, state)
        prepare_guest(state, merged, rdir)
        if state["foreign"]:
            install_qemu_dropins(merged)
            install_native_nm(merged)
        setup_network(state)
        save_state(name, state)
        started = time.monotonic()
        with open(rdir / "console.log", "ab") as console:
            sup = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "_supervise", name],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        state["supervisor_pid"] = sup.pid
        save_state(name, state)
        wait_for_ssh(state, timeout)
        log(
            f"{name} is up at {state['ip']} after {time.monotonic() - started:.1f} s "
            f"(ssh: {Path(__file__).name} ssh {name})"
        )
    except BaseException:
        log(f"{name} failed to start; cleaning up")
        tail = rdir / "console.log"
        if tail.exists():
            sys.stderr.write(tail.read_text(errors="replace")[-3000:])
        cleanup(name)
        raise
    print(json.dumps(load_state(name), indent=1))
    return 0


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def cleanup(name: str, timeout: float | None = None) -> None:
    """Stop the guest and undo everything `up` did; safe to call repeatedly."""
    rdir = run_dir(name)
    if not rdir.exists():
        return
    (rdir / "stop").touch()
    state = load_state(name)
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
        nspawn = load_state(name).get("nspawn_pid") or nspawn
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
        with contextlib.suppress(ChildProcessError, TypeError):
            os.waitpid(pid, os.WNOHANG)
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


def cmd_down(args) -> int:
    require_root()
    existed = run_dir(args.name).exists()
    cleanup(args.name)
    log(f"{args.name} is down" if existed else f"{args.name} was not running")
    return 0


def cmd_status(args) -> int:
    state = load_state(args.name)
    state["running"] = alive(state.get("supervisor_pid"))
    print(json.dumps(state, indent=1))
    return 0 if state["running"] else 1


def cmd_ssh(args) -> int:
    state = load_state(args.name)
    if not state:
        sys.exit(f"vpi: {args.name} is not running")
    return subprocess.call([*ssh_base(state), *args.command])


def cmd_inventory(args) -> int:
    state = load_state(args.name)
    if not state:
        sys.exit(f"vpi: {args.name} is not running")
    print(
        f"{args.name} ansible_host={state['ip']} ansible_user=pi "
        f"ansible_ssh_private_key_file={state['ssh_key']} "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={state['known_hosts']} "
        "-o StrictHostKeyChecking=yes'"
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build or reuse the cached root filesystem")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument(
        "--arch",
        help="Debian architecture, e.g. arm64 or armhf under qemu-user (default: the host's)",
    )
    b.set_defaults(func=cmd_build)
    u = sub.add_parser("up", help="boot a guest and wait for SSH")
    u.add_argument("name")
    u.add_argument("--subnet", default="10.213.7", help="first three octets (default %(default)s)")
    u.add_argument(
        "--timeout", type=float, help="seconds to wait for SSH (default 90; 600 under qemu)"
    )
    u.add_argument(
        "--arch",
        help="Debian architecture, e.g. arm64 or armhf under qemu-user (default: the host's)",
    )
    u.add_argument(
        "--cache",
        action="append",
        metavar="HOSTDIR:GUESTDIR",
        help="bind a host cache directory into the guest (repeatable), e.g. "
        "apt archives; survives the run",
    )
    u.set_defaults(func=cmd_up)
    d = sub.add_parser("down", help="stop the guest and clean up")
    d.add_argument("name")
    d.set_defaults(func=cmd_down)
    s = sub.add_parser("status", help="print the state as JSON")
    s.add_argument("name")
    s.set_defaults(func=cmd_status)
    x = sub.add_parser("ssh", help="ssh into the guest as pi")
    x.add_argument("name")
    x.add_argument("command", nargs=argparse.REMAINDER)
    x.set_defaults(func=cmd_ssh)
    i = sub.add_parser("inventory", help="an Ansible inventory line for the guest")
    i.add_argument("name")
    i.set_defaults(func=cmd_inventory)
    sv = sub.add_parser("_supervise")
    sv.add_argument("name")
    sv.set_defaults(func=cmd_supervise)
    args = parser.parse_args(argv)
    result = args.func(args)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
