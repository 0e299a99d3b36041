"""Real servers that hold a url model, for the fetcher's tests and the cluster's.

- An HTTPS file server (Python's threaded HTTP server behind TLS) with a certificate for
  one IP address signed by a private CA made here with ``cryptography``, so a client must
  be told to trust it (as a pod is through ``spec.model.caConfigMap``). It keeps its own
  access log (path, status, peer), which is what shows that a fetch made no request.
  Paths under ``/private/`` need ``Authorization: Bearer <TOKEN>``; ``/stall/`` sends ten
  bytes of a promised million and then waits (a stalled download).
- s3rver (npm ``s3rver``, a Node implementation of the S3 REST API storing objects on
  disk), installed once per version into the user cache with npm. It does not check SigV4
  signatures (its v4 calculation is unimplemented): an unknown access key id is refused
  (``InvalidAccessKeyId``), a wrong secret is not.

Not a fixture module: plain functions and context managers, so each test module decides
where its servers listen (loopback, or the node's bridge address for pods).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from aws_request_signer import AwsRequestSigner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from voicefleet_bench.procs import spawned
from voicefleet_localcluster.procs import free_port

TOKEN = "s3cr3t-bearer-7f1c"
"""The bearer token the HTTPS server wants under ``/private/``."""
S3RVER_VERSION = "3.7.1"
S3RVER_KEY = S3RVER_SECRET = "S3RVER"  # s3rver's built-in credentials
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voicefleet"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca_and_server_cert(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key): a CA and a certificate for ``ip`` it signed."""
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
        .subject_name(_name(ip))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
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
    """What the HTTPS server serves, and its own log of every request (path, status, peer)."""

    files: dict[str, bytes]
    ca: Path
    """The private CA that signed the server's certificate (PEM)."""
    base: str = ""
    log: list[tuple[str, int, str]] = field(default_factory=list)
    stall: threading.Event = field(default_factory=threading.Event)

    def gets(self, suffix: str = "") -> int:
        """Answered GETs (200) of paths ending in ``suffix``."""
        return sum(1 for path, status, _ in self.log if path.endswith(suffix) and status == 200)

    def requests(self) -> list[tuple[str, int]]:
        """(path, status) of every request so far, in order."""
        return [(path, status) for path, status, _ in self.log]


def _handler(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # the list is our log
            return

        def _note(self, status: int) -> None:
            state.log.append((self.path, status, self.client_address[0]))

        def _answer(self, status: int, body: bytes = b"") -> None:
            self._note(status)
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
                self._note(200)
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


@contextmanager
def https_file_server(
    files: Mapping[str, bytes], pki: tuple[Path, Path, Path], host: str = "127.0.0.1"
) -> Iterator[FileServer]:
    """Serve ``files`` (path -> bytes) over TLS on ``host`` at a free port."""
    ca, cert, key = pki
    state = FileServer(files=dict(files), ca=ca)
    server = ThreadingHTTPServer((host, 0), _handler(state))
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.base = f"https://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stall.set()
        server.shutdown()
        server.server_close()


def s3rver_binary() -> Path:
    """s3rver from npm, installed once per version into the cache (like our Go builds)."""
    home = CACHE / f"s3rver-{S3RVER_VERSION}"
    binary = home / "node_modules" / ".bin" / "s3rver"
    if not binary.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install s3rver (Debian package npm)"
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", f"s3rver@{S3RVER_VERSION}"],
            cwd=home,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return binary


def s3_put(endpoint: str, bucket: str, key: str, body: bytes) -> None:
    """PUT one object, signed with s3rver's credentials."""
    url = f"{endpoint}/{bucket}/{key}"
    signer = AwsRequestSigner("us-east-1", S3RVER_KEY, S3RVER_SECRET, "s3")
    headers = signer.sign_with_headers("PUT", url, content_hash=sha(body))
    response = httpx.put(url, content=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


@contextmanager
def s3rver(
    data: Path, bucket: str, objects: Mapping[str, bytes], host: str = "127.0.0.1"
) -> Iterator[str]:
    """s3rver on ``host`` at a free port with ``bucket`` holding ``objects``; its endpoint."""
    port = free_port(host)
    argv = [
        str(s3rver_binary()),
        "-d", str(data / "objects"),
        "-a", host,
        "-p", str(port),
        "--no-vhost-buckets",
        "--configure-bucket", bucket,
    ]  # fmt: skip
    endpoint = f"http://{host}:{port}"
    with spawned(argv, port, "/", data, "s3rver", host=host):
        for key, body in objects.items():
            s3_put(endpoint, bucket, key, body)
        yield endpoint
