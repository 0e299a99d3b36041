"""``voicefleet-fetch`` against a real HTTPS file server with a private CA, on loopback.

The server (``modelservers.https_file_server``) is Python's threaded HTTP server behind
TLS, with a certificate for 127.0.0.1 signed by a private CA (so the fetcher must be told
to trust it, as a pod is through ``spec.model.caConfigMap``). It serves the bundled voice's
real ``.onnx`` and ``.onnx.json`` and keeps its own access log, which is what shows that a
second fetch into the same (cache) directory makes no request. The fetcher runs as its
console script in a subprocess, exactly as the init container runs it, and each failure
is read back from the termination-message file the operator would read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from modelservers import TOKEN, FileServer, https_file_server, make_ca_and_server_cert, sha

from voicefleet_inference.engines.registry import BUNDLED_VOICE, resolve_piper_model

FETCH = Path(sys.executable).with_name("voicefleet-fetch")


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
    with https_file_server(voice_files, pki) as server:
        yield server


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
    assert https_server.requests() == [("/voices/joe.onnx", 200), ("/voices/joe.onnx.json", 200)]
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
