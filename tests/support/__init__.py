"""The test rig: everything the tests, the demo and the benchmarks start and observe.

Importable as ``tests.support`` from the repository root (pytest.ini puts the root on
pytest's path; scripts run as ``python -m tests.support.demo``). One owner each:

    procs       processes by PID: alive, stop, wait for a port
    services    Azurite and redis-server (the one way to start them) and the one
                connection string
    hostsvc     those two on a virtual Pi's bridge, for other processes: hostsvc.json
    vpi/        the virtual Pi (host, rootfs, qemu, network, state, guest; CLI)
    session     a virtual Pi provisioned by the real playbook, with its services
    footage     real H.264 footage through the real segmenter
    sdcard      a FUSE SD card that keeps only synced bytes
    http_proxy  a counting HTTP proxy in front of Azurite
    demo        `make demo`
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
