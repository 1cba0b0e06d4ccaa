"""The camera's own Redis link (not redis-py, for memory) against a real redis-server
that speaks only TLS: stills arrive, `hatcam check` agrees, and a certificate for another
host is refused rather than trusted."""

from __future__ import annotations

import datetime
import ipaddress
import signal

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.footage import hatcam, start_hatcam, wait_until
from tests.support.services import RedisServer, free_port

PASSWORD = "tls-test-password"


def _certificate(subject: str, key, issuer_key, issuer: str, names: list, ca: bool):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(path, obj) -> None:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture
def tls_redis(tmp_path):
    """redis-server on a TLS port only, its certificate for "localhost" (not 127.0.0.1)
    signed by a CA of the test's own; ``SSL_CERT_FILE`` makes that CA the trusted one."""
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("hatcam test CA", ca_key, ca_key, "hatcam test CA", [], ca=True)
    server = _certificate(
        "localhost", server_key, ca_key, "hatcam test CA", [x509.DNSName("localhost")], ca=False
    )
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    _pem(files["ca"], ca)
    _pem(files["cert"], server)
    _pem(files["key"], server_key)
    port = free_port()
    server = RedisServer(
        tmp_path / "redis",
        port=port,
        password=PASSWORD,
        extra=(  # the plain port off, TLS on the port the fixture waits for
            f"port 0\ntls-port {port}\ntls-cert-file {files['cert']}\ntls-key-file {files['key']}\n"
            f"tls-ca-cert-file {files['ca']}\ntls-auth-clients no\n"
        ),
    )
    server.start()
    yield server, files["ca"]
    server.stop()


def observer(port: int, ca) -> redis.Redis:
    return redis.Redis(
        host="localhost", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(ca), db=3
    )


def test_stills_reach_a_redis_that_speaks_only_tls(tmp_path, tls_redis):
    server, ca = tls_redis
    settings = {
        "HATCAM_CAMERA": "synthetic",
        "HATCAM_SPOOL_DIR": tmp_path / "spool",
        "HATCAM_RESOLUTION": "320x240",
        "HATCAM_MIN_FREE_MB": "1",
        "HATCAM_STILLS": "on",
        "IMAGE_CAPTURE_FREQUENCY": "1",
        "REDIS_URL": f"rediss://:{PASSWORD}@localhost:{server.port}/3",
        "SSL_CERT_FILE": ca,
    }
    log = tmp_path / "camera.log"
    proc = start_hatcam("camera", settings=settings, log=log)
    try:
        client = observer(server.port, ca)
        wait_until(lambda: len(client.keys("image:*")) >= 2, 30, "two stills over TLS")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    key = client.keys("image:*")[0]
    assert client.hget(key, "image_data")[:2] == b"\xff\xd8", "a JPEG went over TLS"
    assert 0 < client.ttl(key) <= 86400
    assert PASSWORD not in log.read_text()


def test_check_reaches_redis_over_tls_and_refuses_a_certificate_for_another_host(
    tmp_path, tls_redis
):
    server, ca = tls_redis
    base = {"HATCAM_SPOOL_DIR": tmp_path / "spool", "SSL_CERT_FILE": ca}

    def check(host: str, password: str = PASSWORD):
        url = f"rediss://:{password}@{host}:{server.port}/0"
        result = hatcam("check", settings={**base, "REDIS_URL": url})
        return next(line for line in result.stdout.splitlines() if line.startswith("redis:"))

    assert "ok" in check("localhost") and "reachable" in check("localhost")
    # The certificate names localhost, not 127.0.0.1: the hostname check must refuse it.
    wrong_host = check(str(ipaddress.ip_address("127.0.0.1")))
    assert "FAIL" in wrong_host and "SSLCertVerificationError" in wrong_host, wrong_host
    refused = check("localhost", password="not-the-password")
    assert "FAIL" in refused and "password refused" in refused
    assert "not-the-password" not in refused
