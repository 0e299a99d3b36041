"""Multi-speaker Piper voices in both engines: load, pick a speaker, agree with each other.

No multi-speaker weights ship on PyPI, so this module builds one in its temp dir: the
bundled voice's graph (real text encoder, durations, flows and decoder, so the output is
speech) with Piper's multi-speaker conditioning added the way Piper's exporter lays it
out: a graph input ``sid``; the speaker table ``emb_g.weight`` (random rows); ``dp.cond``
added to the duration predictor after ``dp.pre``; each flow WaveNet's ``cond_layer``
(an anonymous ``onnx::Conv_*`` weight named by its ``Conv`` node, as weight-normed convs
are exported), whose slice ``i`` is added to ``in_layers.i`` before the gate (where the
one-speaker graph adds zeros); and ``dec.cond`` added after ``dec.conv_pre``. Building on
the exported graph rather than exporting our own torch module keeps the test honest
about the layout real voices have (our module would export under our own names and
convolution shapes, and only prove that we read what we write).

Then: onnxruntime runs it (``piper-onnx``), our loader reads it (``vits-torch``),
different speakers give different audio for the same text and zero noise, and with both
noise scales at 0 the two engines give the same durations and audio within the parity
bound of the one-speaker test (SNR >= 40 dB). The server lists the speakers and refuses
an unknown one with a 400 that names them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from serverprocs import ServerProc, launch, stop, wait_ready

from voicefleet_inference.engines.base import EngineInputError, SynthesisRequest
from voicefleet_inference.engines.piper_onnx import PiperOnnxEngine
from voicefleet_inference.engines.registry import BUNDLED_VOICE, resolve_piper_model
from voicefleet_inference.engines.vits_torch.engine import VitsTorchEngine
from voicefleet_inference.engines.vits_torch.model import VitsModel

SPEAKERS = {"alice": 0, "bob": 1, "carol": 2}
GIN = 64
TEXT = "The quick brown fox jumps over the lazy dog."


def _init(name: str, array: npt.NDArray[np.floating]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name)


def _conv(name: str, x: str, weight: str, bias: str, out: str) -> onnx.NodeProto:
    return helper.make_node(
        "Conv",
        [x, weight, bias],
        [out],
        name=name,
        dilations=[1],
        group=1,
        kernel_shape=[1],
        pads=[0, 0],
        strides=[1],
    )


def make_multispeaker_voice(directory: Path, seed: int = 7) -> Path:
    """A 3-speaker Piper voice (``.onnx`` + ``.onnx.json``) from the bundled one."""
    _, src, src_config = resolve_piper_model(BUNDLED_VOICE)
    proto = onnx.load(str(src))
    graph = proto.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in graph.initializer}
    shape = {name: tuple(t.dims) for name, t in inits.items()}

    # The one-speaker export keeps the phoneme table under the name "sid"; free the name.
    inits["sid"].name = "enc_p.emb.weight"
    for node in graph.node:
        node.input[:] = ["enc_p.emb.weight" if i == "sid" else i for i in node.input]
    graph.input.append(helper.make_tensor_value_info("sid", onnx.TensorProto.INT64, ["batch"]))

    new_inits = [_init("emb_g.weight", rng.normal(0, 1, (len(SPEAKERS), GIN)))]
    new_nodes = [
        helper.make_node(
            "Gather", ["emb_g.weight", "sid"], ["/emb_g/Gather_output_0"], name="/emb_g/Gather"
        ),
        helper.make_node(
            "Unsqueeze", ["/emb_g/Gather_output_0", "/g_axes"], ["g"], name="/Unsqueeze_g"
        ),
    ]
    new_inits.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "/g_axes"))

    def redirect(old: str, new: str, skip: str) -> None:
        for node in graph.node:
            if node.name != skip:
                node.input[:] = [new if i == old else i for i in node.input]

    def add_after(conv_name: str, module: str, channels: int, scale: float) -> None:
        """``module``'s 1x1 conv of g, added to ``conv_name``'s output for its consumers."""
        (conv,) = [n for n in graph.node if n.name == conv_name]
        out = conv.output[0]
        weight, bias = f"{module}.cond.weight", f"{module}.cond.bias"
        new_inits.append(_init(weight, rng.normal(0, scale, (channels, GIN, 1))))
        new_inits.append(_init(bias, np.zeros(channels)))
        new_nodes.append(_conv(f"/{module}/cond/Conv", "g", weight, bias, f"/{module}/cond_out"))
        summed = f"/{module}/cond_sum"
        redirect(out, summed, skip="")
        new_nodes.append(
            helper.make_node(
                "Add", [out, f"/{module}/cond_out"], [summed], name=f"/{module}/AddCond"
            )
        )

    add_after("/dp/pre/Conv", "dp", shape["dp.pre.weight"][0], 0.3)
    add_after("/dec/conv_pre/Conv", "dec", shape["dec.conv_pre.weight"][0], 0.3)

    flows = sorted(
        {
            n.name.split("/")[2]
            for n in graph.node
            if n.name.startswith("/flow/flows.") and "/enc/in_layers." in n.name
        }
    )
    for flow in flows:
        layers = sorted(
            (
                n
                for n in graph.node
                if n.name.startswith(f"/flow/{flow}/enc/in_layers.") and n.op_type == "Conv"
            ),
            key=lambda n: int(n.name.split("in_layers.")[1].split("/")[0]),
        )
        two_h = shape[f"flow.{flow}.enc.in_layers.0.bias"][0]
        weight = f"onnx::Conv_cond_{flow}"  # weight-normed in Piper: anonymous, named by node
        bias = f"flow.{flow}.enc.cond_layer.bias"
        new_inits.append(_init(weight, rng.normal(0, 0.05, (two_h * len(layers), GIN, 1))))
        new_inits.append(_init(bias, np.zeros(two_h * len(layers))))
        cond_out = f"/flow/{flow}/enc/cond_layer/Conv_output_0"
        new_nodes.append(_conv(f"/flow/{flow}/enc/cond_layer/Conv", "g", weight, bias, cond_out))
        for i, layer in enumerate(layers):
            (add,) = [
                n
                for n in graph.node
                if n.op_type == "Add"
                and n.input[0] == layer.output[0]
                and "ConstantOfShape" in n.input[1]
            ]
            lo, hi, ax = (f"/flow/{flow}/cond_{i}_{k}" for k in ("lo", "hi", "ax"))
            new_inits += [
                numpy_helper.from_array(np.array([two_h * i], dtype=np.int64), lo),
                numpy_helper.from_array(np.array([two_h * (i + 1)], dtype=np.int64), hi),
                numpy_helper.from_array(np.array([1], dtype=np.int64), ax),
            ]
            sliced = f"/flow/{flow}/enc/cond_slice_{i}"
            new_nodes.append(
                helper.make_node(
                    "Slice",
                    [cond_out, lo, hi, ax],
                    [sliced],
                    name=f"/flow/{flow}/enc/Slice_cond_{i}",
                )
            )
            add.input[1] = sliced  # x_in + g_l, where the one-speaker graph adds zeros

    graph.initializer.extend(new_inits)
    # Put the new nodes first: they depend only on sid and initializers, and every later
    # consumer then sees its inputs produced before it (a topologically sorted graph).
    cond_nodes = [n for n in new_nodes if not n.name.endswith("AddCond")]
    adds = [n for n in new_nodes if n.name.endswith("AddCond")]
    old_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(cond_nodes)
    for node in old_nodes:
        graph.node.append(node)
        for add in adds:
            if add.input[0] in node.output:
                graph.node.append(add)
    onnx.checker.check_model(proto)

    out = directory / "xx_XX-trio-medium.onnx"
    onnx.save(proto, str(out))
    config = json.loads(src_config.read_text())
    config["num_speakers"] = len(SPEAKERS)
    config["speaker_id_map"] = SPEAKERS
    (directory / (out.name + ".json")).write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def voice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return make_multispeaker_voice(tmp_path_factory.mktemp("trio"))


@pytest.fixture(scope="module")
def onnx_engine(voice: Path, calibration_cache: Path) -> PiperOnnxEngine:
    config = voice.with_name(voice.name + ".json")
    engine = PiperOnnxEngine(voice, config, model_name="trio", calibration_cache=calibration_cache)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def torch_engine(voice: Path, calibration_cache: Path) -> VitsTorchEngine:
    config = voice.with_name(voice.name + ".json")
    engine = VitsTorchEngine(
        voice, config, model_name="trio", stream_windows=False, calibration_cache=calibration_cache
    )
    engine.load()
    engine.noise_scale = 0.0
    engine.noise_w = 0.0
    return engine


def snr_db(ref: npt.NDArray[np.float32], got: npt.NDArray[np.float32]) -> float:
    err = np.sum((ref.astype(np.float64) - got) ** 2)
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(err, 1e-30)))


def onnx_audio(engine: PiperOnnxEngine, ids: list[int], speaker: int) -> npt.NDArray[np.float32]:
    session = engine._session
    assert session is not None
    (out,) = session.run(
        ["output"],
        {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
            "sid": np.array([speaker], dtype=np.int64),
        },
    )
    return np.asarray(out, dtype=np.float32).reshape(-1)


def torch_audio(engine: VitsTorchEngine, ids: list[int], speaker: int) -> npt.NDArray[np.float32]:
    model = engine._model
    assert isinstance(model, VitsModel)
    with torch.inference_mode():
        latent = model.latent(
            torch.tensor([ids]),
            torch.tensor([len(ids)]),
            torch.tensor([1.0]),
            0.0,
            0.0,
            torch.tensor([speaker]),
        )
        audio: npt.NDArray[np.float32] = model.dec(latent.z, None, latent.g)[0].numpy()
        return audio


def test_both_engines_list_the_speakers(
    onnx_engine: PiperOnnxEngine, torch_engine: VitsTorchEngine
) -> None:
    assert tuple(onnx_engine.speakers) == ("alice", "bob", "carol")
    assert tuple(torch_engine.speakers) == ("alice", "bob", "carol")
    model = torch_engine._model
    assert isinstance(model, VitsModel)
    assert (model.spec.n_speakers, model.spec.gin_channels) == (3, GIN)


def test_engines_agree_for_every_speaker_within_the_parity_bound(
    onnx_engine: PiperOnnxEngine, torch_engine: VitsTorchEngine
) -> None:
    ids = torch_engine.phoneme_ids(torch_engine.sentences(TEXT)[0])
    worst = np.inf
    for speaker in SPEAKERS.values():
        ref = onnx_audio(onnx_engine, ids, speaker)
        got = torch_audio(torch_engine, ids, speaker)
        assert got.shape == ref.shape, f"speaker {speaker}: durations differ"
        snr = snr_db(ref, got)
        assert snr >= 40.0, f"speaker {speaker}: SNR {snr:.1f} dB"
        worst = min(worst, snr)
    print(f"worst torch/onnx SNR over {len(SPEAKERS)} speakers: {worst:.1f} dB")


def test_different_speakers_give_different_audio(
    onnx_engine: PiperOnnxEngine, torch_engine: VitsTorchEngine
) -> None:
    ids = torch_engine.phoneme_ids(torch_engine.sentences(TEXT)[0])
    for alice, bob in (
        (onnx_audio(onnx_engine, ids, 0), onnx_audio(onnx_engine, ids, 1)),
        (torch_audio(torch_engine, ids, 0), torch_audio(torch_engine, ids, 1)),
    ):
        assert np.max(np.abs(alice)) > 0.05, "speech, not silence"
        n = min(alice.size, bob.size)
        assert alice.size != bob.size or snr_db(alice[:n], bob[:n]) < 10.0


def test_requests_pick_speakers_by_name_or_number(
    onnx_engine: PiperOnnxEngine, torch_engine: VitsTorchEngine
) -> None:
    for engine in (onnx_engine, torch_engine):
        by_name = [
            np.concatenate(
                [c.samples for c in engine.synthesize_batch([SynthesisRequest(TEXT, s)])]
            )
            for s in ("alice", "bob", "1")
        ]
        if engine is torch_engine:  # noise off: the same request gives the same audio
            assert np.array_equal(by_name[1], by_name[2]), "'1' is bob"
        assert by_name[0].shape != by_name[1].shape or not np.allclose(by_name[0], by_name[1])
        with pytest.raises(
            EngineInputError, match="unknown speaker 'dave'; this model has alice, bob, carol"
        ):
            list(engine.synthesize_batch([SynthesisRequest(TEXT, "dave")]))


def test_a_batch_mixes_speakers_and_keeps_each_ones_audio(torch_engine: VitsTorchEngine) -> None:
    alone = {
        s: np.concatenate(
            [c.samples for c in torch_engine.synthesize_batch([SynthesisRequest(TEXT, s)])]
        )
        for s in ("alice", "carol")
    }
    out: dict[int, list[npt.NDArray[np.float32]]] = {0: [], 1: []}
    for chunk in torch_engine.synthesize_batch(
        [SynthesisRequest(TEXT, "alice"), SynthesisRequest(TEXT, "carol")]
    ):
        out[chunk.index].append(chunk.samples)
    for k, s in enumerate(("alice", "carol")):
        together = np.concatenate(out[k])
        assert together.shape == alone[s].shape
        assert snr_db(alone[s], together) >= 40.0


@pytest.fixture(scope="module")
def trio_server(voice: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A real voicefleet-server process on the 3-speaker voice (piper-onnx), one for the
    module: the tests below only ask it for speech and lists. One thread, as the module's
    engines: its start reuses their calibration (tests/conftest.py)."""
    log = tmp_path_factory.mktemp("trio-server") / "server.log"
    server = wait_ready(launch(log, "--model", str(voice), "--workers", "1", "--threads", "1"))
    try:
        yield server
    finally:
        stop(server)


def test_the_server_lists_speakers_and_picks_one_by_voice(trio_server: ServerProc) -> None:
    base = trio_server.base_url
    models = httpx.get(f"{base}/v1/models", timeout=10).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["xx_XX-trio-medium", "tts-1", "tts-1-hd"]
    assert models["data"][0]["voices"] == ["default", "alice", "bob", "carol"]
    voices = httpx.get(f"{base}/v1/voices", timeout=10).json()
    assert voices["multi_speaker"] is True
    assert voices["data"] == [
        {"id": "alice", "speaker_id": 0},
        {"id": "bob", "speaker_id": 1},
        {"id": "carol", "speaker_id": 2},
    ]

    def speak(voice_name: str) -> httpx.Response:
        return httpx.post(
            f"{base}/v1/audio/speech",
            json={
                "model": "xx_XX-trio-medium",
                "input": "Hello there.",
                "voice": voice_name,
                "response_format": "wav",
            },
            timeout=60,
        )

    for name in ("bob", "2", "default"):
        answer = speak(name)
        assert answer.status_code == 200, (name, answer.text)
        assert answer.content[:4] == b"RIFF"
    refused = speak("dave")
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "voice"
    assert "accepted: default, alice, bob, carol (or a speaker number 0-2)" in error["message"]


async def test_the_openai_sdk_picks_a_speaker_through_the_router(trio_server: ServerProc) -> None:
    """OpenAI's own SDK -> the router (static upstream) -> a real server on the trio voice."""
    import io
    import wave

    import openai
    from routerprocs import running_router

    from voicefleet_inference.router.settings import RouterSettings

    settings = RouterSettings(
        static_upstreams=[f"trio={trio_server.base_url}#xx_XX-trio-medium"],
        poll_interval_s=0.1,
    )
    async with running_router(settings) as (_, url):
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

        async def speak(speaker: str) -> npt.NDArray[np.float64]:
            answer = await client.audio.speech.create(
                model="trio",
                voice=speaker,
                input="Hello there.",
                response_format="wav",
            )
            with wave.open(io.BytesIO(answer.content)) as w:
                frames = w.readframes(w.getnframes())
            return np.frombuffer(frames, dtype="<i2") / 32768.0

        bob, carol = await speak("bob"), await speak("carol")
        assert np.sqrt(np.mean(bob**2)) > 0.01, "speech, not silence"
        n = min(bob.size, carol.size)
        assert bob.size != carol.size or not np.allclose(bob[:n], carol[:n], atol=1e-3)
        with pytest.raises(openai.BadRequestError) as refused:
            await speak("dave")
        assert "accepted: default, alice, bob, carol" in str(refused.value)
        await client.close()
