"""A virtual Pi provisioned by the real playbook, with Azurite and Redis beside it.

Used by the demo and the fault-injection tests (the molecule scenario drives the same
tools through its own create/destroy playbooks):

    with ProvisionedPi("demo", "10.213.9", workdir, {"hatcam_segment_seconds": 5}) as pi:
        pi.ssh("systemctl is-active hatcam-camera")
        pi.cut_network(); ...; pi.restore_network()
        pi.container().list_blobs()

Everything it starts is stopped on exit, also after an error or Ctrl-C: the guest (by
vpi.py down: processes by PID, overlay, bridge, nftables table) and the host services
(by PID). Needs root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from azure.storage.blob import ContainerClient

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VPI = [sys.executable, str(HERE / "vpi.py")]
HOSTSVC = [sys.executable, str(HERE / "hostsvc.py")]
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
        hostsvc_args: list[str] | None = None,
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
        # More `hostsvc.py start` options, e.g. ["--account", "name"] (a secret account key).
        self.hostsvc_args = list(hostsvc_args or [])
        self._supervisor: subprocess.Popen | None = None

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
        run(
            [
                *HOSTSVC,
                "start",
                "--host",
                self.vm["host_ip"],
                "--state",
                str(self.svc_state),
                *self.hostsvc_args,
            ],
            capture_output=True,
        )
        self.svc = json.loads(self.svc_state.read_text())

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
        if self.svc_state.exists():
            run(
                [*HOSTSVC, "stop", "--state", str(self.svc_state)], check=False, capture_output=True
            )
        run([*VPI, "down", self.name], check=False, capture_output=True)

    # --- the guest -----------------------------------------------------------------
    def ssh(self, command: str, check=True, timeout=120) -> subprocess.CompletedProcess:
        return run(
            [*VPI, "ssh", self.name, command], check=check, capture_output=True, timeout=timeout
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
        """Pull the battery: SIGKILL the guest's systemd-nspawn and its PID 1 at once.

        Killing nspawn alone leaves the guest's systemd and every daemon running,
        orphaned; killing PID 1 of the guest's PID namespace makes the kernel kill every
        process in it at the same moment, with no shutdown. The supervisor sees a status
        other than 133 and exits. Returns the time of the kill (time.time()).

        The overlay is no SD card: the host's page cache keeps what the guest wrote but
        had not synced. A test SD card mounted in the guest (tests/sdcard.py) loses it
        when its own power_cut() follows this one, as a real card would."""
        import vpi

        state = vpi.load_state(self.name)
        nspawn, sup = state.get("nspawn_pid"), state.get("supervisor_pid")
        if not vpi.alive(nspawn):
            raise RuntimeError(f"{self.name}: no running systemd-nspawn to kill")
        init = self._guest_init(nspawn)
        for pid in (init, nspawn):
            os.kill(pid, signal.SIGKILL)
        killed = time.time()
        if self._supervisor is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._supervisor.wait(timeout)
        self.wait_for(
            lambda: not vpi.alive(nspawn) and not vpi.alive(sup) and not vpi.alive(init),
            timeout,
            "the guest's processes, nspawn and its supervisor to go after SIGKILL",
            poll=0.1,
        )
        # The host end of the guest's veth normally goes with its network namespace, but
        # the kernel may free that late; the next boot needs the name, so delete it.
        veth = f"vb-{self.name}"[:15]
        with contextlib.suppress(TimeoutError):
            self.wait_for(lambda: self._link_gone(veth), 3, f"{veth} to go", poll=0.1)
        if not self._link_gone(veth):
            run(["ip", "link", "del", veth], check=False, capture_output=True)
        return killed

    @staticmethod
    def _link_gone(name: str) -> bool:
        return run(["ip", "link", "show", name], check=False, capture_output=True).returncode != 0

    @staticmethod
    def _guest_init(nspawn: int) -> int:
        """The guest's PID 1: the child of nspawn that is PID 1 in its own namespace."""
        for task in Path(f"/proc/{nspawn}/task").iterdir():
            for child in (task / "children").read_text().split():
                status = Path(f"/proc/{child}/status").read_text()
                nspid = next(x for x in status.splitlines() if x.startswith("NSpid:")).split()
                if nspid[-1] == "1" and len(nspid) > 2:
                    return int(child)
        raise RuntimeError(f"no guest PID 1 under systemd-nspawn {nspawn}")

    def boot_again(self, timeout: float = 120) -> None:
        """Power on again after power_cut(): a new supervisor boots nspawn on the same
        overlay (the upper dir, the SD card, survived) the way `vpi.py up` does. nspawn
        binds the guest's root with the mounts under it: a test SD card mounted on the
        host under ``merged`` meanwhile is there in the guest."""
        import vpi

        state = vpi.load_state(self.name)
        if vpi.alive(state.get("supervisor_pid")) or vpi.alive(state.get("nspawn_pid")):
            raise RuntimeError(f"{self.name} is still running")
        rdir = vpi.run_dir(self.name)
        state["nspawn_pid"] = None
        state.pop("nspawn_exit", None)
        vpi.save_state(self.name, state)
        with open(rdir / "console.log", "ab") as console:
            self._supervisor = subprocess.Popen(
                [*VPI, "_supervise", self.name],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # The supervisor saves the state once it started nspawn; record our PID after that,
        # so neither write loses the other's field.
        self.wait_for(
            lambda: vpi.load_state(self.name).get("nspawn_pid"),
            30,
            "the supervisor to start systemd-nspawn",
            poll=0.1,
        )
        state = vpi.load_state(self.name)
        state["supervisor_pid"] = self._supervisor.pid
        vpi.save_state(self.name, state)
        vpi.wait_for_ssh(state, timeout)

    # --- the services beside it ------------------------------------------------------
    def stop_service(self, service: str) -> None:
        """Stop Azurite ("azurite") or redis-server ("redis"): an outage."""
        run(
            [*HOSTSVC, "stop-one", "--state", str(self.svc_state), "--service", service],
            capture_output=True,
        )
        self.svc = json.loads(self.svc_state.read_text())

    def start_service(self, service: str) -> None:
        """Start it again on the same port and data directory (Redis: same password)."""
        run(
            [*HOSTSVC, "start-one", "--state", str(self.svc_state), "--service", service],
            capture_output=True,
        )
        self.svc = json.loads(self.svc_state.read_text())

    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.svc['account']};"
            f"AccountKey={self.svc['account_key']};"
            f"BlobEndpoint={self.svc['blob_endpoint']};"
        )

    def container(self) -> ContainerClient:
        return ContainerClient.from_connection_string(
            self.connection_string(), self.svc["container"]
        )

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.svc["redis_url"], socket_timeout=5)

    def wait_for(self, predicate, timeout: float, what: str, poll=1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
