from __future__ import annotations

import os
import uuid

import pytest

from tests.support.services import Azurite, RedisServer


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "root(why): needs root; skipped without it, but a failure when CI is set"
    )


def pytest_runtest_setup(item):
    """A root-only test that cannot run is a skip on a developer's machine, but in CI
    (``CI`` set) it is a failure: a green CI run must have run every test."""
    marker = item.get_closest_marker("root")
    if marker is None or os.geteuid() == 0:
        return
    why = marker.args[0] if marker.args else "this test needs root"
    if os.environ.get("CI"):
        pytest.fail(f"{why}, and CI is set: run the suite as root", pytrace=False)
    pytest.skip(f"{why}: run as root")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    yield server
    server.stop()


@pytest.fixture
def container(azurite, request):
    """A fresh container for one test, named after its module, deleted afterwards:
    (name, ContainerClient)."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    name = f"{module.replace('_', '-')[:30]}-{uuid.uuid4().hex[:12]}"
    client = azurite.container(name)
    yield name, client
    client.delete_container()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
