"""A throwaway virtual Raspberry Pi: Debian bookworm booted with systemd-nspawn.

One concern per module: ``host`` (paths, tools, the host's architecture), ``rootfs``
(the cached root filesystem), ``qemu`` (foreign architectures), ``network`` (bridge,
nftables, forwarding), ``state`` (the one owner of each run's state.json) and ``guest``
(up, supervise, ssh, power cut, boot again, down). The command line is ``__main__``:
``python -m tests.support.vpi up NAME`` from the repository root.

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
