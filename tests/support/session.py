"""A virtual Pi provisioned by the real playbook, with Azurite and Redis beside it.

Used by the demo and the fault-injection tests (the molecule scenario drives the same
tools through its own create/destroy playbooks):

    with ProvisionedPi("demo", "10.213.9", workdir, {"hatcam_segment_seconds": 5}) as pi:
        pi.ssh("systemctl is-active hatcam-camera")
        pi.cut_network(); ...; pi.restore_network()
        pi.container().list_blobs()

Everything it starts is stopped on exit, also after an error or Ctrl-C: the guest (by
vpi's down: processes by PID, overlay, bridge, nftables table) and the host services
(by PID). Needs root. It asks ``vpi.state`` and ``hostsvc`` for what they own, and never
opens their state files itself.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import redis
from azure.storage.blob import ContainerClient

from . import ROOT, hostsvc
from .procs import wait_for
from .vpi import guest
from .vpi import state as vstate

# The guest is booted and stopped by vpi's command line, in a process of its own (its
# tools talk on that process's stderr, kept out of a test's or the demo's output).
VPI = [sys.executable, "-m", "tests.support.vpi"]
CACHES = [
    f"{ROOT}/.cache/vpi/apt-archives:/var/cache/apt/archives",
    f"{ROOT}/.cache/vpi/pip:/root/.cache/pip",
]

# A small, quick hat cam: the settings a test or the demo do not override.
DEFAULTS = {
    "hatcam_camera": "synthetic",
    "hatcam_resolution": "640x360",
    "hatcam_fps": 15,
    "hatcam_bitrate": 600000,
    "hatcam_segment_seconds": 5,
    "hatcam_retry_max_seconds": 5,
    "hatcam_min_free_mb": 50,
    "hatcam_stills": True,
    "hatcam_image_capture_frequency": 5,
    "hatcam_image_expiry": 3600,
    "pi_camera_reboot_allowed": False,
    "pi_wifi_country": "GB",
    "pi_wifi_networks": [],
}


def run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("cwd", ROOT)  # where `python -m tests.support...` finds the package
    return subprocess.run(cmd, check=check, text=True, **kw)


class ProvisionedPi:
    def __init__(
        self,
        name: str,
        subnet: str,
        workdir: Path,
        settings: dict | None = None,
        device: str | None = None,
        log=print,
        account: str | None = None,
    ):
        self.name = name
        self.subnet = subnet
        self.workdir = Path(workdir)
        self.device = device or f"hatcam-{name}"
        self.settings = {**DEFAULTS, **(settings or {})}
        self.log = log
        self.vm: dict = {}
        self.svc: dict = {}
        self.svc_state = self.workdir / "hostsvc.json"
        # An Azurite account of this name with a random key (default: the published one).
        self.account = account

    # --- life cycle ---------------------------------------------------------------
    def __enter__(self) -> ProvisionedPi:
        try:
            self.boot()
            self.provision()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def boot(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log(f"booting the virtual Pi '{self.name}' (systemd-nspawn, own network namespace)")
        args = [*VPI, "up", self.name, "--subnet", self.subnet]
        for cache in CACHES:
            args += ["--cache", cache]
        self.vm = json.loads(run(args, capture_output=True).stdout)
        self.log("starting Azurite and redis-server beside it")
        self.svc = hostsvc.start(self.vm["host_ip"], self.svc_state, self.account)

    def attach(self) -> ProvisionedPi:
        """Use a guest and services an earlier session left running (development)."""
        if not vstate.running(self.name):
            raise RuntimeError(f"{self.name} is not running")
        self.vm = vstate.load(self.name)
        self.svc = hostsvc.load(self.svc_state)
        return self

    def provision(self, **overrides) -> subprocess.CompletedProcess:
        """Run the real ansible/provision.yml against the guest; returns the run."""
        self.settings.update(overrides)
        self.log("provisioning it with ansible/provision.yml (the real playbook)")
        result = self.playbook(self.playbook_vars(), self.workdir / "vars.json")
        (self.workdir / "provision.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(
                f"provisioning failed (status {result.returncode}); see "
                f"{self.workdir / 'provision.log'}:\n{result.stdout[-2000:]}"
            )
        return result

    def playbook_vars(self) -> dict:
        """The extra vars provision() runs the playbook with (secrets inside)."""
        return {
            **self.settings,
            "hatcam_device_name": self.device,
            "hatcam_redis_url": self.svc["redis_url"],
            "hatcam_blob_mint_sas": True,
            "hatcam_blob_account_name": self.svc["account"],
            "hatcam_blob_account_key": self.svc["account_key"],
            "hatcam_blob_endpoint": self.svc["blob_endpoint"],
            "hatcam_blob_container": self.svc["container"],
        }

    def playbook(self, variables: dict, vars_file: Path) -> subprocess.CompletedProcess:
        """Run ansible/provision.yml with exactly these extra vars (written to ``vars_file``,
        mode 0600); returns the run whatever its status. provision() and the fault tests
        (a bad variable, an expired SAS) use it; ``self.settings`` is left alone."""
        inventory = self.workdir / "inventory"
        inventory.write_text(
            "[hatcams]\n"
            f"{self.name} ansible_host={self.vm['ip']} ansible_user=pi "
            f"ansible_ssh_private_key_file={self.vm['ssh_key']} "
            f"ansible_ssh_common_args='-o UserKnownHostsFile={self.vm['known_hosts']} "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'\n"
        )
        vars_file = Path(vars_file)
        vars_file.touch(mode=0o600)
        vars_file.write_text(json.dumps(variables))
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
            "ANSIBLE_FORCE_COLOR": "0",
        }
        return run(
            [
                str(Path(sys.executable).parent / "ansible-playbook"),
                str(ROOT / "ansible" / "provision.yml"),
                "-i",
                str(inventory),
                "-e",
                f"@{vars_file}",
            ],
            capture_output=True,
            env=env,
            check=False,
        )

    def close(self) -> None:
        hostsvc.stop(self.svc_state)
        run([*VPI, "down", self.name], check=False, capture_output=True)

    # --- the guest -----------------------------------------------------------------
    def ssh(self, command: str, check=True, timeout=120) -> subprocess.CompletedProcess:
        return run(
            [*guest.ssh_base(self.vm), command], check=check, capture_output=True, timeout=timeout
        )

    def status(self) -> dict:
        """`hatcam status --json` on the guest."""
        out = self.ssh(
            "sudo -u hatcam /opt/hatcam/venv/bin/hatcam "
            "--env-file /etc/hatcam/hatcam.env status --json"
        ).stdout
        return json.loads(out)

    def systemctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.ssh("sudo systemctl " + " ".join(shlex.quote(a) for a in args))

    def host_veth(self) -> str:
        """The host side of the guest's veth (the only link on its bridge)."""
        links = run(
            ["ip", "-o", "link", "show", "master", self.vm["bridge"]], capture_output=True
        ).stdout.split()
        return links[1].split("@")[0].rstrip(":")

    def cut_network(self) -> None:
        run(["ip", "link", "set", self.host_veth(), "down"])

    def restore_network(self) -> None:
        run(["ip", "link", "set", self.host_veth(), "up"])

    # --- power ---------------------------------------------------------------------
    def upper_dir(self) -> Path:
        """The overlay's upper layer: everything the guest wrote (its SD card)."""
        return Path(self.vm["merged"]).parent / "upper"

    def power_cut(self, timeout: float = 30) -> float:
        """Pull the battery (vpi.guest.power_cut); returns the time of the kill.

        The overlay is no SD card: the host's page cache keeps what the guest wrote but
        had not synced. A test SD card mounted in the guest (support/sdcard.py) loses it
        when its own power_cut() follows this one, as a real card would."""
        return guest.power_cut(self.name, timeout)

    def boot_again(self, timeout: float = 120) -> None:
        """Power on again after power_cut() (vpi.guest.boot_again)."""
        guest.boot_again(self.name, timeout)

    def running(self) -> bool:
        """The guest's systemd-nspawn is alive (not powered off or cut)."""
        return vstate.nspawn_running(self.name)

    def guest_init(self) -> int:
        """PID (on the host) of the guest's PID 1; changes when it boots again."""
        return vstate.guest_init(self.name)

    # --- the services beside it ------------------------------------------------------
    def stop_service(self, service: str) -> None:
        """Stop Azurite ("azurite") or redis-server ("redis"): an outage."""
        self.svc = hostsvc.stop_one(self.svc_state, service)

    def start_service(self, service: str) -> None:
        """Start it again on the same port and data directory (Redis: same password)."""
        self.svc = hostsvc.start_one(self.svc_state, service)

    def connection_string(self) -> str:
        return hostsvc.connection(self.svc)

    def container(self) -> ContainerClient:
        return hostsvc.container(self.svc)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.svc["redis_url"], socket_timeout=5)

    def wait_for(self, predicate, timeout: float, what: str, poll=1.0):
        return wait_for(predicate, timeout, what, poll)
