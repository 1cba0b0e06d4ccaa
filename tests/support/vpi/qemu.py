"""Foreign architectures (arm64, armhf as on a Pi) under qemu-user-static: the host's
binfmt entry, drop-ins for what qemu-user cannot emulate, and a native NetworkManager."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .host import CACHE, foreign, host_arch, log, run

# Debian architecture -> qemu-user name (its binfmt entry is qemu-<name>).
QEMU_ARCHES = {"arm64": "aarch64", "armhf": "arm", "armel": "arm"}
BINFMT = Path("/proc/sys/fs/binfmt_misc")


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
