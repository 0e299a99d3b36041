"""``voicefleet-fetch`` against a real HTTPS file server with a private CA, on loopback.

The server is Python's threaded HTTP server behind TLS, with a certificate for 127.0.0.1
signed by a CA this module makes with ``cryptography`` (so the fetcher must be told to
trust it, as a pod is through ``spec.model.caConfigMap``). It serves the bundled voice's
real ``.onnx`` and ``.onnx.json`` and keeps its own access log, which is what shows that a
second fetch into the same (cache) directory makes no request. The fetcher runs as its
console script in a subprocess, exactly as the init container runs it, and each failure
is read back from the termination-message file the operator would read.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from voicefleet_inference.engines.registry import BUNDLED_VOICE, resolve_piper_model

FETCH = Path(sys.executable).with_name("voicefleet-fetch")
TOKEN = "s3cr3t-bearer-7f1c"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key): a CA and a 127.0.0.1 certificate it signed."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("voicefleet test CA"))
        .issuer_name(_name("voicefleet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = (
        directory / "ca.crt",
        directory / "server.crt",
        directory / "server.key",
    )
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@dataclass
class FileServer:
    """What the HTTPS server serves, and its own log of every request (path, status)."""

    files: dict[str, bytes]
    ca: Path
    """The private CA that signed the server's certificate (PEM)."""
    base: str = ""
    log: list[tuple[str, int]] = field(default_factory=list)
    stall: threading.Event = field(default_factory=threading.Event)

    def gets(self, suffix: str = "") -> int:
        return sum(1 for path, status in self.log if path.endswith(suffix) and status == 200)


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # the list is our log
            return

        def _answer(self, status: int, body: bytes = b"") -> None:
            state.log.append((self.path, status))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/private/"):
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._answer(401, b"no")
                    return
                path = "/" + self.path.removeprefix("/private/")
            else:
                path = self.path
            if path.startswith("/stall/"):
                state.log.append((self.path, 200))
                self.send_response(200)
                self.send_header("Content-Length", "1000000")
                self.end_headers()
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                state.stall.wait(30)
                return
            body = state.files.get(path)
            if body is None:
                self._answer(404, b"not here")
                return
            self._answer(200, body)

    return Handler


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca_and_server_cert(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def voice_files() -> dict[str, bytes]:
    _, onnx, config = resolve_piper_model(BUNDLED_VOICE)
    return {"/voices/joe.onnx": onnx.read_bytes(), "/voices/joe.onnx.json": config.read_bytes()}


@pytest.fixture
def https_server(
    pki: tuple[Path, Path, Path], voice_files: dict[str, bytes]
) -> Iterator[FileServer]:
    ca, cert, key = pki
    state = FileServer(files=dict(voice_files), ca=ca)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.base = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stall.set()
        server.shutdown()
        server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Run:
    code: int
    stderr: str
    last_words: str


def fetch(tmp_path: Path, env: dict[str, str], *flags: str, timeout: float = 60) -> Run:
    words = tmp_path / f"termination-{time.monotonic_ns()}"
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "VOICEFLEET_TERMINATION_MESSAGE_PATH": str(words),
        **env,
    }
    done = subprocess.run(
        [str(FETCH), *flags],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stderr, words.read_text().strip() if words.exists() else "")


def joe_env(server: FileServer, dest: Path) -> dict[str, str]:
    """The fetcher's environment for the bundled voice from ``server`` into ``dest``."""
    return {
        "VOICEFLEET_FETCH_URL": f"{server.base}/voices/joe.onnx",
        "VOICEFLEET_FETCH_SHA256": sha(server.files["/voices/joe.onnx"]),
        "VOICEFLEET_FETCH_CONFIG_SHA256": sha(server.files["/voices/joe.onnx.json"]),
        "VOICEFLEET_FETCH_DEST": str(dest),
        "VOICEFLEET_FETCH_CA_PEM": server.ca.read_text(),
    }


def test_fetches_both_files_and_a_second_run_downloads_nothing(
    tmp_path: Path, https_server: FileServer
) -> None:
    dest = tmp_path / "cache" / "key" / "joe.onnx"
    env = joe_env(https_server, dest)

    first = fetch(tmp_path, env)
    assert first.code == 0, first.stderr
    assert dest.read_bytes() == https_server.files["/voices/joe.onnx"]
    assert (
        dest.with_name("joe.onnx.json").read_bytes() == https_server.files["/voices/joe.onnx.json"]
    )
    assert https_server.log == [("/voices/joe.onnx", 200), ("/voices/joe.onnx.json", 200)]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["joe.onnx", "joe.onnx.json"]
    # What the server does with VOICEFLEET_MODEL=<dest>: the model is named after the file.
    name, onnx, config = resolve_piper_model(str(dest))
    assert (name, onnx, config) == ("joe", dest, dest.with_name("joe.onnx.json"))

    second = fetch(tmp_path, env)  # the tenth replica on a node with the cache on
    assert second.code == 0, second.stderr
    assert len(https_server.log) == 2, "a cached file with the right digest is not fetched again"
    assert "not downloaded" in second.stderr


def test_wrong_digest_keeps_nothing_and_says_so(tmp_path: Path, https_server: FileServer) -> None:
    dest = tmp_path / "m" / "joe.onnx"
    env = joe_env(https_server, dest)
    env["VOICEFLEET_FETCH_SHA256"] = "0" * 64
    run = fetch(tmp_path, env)
    assert run.code == 1
    actual = sha(https_server.files["/voices/joe.onnx"])
    assert run.last_words.startswith(f"ModelDigestMismatch: {https_server.base}/voices/joe.onnx:")
    assert actual in run.last_words
    assert "0" * 64 in run.last_words
    assert "\n" not in run.last_words
    assert list(dest.parent.iterdir()) == [], "no file, finished or partial, is left"


def test_a_cached_file_with_another_digest_is_replaced(
    tmp_path: Path, https_server: FileServer
) -> None:
    dest = tmp_path / "m" / "joe.onnx"
    dest.parent.mkdir()
    dest.write_bytes(b"tampered")
    run = fetch(tmp_path, joe_env(https_server, dest))
    assert run.code == 0, run.stderr
    assert dest.read_bytes() == https_server.files["/voices/joe.onnx"]


def test_missing_object_is_a_fetch_failure_naming_the_url(
    tmp_path: Path, https_server: FileServer
) -> None:
    env = joe_env(https_server, tmp_path / "m" / "gone.onnx")
    env["VOICEFLEET_FETCH_URL"] = f"{https_server.base}/voices/gone.onnx"
    run = fetch(tmp_path, env)
    assert run.code == 1
    assert run.last_words == (
        f"ModelFetchFailed: {https_server.base}/voices/gone.onnx: not found (HTTP 404 Not Found)"
    )


def test_bearer_token_is_sent_and_a_refused_one_is_reported_but_never_printed(
    tmp_path: Path, https_server: FileServer
) -> None:
    dest = tmp_path / "m" / "joe.onnx"
    env = joe_env(https_server, dest)
    env["VOICEFLEET_FETCH_URL"] = f"{https_server.base}/private/voices/joe.onnx"

    refused = fetch(tmp_path, {**env, "VOICEFLEET_FETCH_TOKEN": "wrong-token-9e2"})
    assert refused.code == 1
    assert refused.last_words.startswith(
        f"ModelFetchFailed: {https_server.base}/private/voices/joe.onnx: the credential was "
        "refused (HTTP 401 Unauthorized)"
    )
    assert "wrong-token-9e2" not in refused.stderr + refused.last_words

    allowed = fetch(tmp_path, {**env, "VOICEFLEET_FETCH_TOKEN": TOKEN})
    assert allowed.code == 0, allowed.stderr
    assert TOKEN not in allowed.stderr
    assert dest.read_bytes() == https_server.files["/voices/joe.onnx"]


def test_an_untrusted_certificate_is_refused(tmp_path: Path, https_server: FileServer) -> None:
    env = joe_env(https_server, tmp_path / "m" / "joe.onnx")
    del env["VOICEFLEET_FETCH_CA_PEM"]  # the system CAs do not know our private CA
    run = fetch(tmp_path, env)
    assert run.code == 1
    assert run.last_words.startswith(f"ModelFetchFailed: {https_server.base}/voices/joe.onnx: ")
    assert "CERTIFICATE_VERIFY_FAILED" in run.last_words


def test_a_stalled_download_times_out(tmp_path: Path, https_server: FileServer) -> None:
    dest = tmp_path / "m" / "joe.onnx"
    env = joe_env(https_server, dest)
    env["VOICEFLEET_FETCH_URL"] = f"{https_server.base}/stall/joe.onnx"
    started = time.monotonic()
    run = fetch(tmp_path, env, "--timeout-seconds", "1")
    assert run.code == 1
    assert time.monotonic() - started < 20
    assert run.last_words.startswith(
        f"ModelFetchFailed: {https_server.base}/stall/joe.onnx: timed out"
    )
    assert list(dest.parent.iterdir()) == []


def test_bad_settings_exit_2_with_a_reason(tmp_path: Path) -> None:
    run = fetch(
        tmp_path,
        {
            "VOICEFLEET_FETCH_URL": "http://example.invalid/x.onnx",
            "VOICEFLEET_FETCH_SHA256": "f" * 64,
            "VOICEFLEET_FETCH_CONFIG_SHA256": "f" * 64,
            "VOICEFLEET_FETCH_DEST": str(tmp_path / "x.onnx"),
        },
    )
    assert run.code == 2
    assert run.last_words.startswith("ModelFetchFailed: bad fetch settings: url:")
    assert "only https:// and s3:// urls are fetched" in run.last_words
