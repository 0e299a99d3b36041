"""vits-torch against the onnxruntime reference, with the real bundled voice and espeak-ng.

With both noise scales at 0 the two runtimes compute the same function, so the torch
engine must give the same per-phoneme durations (bit for bit: they are integers) and the
same audio up to float32 rounding. The tolerance is SNR >= 40 dB over every sentence
(measured here: worst 85 dB). The durations come from the ONNX graph itself: the test
adds the output of its one ``Ceil`` node (the rounded-up durations) as a graph output.

CPU only, one torch thread (the machine is shared); one model and one engine per module.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest
import torch
from serverprocs import launch, wait_ready

from voicefleet_inference.engines.base import EngineError, SynthesisRequest
from voicefleet_inference.engines.registry import (
    BUNDLED_VOICE,
    EngineConfigError,
    create_engine,
    resolve_piper_model,
)
from voicefleet_inference.engines.vits_torch.engine import (
    VitsTorchEngine,
    plan_buckets,
    plan_windows,
)
from voicefleet_inference.engines.vits_torch.loader import VitsLoadError, build_model
from voicefleet_inference.engines.vits_torch.model import VitsModel
from voicefleet_localcluster.procs import stop_process

# 24 short sentences (CPU time is shared): questions, exclamations, numbers, currency,
# abbreviations, one word, clauses; about 30 s of audio in all.
SENTENCES = (
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "How are you today?",
    "Wow!",
    "Call Dr. Smith.",
    "It costs $3.50.",
    "Yes.",
    "See you at 10:30, Tuesday.",
    "She sells sea shells.",
    "Is this real, or fantasy?",
    "Scale on queued work.",
    "Unbelievable!",
    "A quiet rain fell all night.",
    "Left, then right.",
    "Numbers like 42 and 1999.",
    "GPUs batch requests.",
    "Why not?",
    "Streaming starts early.",
    "Thank you very much.",
    "Zebras, yaks and quokkas.",
    "Stop right there!",
    "OK.",
    "Good morning, everyone.",
    "First audio, as early as possible.",
)
LENGTH_SCALES = (1.0, 0.8, 1.25)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def paths() -> tuple[Path, Path]:
    _, onnx_path, json_path = resolve_piper_model(BUNDLED_VOICE)
    return onnx_path, json_path


@pytest.fixture(scope="module")
def engine(calibration_cache: Path) -> VitsTorchEngine:
    created = create_engine(
        "vits-torch", BUNDLED_VOICE, "cpu", 1, calibration_cache=calibration_cache
    )
    assert isinstance(created, VitsTorchEngine)
    created.load()
    created.noise_scale = 0.0
    created.noise_w = 0.0
    return created


@pytest.fixture(scope="module")
def reference(
    paths: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> ort.InferenceSession:
    """The voice's own graph with its rounded-up durations exposed as a second output."""
    proto = onnx.load(str(paths[0]))
    (ceil,) = [n for n in proto.graph.node if n.op_type == "Ceil"]
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info(ceil.output[0], onnx.TensorProto.FLOAT, None)
    )
    path = tmp_path_factory.mktemp("ref") / "with_durations.onnx"
    onnx.save(proto, str(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def snr_db(ref: npt.NDArray[np.float32], got: npt.NDArray[np.float32]) -> float:
    err = np.sum((ref.astype(np.float64) - got) ** 2)
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(err, 1e-30)))


def ids_of(engine: VitsTorchEngine, text: str) -> list[int]:
    """The ids of ``text``'s first sentence ("Dr." ends one for espeak)."""
    return engine.phoneme_ids(engine.sentences(text)[0])


def test_matches_onnxruntime_durations_and_audio(
    engine: VitsTorchEngine, reference: ort.InferenceSession
) -> None:
    model = engine._model
    assert isinstance(model, VitsModel)
    worst = np.inf
    for n, text in enumerate(SENTENCES):
        ids = ids_of(engine, text)
        scale = LENGTH_SCALES[n % len(LENGTH_SCALES)]
        audio_ref, dur_ref = reference.run(
            None,
            {
                "input": np.array([ids], dtype=np.int64),
                "input_lengths": np.array([len(ids)], dtype=np.int64),
                "scales": np.array([0.0, scale, 0.0], dtype=np.float32),
            },
        )
        with torch.inference_mode():
            latent = model.latent(
                torch.tensor([ids]), torch.tensor([len(ids)]), torch.tensor([scale]), 0.0, 0.0
            )
            audio = model.dec(latent.z)[0].numpy()
        expected = np.asarray(dur_ref).reshape(-1).astype(np.int64)
        assert latent.durations[0].tolist() == expected.tolist(), text
        ref = np.asarray(audio_ref, dtype=np.float32).reshape(-1)
        assert audio.shape == ref.shape, text
        snr = snr_db(ref, audio)
        assert snr >= 40.0, f"{text!r}: SNR {snr:.1f} dB"
        worst = min(worst, snr)
    print(f"worst SNR over {len(SENTENCES)} sentences: {worst:.1f} dB")


def whole(engine: VitsTorchEngine, requests: list[SynthesisRequest]) -> list[np.ndarray]:
    out: list[list[np.ndarray]] = [[] for _ in requests]
    for chunk in engine.synthesize_batch(requests):
        out[chunk.index].append(chunk.samples)
    return [np.concatenate(parts) for parts in out]


def test_batched_equals_unbatched_per_item(engine: VitsTorchEngine) -> None:
    requests = [
        SynthesisRequest(text="Yes. The quick brown fox jumps."),
        SynthesisRequest(text="How are you today?", speed=1.4),
        SynthesisRequest(text="A quiet, steady rain fell all night."),
        SynthesisRequest(text="Wow! That was fast.", speed=0.8),
    ]
    engine.stream_windows = False
    try:
        batched = whole(engine, requests)
        alone = [whole(engine, [r])[0] for r in requests]
    finally:
        engine.stream_windows = True
    for got, want in zip(batched, alone, strict=True):
        assert got.shape == want.shape  # exact lengths: no padded tail left
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_windowed_equals_whole(engine: VitsTorchEngine) -> None:
    requests = [
        SynthesisRequest(text="Streaming starts early. Then it goes on."),
        SynthesisRequest(text="Hello there.", speed=1.2),
    ]
    engine.stream_windows = False
    try:
        reference = whole(engine, requests)
    finally:
        engine.stream_windows = True
    default_window, engine.first_window = engine.first_window, 4
    try:
        chunks = list(engine.synthesize_batch(requests))
    finally:
        engine.first_window = default_window
    assert sum(c.index == 0 for c in chunks) > 4  # several windows per sentence
    assert [c.is_last for c in chunks if c.index == 0][-1]
    assert sum(c.is_last for c in chunks) == 2
    joined = [np.concatenate([c.samples for c in chunks if c.index == k]) for k in (0, 1)]
    for got, want in zip(joined, reference, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_first_window_is_short(engine: VitsTorchEngine) -> None:
    first = next(iter(engine.synthesize_batch([SynthesisRequest(text=SENTENCES[12])])))
    assert len(first.samples) == engine.first_window * 256
    assert not first.is_last


def _mutated(paths: tuple[Path, Path], tmp_path: Path, how: str) -> Path:
    proto = onnx.load(str(paths[0]))
    inits = proto.graph.initializer
    if how == "shape":
        (t,) = [i for i in inits if i.name == "dec.conv_post.weight"]
        arr = onnx.numpy_helper.to_array(t)[:, :16]
        t.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(arr), t.name))
    elif how == "missing":
        (t,) = [i for i in inits if i.name == "dp.flows.0.m"]
        inits.remove(t)
    elif how == "extra":
        inits.append(onnx.numpy_helper.from_array(np.ones((3, 3), np.float32), "stray.weight"))
    path = tmp_path / f"{how}.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("shape", "dec.conv_post.weight"),
        ("missing", "dp.flows.0.m"),
        ("extra", "stray.weight"),
    ],
)
def test_mismatched_model_refused(
    paths: tuple[Path, Path], tmp_path: Path, how: str, message: str
) -> None:
    with pytest.raises(VitsLoadError, match=message.replace(".", r"\.")):
        build_model(_mutated(paths, tmp_path, how))


def test_corrupted_model_refused(paths: tuple[Path, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(paths[0].read_bytes()[:100_000])
    with pytest.raises(VitsLoadError, match="cannot read"):
        build_model(broken)
    # Through the engine, the same error is an EngineError naming the file.
    (tmp_path / "broken.onnx.json").write_bytes(paths[1].read_bytes())
    created = create_engine("vits-torch", str(broken), "cpu", 1)
    with pytest.raises(EngineError, match=r"broken\.onnx"):
        created.load()


def test_cuda_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the error path is for machines without one")
    created = create_engine("vits-torch", BUNDLED_VOICE, "cuda:0", 1)
    with pytest.raises(EngineError, match="no CUDA device"):
        created.load()


def test_config_errors() -> None:
    with pytest.raises(EngineConfigError):
        create_engine("vits-torch", BUNDLED_VOICE, "tpu", 1)
    with pytest.raises(EngineConfigError):
        create_engine("vits-torch", BUNDLED_VOICE, "cpu", 0)


def test_plans() -> None:
    assert plan_windows(100, 32) == [(0, 32), (32, 96), (96, 100)]
    assert plan_windows(5, 32) == [(0, 5)]
    assert plan_buckets([10, 50, 12, 30, 11], max_batch=2) == [[0, 4], [2], [3, 1]]
    assert plan_buckets([10, 30], max_batch=8) == [[0], [1]]


@pytest.mark.heavy  # a server process importing torch and loading the voice: ~15 CPU-s
def test_the_server_serves_vits_torch_streaming_inside_sentences(tmp_path: Path) -> None:
    """``voicefleet-server --engine vits-torch``: a streamed WAV arrives in window-sized
    pieces (more chunks than sentences) and holds the whole, non-silent audio."""
    server = wait_ready(
        launch(
            tmp_path / "server.log", "--engine", "vits-torch", "--workers", "1", "--threads", "1"
        ),
        timeout_s=180,
    )
    base = server.base_url
    try:
        body = {
            "model": BUNDLED_VOICE,
            "input": "Streaming starts early. It goes on.",
            "voice": "default",
            "response_format": "wav",
            "stream_format": "audio",
        }
        pieces = 0
        data = bytearray()
        with httpx.stream("POST", f"{base}/v1/audio/speech", json=body, timeout=120) as resp:
            assert resp.status_code == 200, resp.read()
            for chunk in resp.iter_raw():
                pieces += 1
                data.extend(chunk)
        assert pieces > 3, pieces  # 2 sentences, several windows each
        samples = np.frombuffer(bytes(data[44:]), dtype="<i2").astype(np.float32) / 32768
        assert 1.0 < len(samples) / 22050 < 6.0
        assert float(np.sqrt(np.mean(samples**2))) > 0.01
    finally:
        assert stop_process(server.proc, grace=60) == 0, server.log()
