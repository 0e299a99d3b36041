"""Settings: flags, environment variables (the operator's contract), defaults, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from voicefleet_inference.settings import (
    Settings,
    SettingsError,
    available_cores,
    build_parser,
    load_settings,
)

ENV_NAMES = (
    "VOICEFLEET_HOST",
    "PORT",
    "VOICEFLEET_PORT",
    "VOICEFLEET_ENGINE",
    "VOICEFLEET_MODEL",
    "VOICEFLEET_DEVICE",
    "VOICEFLEET_WORKERS",
    "VOICEFLEET_THREADS_PER_WORKER",
    "VOICEFLEET_MAX_QUEUE",
    "VOICEFLEET_MAX_BATCH_SIZE",
    "VOICEFLEET_BATCH_WINDOW_MS",
    "VOICEFLEET_REQUEST_TIMEOUT_S",
    "VOICEFLEET_DRAIN_GRACE_S",
    "VOICEFLEET_MAX_INPUT_CHARS",
    "VOICEFLEET_LOG_LEVEL",
    "VOICEFLEET_CALIBRATION_CACHE",
)


def clear_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server variable from the caller's environment (the suite sets
    VOICEFLEET_CALIBRATION_CACHE for its servers, a developer may export others)."""
    for name in {*ENV_NAMES, *(n for n in os.environ if n.startswith("VOICEFLEET_"))}:
        monkeypatch.delenv(name, raising=False)


def test_defaults_on_a_four_core_cpu() -> None:
    s = load_settings([], {}, cores=4)
    assert (s.host, s.port, s.engine, s.model, s.device) == (
        "0.0.0.0",
        8080,
        "piper-onnx",
        "en_US-joe-medium",
        "cpu",
    )
    assert (s.workers, s.threads_per_worker) == (1, 4)
    assert (s.max_queue, s.max_batch_size, s.batch_window_ms) == (64, 1, 5.0)
    assert (s.request_timeout_s, s.drain_grace_s, s.max_input_chars) == (120.0, 30.0, 4096)
    assert s.log_level == "info"


def test_every_setting_comes_from_its_env_var() -> None:
    env = {
        "VOICEFLEET_HOST": "127.0.0.2",
        "VOICEFLEET_PORT": "9001",
        "VOICEFLEET_ENGINE": "piper-onnx",
        "VOICEFLEET_MODEL": "/models/de_DE-thorsten-medium.onnx",
        "VOICEFLEET_DEVICE": "CUDA:1",
        "VOICEFLEET_WORKERS": "2",
        "VOICEFLEET_THREADS_PER_WORKER": "3",
        "VOICEFLEET_MAX_QUEUE": "10",
        "VOICEFLEET_MAX_BATCH_SIZE": "4",
        "VOICEFLEET_BATCH_WINDOW_MS": "2.5",
        "VOICEFLEET_REQUEST_TIMEOUT_S": "30",
        "VOICEFLEET_DRAIN_GRACE_S": "12",
        "VOICEFLEET_MAX_INPUT_CHARS": "1000",
        "VOICEFLEET_LOG_LEVEL": "DEBUG",
    }
    s = load_settings([], env, cores=2)
    assert s.host == "127.0.0.2"
    assert s.port == 9001
    assert s.model == "/models/de_DE-thorsten-medium.onnx"
    assert s.device == "cuda:1"  # the core bound applies to CPU only
    assert (s.workers, s.threads_per_worker, s.max_queue, s.max_batch_size) == (2, 3, 10, 4)
    assert (s.batch_window_ms, s.request_timeout_s, s.drain_grace_s) == (2.5, 30.0, 12.0)
    assert s.max_input_chars == 1000
    assert s.log_level == "debug"


def test_flag_beats_env_and_voicefleet_port_beats_port() -> None:
    assert load_settings([], {"PORT": "9000"}, cores=2).port == 9000
    assert load_settings([], {"PORT": "9000", "VOICEFLEET_PORT": "9100"}, cores=2).port == 9100
    s = load_settings(["--port", "9200", "--max-queue", "5"], {"VOICEFLEET_PORT": "9100"}, cores=2)
    assert (s.port, s.max_queue) == (9200, 5)


def test_threads_default_to_cores_divided_by_workers() -> None:
    assert load_settings(["--workers", "2"], {}, cores=8).threads_per_worker == 4
    assert load_settings(["--workers", "3"], {}, cores=8).threads_per_worker == 2
    with pytest.raises(SettingsError, match="exceeds the 2 core"):
        load_settings(["--workers", "3"], {}, cores=2)  # 3 workers x at least 1 thread


def test_cpu_oversubscription_is_refused_naming_both_settings() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(["--workers", "2", "--threads-per-worker", "2"], {}, cores=2)
    assert "VOICEFLEET_WORKERS x VOICEFLEET_THREADS_PER_WORKER" in str(info.value)


def test_batching_defaults_off_on_cpu_and_on_for_cuda() -> None:
    assert load_settings([], {}, cores=2).max_batch_size == 1
    assert load_settings(["--device", "cuda"], {}, cores=2).max_batch_size == 8


def test_bad_values_are_reported_by_their_env_var_all_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings([], {"VOICEFLEET_WORKERS": "many", "VOICEFLEET_MAX_QUEUE": "x"}, cores=2)
    assert "VOICEFLEET_WORKERS: not an integer: 'many'" in str(info.value)
    assert "VOICEFLEET_MAX_QUEUE" in str(info.value)
    with pytest.raises(SettingsError, match="--batch-window-ms: not a finite number"):
        load_settings(["--batch-window-ms", "nan"], {}, cores=2)


@pytest.mark.parametrize(
    ("args", "env_name"),
    [
        (["--device", "tpu"], "VOICEFLEET_DEVICE"),
        (["--device", "cpu,cuda:1"], "VOICEFLEET_DEVICE"),
        (["--max-queue", "0"], "VOICEFLEET_MAX_QUEUE"),
        (["--port", "70000"], "VOICEFLEET_PORT"),
        (["--request-timeout-s", "0"], "VOICEFLEET_REQUEST_TIMEOUT_S"),
        (["--drain-grace-s", "-1"], "VOICEFLEET_DRAIN_GRACE_S"),
        (["--log-level", "loud"], "VOICEFLEET_LOG_LEVEL"),
        (["--max-batch-size", "0"], "VOICEFLEET_MAX_BATCH_SIZE"),
        (["--max-input-chars", "0"], "VOICEFLEET_MAX_INPUT_CHARS"),
    ],
)
def test_out_of_range_values_are_refused(args: list[str], env_name: str) -> None:
    with pytest.raises(SettingsError, match=env_name):
        load_settings(args, {}, cores=2)


def test_help_documents_every_env_var_and_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_settings(["--help"], {}, cores=6)
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in ENV_NAMES:
        assert f"${name}" in out, name
    assert "default: cores // workers = 6 here" in out
    assert "default: 1 on cpu, 8 on cuda" in out
    assert "default: 0.0.0.0" in out
    assert "default: 4096" in out


def test_parser_offers_threads_as_a_short_alias() -> None:
    assert load_settings(["--threads", "1"], {}, cores=2).threads_per_worker == 1
    assert build_parser(2).prog == "voicefleet-server"


def test_settings_constructed_directly_are_validated() -> None:
    with pytest.raises(SettingsError, match="VOICEFLEET_WORKERS"):
        Settings(workers=0, cores=2, threads_per_worker=1)
    assert Settings(cores=2, threads_per_worker=2).summary().startswith("model=en_US-joe-medium")


def test_available_cores_honours_a_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    unlimited = available_cores(tmp_path / "missing")
    cpu_max.write_text("max 100000\n")
    assert available_cores(cpu_max) == unlimited
    cpu_max.write_text("150000 100000\n")
    assert available_cores(cpu_max) == 1
    cpu_max.write_text("50000 100000\n")
    assert available_cores(cpu_max) == 1
    cpu_max.write_text("garbage\n")
    assert available_cores(cpu_max) == unlimited


def test_settings_and_load_settings_agree_on_every_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_server_env(monkeypatch)
    assert Settings(cores=4) == load_settings([], {}, cores=4)
    on_gpu = Settings(cores=4, device="cuda")
    assert on_gpu == load_settings(["--device", "cuda"], {}, cores=4)
    assert (on_gpu.max_batch_size, Settings(cores=4).max_batch_size) == (8, 1)


def test_settings_reads_the_environment_like_load_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clear_server_env(monkeypatch)
    env = {"VOICEFLEET_MAX_QUEUE": "7", "PORT": "9000", "VOICEFLEET_DEVICE": "CUDA"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings(cores=2) == load_settings([], env, cores=2)
    assert (Settings(cores=2).max_queue, Settings(cores=2).port) == (7, 9000)


def test_env_names_are_the_shared_contract_names() -> None:
    from voicefleet_api import env as names
    from voicefleet_inference.settings import env_names

    contract = {
        v
        for k, v in vars(names).items()
        # prefixes name no variable; FETCH_* belong to voicefleet-fetch (test_model_download)
        if k.isupper() and k != "POD_IP" and not k.endswith("PREFIX") and not k.startswith("FETCH_")
    }
    fields = {n for f in Settings.model_fields if f != "cores" for n in env_names(f)}
    assert fields - {"PORT"} == contract


def test_engine_workers_take_the_listed_devices_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """``engine_factory`` with a fake ``create_engine`` (our seam): worker i -> device i mod n."""
    from voicefleet_inference.engines import registry
    from voicefleet_inference.server.runner import engine_factory

    created: list[str] = []
    caches: list[Path | None] = []

    def create(
        engine: str, model: str, device: str, threads: int, *, calibration_cache: Path | None
    ) -> None:
        created.append(device)
        caches.append(calibration_cache)

    monkeypatch.setattr(registry, "create_engine", create)
    settings = load_settings(["--device", "cuda:0,cuda:1", "--workers", "3"], {}, cores=2)
    factory = engine_factory(settings)
    for _ in range(3):
        factory()
    assert created == ["cuda:0", "cuda:1", "cuda:0"]
    assert caches == [None] * 3  # no directory: every load calibrates
    assert load_settings([], {}, cores=2).devices == ("cpu",)
    cached = load_settings([], {"VOICEFLEET_CALIBRATION_CACHE": "/var/cache/vf"}, cores=2)
    engine_factory(cached)()
    assert caches[-1] == Path("/var/cache/vf")


def test_glibc_takes_fixed_malloc_thresholds() -> None:
    """The server's start fixes glibc's mmap/trim thresholds (docs/server.md, Memory)."""
    from voicefleet_inference.malloc_tuning import fix_malloc_thresholds

    assert fix_malloc_thresholds() is True
