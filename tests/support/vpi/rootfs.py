"""The guest's root filesystem: Debian bookworm made Pi-OS-like by mmdebstrap, cached
as a tarball per architecture and extracted once as every run's read-only lower layer."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from .host import CACHE, ensure_host_tools, foreign, host_arch, log, require_root, run
from .qemu import ensure_binfmt

SUITE = "bookworm"
MIRROR = os.environ.get("VPI_MIRROR", "http://deb.debian.org/debian")
SECURITY = os.environ.get("VPI_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
EXTRA_CA_DIR = Path("/usr/local/share/ca-certificates")


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


def extra_cas() -> list[Path]:
    return sorted(EXTRA_CA_DIR.glob("**/*.crt")) if EXTRA_CA_DIR.is_dir() else []


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


def build(arch: str | None = None, force: bool = False) -> Path:
    """The cached tarball for ``arch`` (default: the host's), built if missing or forced."""
    require_root()
    ensure_host_tools()
    arch = arch or host_arch()
    ensure_binfmt(arch)
    tar = tarball_path(arch)
    if tar.exists() and not force:
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
