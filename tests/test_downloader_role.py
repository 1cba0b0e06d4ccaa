"""roles/hatcam_downloader converged on this machine (localhost) into a temporary home.

The playbook is the one `make fetch` runs; the venv and the .env go where the
variables say. The venv it builds then fetches real footage from Azurite.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from hatcam import config

ROOT = Path(__file__).resolve().parent.parent
SECRET = "c2VjcmV0LWtleS1mb3ItdGhlLXJvbGUtdGVzdA=="


def playbook(*extra: str, timeout=600) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    return subprocess.run(
        ["ansible-playbook", "-i", "localhost,", "ansible/fetch.yml", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def recap(result: subprocess.CompletedProcess) -> dict[str, int]:
    match = re.search(r"localhost\s+:\s+(.*)", result.stdout)
    assert match, result.stdout + result.stderr
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[1])}


def write_vars(path: Path, **values) -> str:
    path.write_text(yaml.safe_dump(values))
    return f"@{path}"


@pytest.fixture(scope="module")
def converged(tmp_path_factory, azurite):
    home = tmp_path_factory.mktemp("operator")
    container = f"role-{uuid.uuid4().hex[:10]}"
    azurite.container(container)
    conn = azurite.connection_string()
    values = {
        "hatcam_downloader_venv": str(home / "venv"),
        "hatcam_downloader_env_file": str(home / "config" / "hatcam" / "fetch.env"),
        "hatcam_downloader_blob_connection_string": conn,
        "hatcam_downloader_blob_container": container,
        "hatcam_downloader_keys_dir": str(home / "keys"),  # none yet: no device provisioned
    }
    started = time.monotonic()
    first = playbook("-e", write_vars(home / "vars.yml", **values))
    first_seconds = time.monotonic() - started
    started = time.monotonic()
    second = playbook("-e", write_vars(home / "vars.yml", **values))
    second_seconds = time.monotonic() - started
    print(f"\nrole: first converge {first_seconds:.1f} s, second {second_seconds:.1f} s")
    return {
        "home": home,
        "values": values,
        "container": container,
        "first": first,
        "second": second,
    }


def test_first_run_builds_the_venv_and_a_private_env_file(converged):
    first = converged["first"]
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr
    env_file = Path(converged["values"]["hatcam_downloader_env_file"])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    settings = config.load(env_file, environ={})
    assert (
        settings.blob_connection_string
        == converged["values"]["hatcam_downloader_blob_connection_string"]
    )
    assert settings.blob_container == converged["container"]
    assert settings.blob_sas_url is None
    # no_log: the account key never shows in Ansible's output.
    key = re.search(r"AccountKey=([^;]+)", settings.blob_connection_string)[1]
    assert key not in first.stdout + first.stderr


def test_second_run_changes_nothing(converged):
    second = converged["second"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr
    assert recap(second)["changed"] == 0
    assert recap(second)["failed"] == 0


def test_the_installed_command_fetches_footage(converged, azurite, tmp_path):
    """What `make fetch` runs after the playbook: <venv>/bin/hatcam --env-file <.env> fetch."""
    from test_fetch import T0, record, upload

    upload(azurite, converged["container"], record(tmp_path / "spool", "dev1", T0, 120))
    venv = Path(converged["values"]["hatcam_downloader_venv"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HATCAM_")}
    result = subprocess.run(
        [
            str(venv / "bin" / "hatcam"),
            "--env-file",
            converged["values"]["hatcam_downloader_env_file"],
            "fetch",
            "--device",
            "dev1",
            "--out",
            str(tmp_path / "footage"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "footage" / "dev1_20261121T080000Z.mp4").stat().st_size > 0
    assert "2 segment(s) in range, 1 file(s)" in result.stdout


def test_changing_a_setting_rewrites_only_the_env_file(converged):
    home, values = converged["home"], dict(converged["values"])
    values["hatcam_downloader_blob_connection_string"] = ""
    values["hatcam_downloader_blob_sas_url"] = (
        f"https://acct.blob.core.windows.net/c1?sp=rl&sig={SECRET}"
    )
    result = playbook("-e", write_vars(home / "vars2.yml", **values))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert recap(result)["changed"] == 1
    assert SECRET not in result.stdout + result.stderr
    env_file = Path(values["hatcam_downloader_env_file"])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    settings = config.load(env_file, environ={})
    assert settings.blob_sas_url.endswith(SECRET)
    assert settings.blob_connection_string is None

    # Without any credential variable, an existing env file is kept as it is.
    values["hatcam_downloader_blob_sas_url"] = ""
    before = env_file.read_text()
    env_file.chmod(0o644)
    result = playbook("-e", write_vars(home / "vars3.yml", **values))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert env_file.read_text() == before
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # made private again


def test_no_credential_and_no_env_file_fails_with_a_clear_message(converged):
    home, values = converged["home"], dict(converged["values"])
    values["hatcam_downloader_blob_connection_string"] = ""
    values["hatcam_downloader_env_file"] = str(home / "elsewhere" / "fetch.env")
    result = playbook("-e", write_vars(home / "vars4.yml", **values))
    assert result.returncode != 0
    assert "No blob storage credential" in result.stdout
    assert not (home / "elsewhere").exists()


def test_role_and_playbook_pass_the_linters():
    paths = ["roles/hatcam_downloader", "ansible/fetch.yml"]
    bindir = Path(sys.executable).parent
    lint = subprocess.run(
        [str(bindir / "ansible-lint"), "--profile", "production", *paths],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible" / "ansible.cfg")},
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    yamllint = subprocess.run(
        [str(bindir / "yamllint"), "-s", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert yamllint.returncode == 0, yamllint.stdout
