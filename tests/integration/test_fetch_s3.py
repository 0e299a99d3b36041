"""``voicefleet-fetch`` against an S3-compatible server: path-style GETs, SigV4, S3 error codes.

The server is SeaweedFS's S3 gateway (``weed server -s3``, built from its Go module on
first use; ``modelservers.seaweedfs``), started per module on loopback with one identity.
It checks SigV4 signatures, so what this proves: s3:// urls become path-style requests the
S3 API serves, signed right (the gateway recomputes the signature with the secret it
holds), an unknown access key id is refused with ``InvalidAccessKeyId`` and a right key
signed with a wrong secret with ``SignatureDoesNotMatch``, and S3's XML error codes reach
the termination message without the secret.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from modelservers import SEAWEEDFS_KEY, SEAWEEDFS_SECRET, seaweedfs

from voicefleet_inference.engines.registry import BUNDLED_VOICE, resolve_piper_model

pytestmark = [pytest.mark.seaweedfs]

KEY, SECRET = SEAWEEDFS_KEY, SEAWEEDFS_SECRET
BUCKET = "voices"
FETCH = Path(sys.executable).with_name("voicefleet-fetch")


@dataclass
class S3:
    endpoint: str
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    _, onnx, config = resolve_piper_model(BUNDLED_VOICE)
    files = {"en/joe.onnx": onnx.read_bytes(), "en/joe.onnx.json": config.read_bytes()}
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs"), BUCKET, files) as endpoint:
        yield S3(endpoint, files)


def fetch(tmp_path: Path, s3: S3, **overrides: str) -> tuple[int, str, str]:
    words = tmp_path / f"termination-{time.monotonic_ns()}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "VOICEFLEET_TERMINATION_MESSAGE_PATH": str(words),
        "VOICEFLEET_FETCH_URL": f"s3://{BUCKET}/en/joe.onnx",
        "VOICEFLEET_FETCH_SHA256": hashlib.sha256(s3.files["en/joe.onnx"]).hexdigest(),
        "VOICEFLEET_FETCH_CONFIG_SHA256": hashlib.sha256(s3.files["en/joe.onnx.json"]).hexdigest(),
        "VOICEFLEET_FETCH_DEST": str(tmp_path / "models" / "joe.onnx"),
        "VOICEFLEET_FETCH_S3_ENDPOINT": s3.endpoint,
        "VOICEFLEET_FETCH_ACCESS_KEY_ID": KEY,
        "VOICEFLEET_FETCH_SECRET_ACCESS_KEY": SECRET,
        **overrides,
    }
    done = subprocess.run(
        [str(FETCH)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    last = words.read_text().strip() if words.exists() else ""
    return done.returncode, done.stderr, last


def test_a_signed_fetch_from_s3_gets_both_files(tmp_path: Path, s3: S3) -> None:
    code, stderr, _ = fetch(tmp_path, s3)
    assert code == 0, stderr
    models = tmp_path / "models"
    assert (models / "joe.onnx").read_bytes() == s3.files["en/joe.onnx"]
    assert (models / "joe.onnx.json").read_bytes() == s3.files["en/joe.onnx.json"]
    assert SECRET not in stderr.replace(f"s3://{BUCKET}", "")


def test_an_unknown_access_key_is_refused_and_reported(tmp_path: Path, s3: S3) -> None:
    code, stderr, last = fetch(
        tmp_path,
        s3,
        VOICEFLEET_FETCH_ACCESS_KEY_ID="AKIDNOBODY",
        VOICEFLEET_FETCH_SECRET_ACCESS_KEY="not-the-secret-4b1d",
    )
    assert code == 1
    assert last == (
        f"ModelFetchFailed: s3://{BUCKET}/en/joe.onnx: the credential was refused "
        "(HTTP 403 Forbidden, InvalidAccessKeyId); check spec.model.credentialsSecret"
    )
    assert "not-the-secret-4b1d" not in stderr + last


def test_a_wrong_secret_for_a_known_key_is_refused_and_reported(tmp_path: Path, s3: S3) -> None:
    code, stderr, last = fetch(
        tmp_path, s3, VOICEFLEET_FETCH_SECRET_ACCESS_KEY="not-the-secret-9e2f"
    )
    assert code == 1
    assert last == (
        f"ModelFetchFailed: s3://{BUCKET}/en/joe.onnx: the credential was refused "
        "(HTTP 403 Forbidden, SignatureDoesNotMatch); check spec.model.credentialsSecret"
    )
    assert "not-the-secret-9e2f" not in stderr + last
    assert not (tmp_path / "models" / "joe.onnx").exists()


def test_a_missing_object_names_s3s_code(tmp_path: Path, s3: S3) -> None:
    code, _, last = fetch(tmp_path, s3, VOICEFLEET_FETCH_URL=f"s3://{BUCKET}/en/gone.onnx")
    assert code == 1
    assert last == (
        f"ModelFetchFailed: s3://{BUCKET}/en/gone.onnx: not found (HTTP 404 Not Found, NoSuchKey)"
    )


def test_a_digest_mismatch_from_s3(tmp_path: Path, s3: S3) -> None:
    code, _, last = fetch(tmp_path, s3, VOICEFLEET_FETCH_CONFIG_SHA256="f" * 64)
    assert code == 1
    assert last.startswith(f"ModelDigestMismatch: s3://{BUCKET}/en/joe.onnx.json: sha256 ")
    assert not (tmp_path / "models" / "joe.onnx.json").exists()
