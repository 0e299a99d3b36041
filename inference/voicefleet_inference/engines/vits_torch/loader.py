"""Build a :class:`~.model.VitsModel` from a Piper ``.onnx`` file: shapes, attributes, weights.

The exported graph is the only source: hyper-parameters come from initializer shapes and
from the attributes (dilation, stride, groups, padding) of the node that uses each weight,
so any Piper VITS voice quality loads without a table of presets. Names:

- most initializers keep their PyTorch names (``enc_p.encoder.attn_layers.0.conv_q.weight``);
- the flows' weight-normed convs were folded into anonymous ``onnx::Conv_<n>`` tensors;
  the ``Conv`` node that consumes one is named after its module
  (``/flow/flows.6/enc/in_layers.0/Conv``), which gives back the PyTorch name;
- the phoneme embedding of a one-speaker voice is stored as ``sid`` (found as the table
  of the ``/enc_p/emb`` ``Gather``), and the duration predictor's affine flow keeps
  ``exp(-logs)`` folded into ``/dp/flows.0/Exp_output_0``;
- a multi-speaker voice has the graph input ``sid`` and the speaker table ``emb_g.weight``
  (``[speakers, gin]``); its projections into the duration predictor (``dp.cond``), each
  flow's WaveNet (``flow.flows.N.enc.cond_layer``, weight-normed, so named by its node)
  and the decoder (``dec.cond``) follow the rules above.

Every float initializer that is not a scalar constant must land on a parameter, every
parameter must be filled, shapes must agree and every conv's attributes must be the ones
the module computes; anything else raises :class:`VitsLoadError` naming the tensor.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from voicefleet_inference.engines.base import EngineError
from voicefleet_inference.engines.vits_torch.model import DecoderSpec, FlowSpec, VitsModel, VitsSpec

__all__ = ["OnnxWeights", "VitsLoadError", "build_model", "read_onnx"]

_EMBEDDING = "enc_p.emb.weight"
_AFFINE_SCALE = "/dp/flows.0/Exp_output_0"


class VitsLoadError(EngineError):
    """The ``.onnx`` file is not a Piper VITS voice this implementation can run."""


@dataclass(frozen=True, slots=True)
class ConvAttrs:
    op: str
    dilation: int
    stride: int
    groups: int
    pad: int
    explicit_pad: bool = False
    """The input comes from a ``Pad`` node (the encoder's feed-forward convs pad first)."""


@dataclass(frozen=True, slots=True)
class OnnxWeights:
    """Weights under their PyTorch names and the attributes of the conv using each."""

    tensors: Mapping[str, npt.NDArray[np.float32]]
    convs: Mapping[str, ConvAttrs]


def read_onnx(path: Path) -> OnnxWeights:
    """Read and rename the initializers of ``path``; no torch involved."""
    import onnx  # deferred: only this engine needs it
    from onnx import helper, numpy_helper

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own untyped errors
        raise VitsLoadError(f"cannot read {path} as an ONNX model: {exc}") from exc
    graph = proto.graph
    raw: dict[str, npt.NDArray[Any]] = {}
    for init in graph.initializer:
        try:
            raw[init.name] = numpy_helper.to_array(init)
        except Exception as exc:
            raise VitsLoadError(f"{path}: initializer {init.name!r} is unreadable: {exc}") from exc
    names = {i.name for i in graph.input}
    if not {"input", "input_lengths", "scales"} <= names:
        raise VitsLoadError(
            f"{path}: not a Piper VITS export (inputs {sorted(names)}, expected input, "
            "input_lengths, scales)"
        )
    if ("sid" in names) != ("emb_g.weight" in raw):
        raise VitsLoadError(
            f"{path}: a multi-speaker voice needs both the input sid and the speaker "
            "embedding emb_g.weight; the graph has only one of them"
        )

    renamed: dict[str, str] = {}
    convs: dict[str, ConvAttrs] = {}
    padded = {out for node in graph.node if node.op_type == "Pad" for out in node.output}
    for node in graph.node:
        if (
            node.op_type == "Gather"
            and node.name.startswith("/enc_p/emb/")
            and node.input[0] in raw
        ):
            renamed[node.input[0]] = _EMBEDDING
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        weight = node.input[1]
        module = _module_of(node.name)
        if weight.startswith("onnx::Conv_"):
            if module is None:
                raise VitsLoadError(f"{path}: cannot name {weight!r} (its node is {node.name!r})")
            renamed[weight] = f"{module}.weight"
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        torch_name = renamed.get(weight, weight)
        convs[torch_name] = ConvAttrs(
            op=node.op_type,
            dilation=int(attrs.get("dilations", [1])[0]),
            stride=int(attrs.get("strides", [1])[0]),
            groups=int(attrs.get("group", 1)),
            pad=int(attrs.get("pads", [0])[0]),
            explicit_pad=node.input[0] in padded,
        )
    if _AFFINE_SCALE in raw:
        renamed[_AFFINE_SCALE] = "dp.flows.0.inv_scale"

    tensors: dict[str, npt.NDArray[np.float32]] = {}
    for name, array in raw.items():
        target = renamed.get(name, name)
        is_weight = array.dtype.kind == "f" and array.ndim >= 1
        if not is_weight:
            continue  # shape and scalar constants of the graph, not weights
        if target.startswith(("/", "onnx::")):
            raise VitsLoadError(f"{path}: float tensor {name!r} {array.shape} maps to no parameter")
        tensors[target] = np.ascontiguousarray(array, dtype=np.float32)
    return OnnxWeights(tensors=tensors, convs=convs)


def _module_of(node_name: str) -> str | None:
    """``/flow/flows.6/enc/in_layers.0/Conv`` -> ``flow.flows.6.enc.in_layers.0``."""
    parts = node_name.strip("/").split("/")
    if len(parts) < 2:
        return None
    return ".".join(parts[:-1])


def _indices(tensors: Mapping[str, Any], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for n in tensors if (m := rx.fullmatch(n))})


def _need(tensors: Mapping[str, npt.NDArray[np.float32]], name: str) -> tuple[int, ...]:
    if name not in tensors:
        raise VitsLoadError(f"the model lacks the tensor {name!r}")
    return tuple(int(s) for s in tensors[name].shape)


def derive_spec(weights: OnnxWeights) -> VitsSpec:
    """Hyper-parameters from shapes and conv attributes."""
    t, convs = weights.tensors, weights.convs

    def dilation(name: str) -> int:
        if name not in convs:
            raise VitsLoadError(f"no conv node uses {name!r}")
        return convs[name].dilation

    n_vocab, hidden = _need(t, _EMBEDDING)
    layers = _indices(t, r"enc_p\.encoder\.attn_layers\.(\d+)\.conv_q\.weight")
    if not layers:
        raise VitsLoadError("the model has no text-encoder attention layers")
    _, rel, k_channels = _need(t, "enc_p.encoder.attn_layers.0.emb_rel_k")
    filter_channels, _, ffn_kernel = _need(t, "enc_p.encoder.ffn_layers.0.conv_1.weight")
    inter2 = _need(t, "enc_p.proj.weight")[0]
    dp_filter = _need(t, "dp.pre.weight")[0]
    dp_kernel = _need(t, "dp.convs.convs_sep.0.weight")[2]
    dp_layers = len(_indices(t, r"dp\.convs\.convs_sep\.(\d+)\.weight"))
    dp_flows = _indices(t, r"dp\.flows\.(\d+)\.pre\.weight")
    if not dp_flows:
        raise VitsLoadError("the model has no stochastic duration predictor flows")
    proj_out = _need(t, f"dp.flows.{dp_flows[0]}.proj.weight")[0]
    flows = _indices(t, r"flow\.flows\.(\d+)\.pre\.weight")
    if not flows:
        raise VitsLoadError("the model has no coupling flows")
    wn = f"flow.flows.{flows[0]}.enc"
    wn_layers = len(_indices(t, re.escape(wn) + r"\.in_layers\.(\d+)\.weight"))
    flow_kernel = _need(t, f"{wn}.in_layers.0.weight")[2]
    dilation_rate = dilation(f"{wn}.in_layers.1.weight") if wn_layers > 1 else 1

    ups = _indices(t, r"dec\.ups\.(\d+)\.weight")
    blocks = _indices(t, r"dec\.resblocks\.(\d+)\.bias") or _indices(
        t, r"dec\.resblocks\.(\d+)\.convs[12]?\.0\.weight"
    )
    if not ups or not blocks or len(blocks) % len(ups):
        raise VitsLoadError(f"decoder has {len(ups)} upsamplers and {len(blocks)} residual blocks")
    per = len(blocks) // len(ups)
    kind = "1" if "dec.resblocks.0.convs1.0.weight" in t else "2"
    conv_list = "convs1" if kind == "1" else "convs"
    kernels: list[int] = []
    dilations: list[tuple[int, ...]] = []
    for j in range(per):
        steps = _indices(t, rf"dec\.resblocks\.{j}\.{conv_list}\.(\d+)\.weight")
        kernels.append(_need(t, f"dec.resblocks.{j}.{conv_list}.0.weight")[2])
        dilations.append(
            tuple(dilation(f"dec.resblocks.{j}.{conv_list}.{s}.weight") for s in steps)
        )
    dec_in, initial, _ = (
        _need(t, "dec.conv_pre.weight")[1],
        _need(t, "dec.conv_pre.weight")[0],
        0,
    )
    decoder = DecoderSpec(
        in_channels=dec_in,
        initial_channels=initial,
        upsample_rates=tuple(convs[f"dec.ups.{i}.weight"].stride for i in ups),
        upsample_kernels=tuple(_need(t, f"dec.ups.{i}.weight")[2] for i in ups),
        resblock_type=kind,
        resblock_kernels=tuple(kernels),
        resblock_dilations=tuple(dilations),
    )
    n_speakers, gin_channels = _need(t, "emb_g.weight") if "emb_g.weight" in t else (1, 0)
    return VitsSpec(
        n_speakers=n_speakers,
        gin_channels=gin_channels,
        n_vocab=n_vocab,
        hidden=hidden,
        filter_channels=filter_channels,
        n_heads=hidden // k_channels,
        n_layers=len(layers),
        ffn_kernel=ffn_kernel,
        window=(rel - 1) // 2,
        inter_channels=inter2 // 2,
        dp_filter=dp_filter,
        flow=FlowSpec(
            indices=tuple(flows),
            kernel=flow_kernel,
            dilation_rate=dilation_rate,
            wn_layers=wn_layers,
            dp_flow_indices=tuple(dp_flows),
            dp_kernel=dp_kernel,
            dp_layers=dp_layers,
            num_bins=(proj_out + 1) // 3,
        ),
        decoder=decoder,
    )


def _check_conv_attrs(model: VitsModel, convs: Mapping[str, ConvAttrs]) -> None:
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
            continue
        attrs = convs.get(f"{name}.weight")
        if attrs is None:
            raise VitsLoadError(f"no conv node of the graph uses {name}.weight")
        ours = ConvAttrs(
            op="ConvTranspose" if isinstance(module, nn.ConvTranspose1d) else "Conv",
            dilation=int(module.dilation[0]),
            stride=int(module.stride[0]),
            groups=int(module.groups),
            pad=int(module.padding[0]),
            explicit_pad=attrs.explicit_pad,
        )
        if attrs.explicit_pad and attrs.pad == 0:
            # Same-length output either way: Pad then an unpadded conv, or a padded conv.
            ours = dataclasses.replace(ours, pad=0)
        if ours != attrs:
            raise VitsLoadError(
                f"{name}: the graph's conv is {attrs}, this implementation has {ours}"
            )


def build_model(path: Path) -> VitsModel:
    """A float32 CPU :class:`VitsModel` with the weights of ``path``, in eval mode."""
    weights = read_onnx(path)
    try:
        spec = derive_spec(weights)
    except (KeyError, IndexError, ValueError) as exc:
        raise VitsLoadError(f"{path}: cannot derive the VITS shape: {exc!r}") from exc
    model = VitsModel(spec)
    _check_conv_attrs(model, weights.convs)
    expected = model.state_dict()
    unmapped = sorted(set(weights.tensors) - set(expected))
    missing = sorted(set(expected) - set(weights.tensors))
    if unmapped or missing:
        raise VitsLoadError(
            f"{path}: weights do not match the VITS layout: "
            f"unmapped tensors {unmapped[:5]}{'...' if len(unmapped) > 5 else ''} "
            f"({len(unmapped)}), missing parameters {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''} ({len(missing)})"
        )
    for name, array in weights.tensors.items():
        want = tuple(expected[name].shape)
        if tuple(array.shape) != want:
            raise VitsLoadError(f"{path}: tensor {name!r} has shape {array.shape}, expected {want}")
        if not np.isfinite(array).all():
            raise VitsLoadError(f"{path}: tensor {name!r} has non-finite values")
    model.load_state_dict(
        {n: torch.from_numpy(a.copy()) for n, a in weights.tensors.items()}, strict=True
    )
    return model.eval()
