"""The VITS inference path of Piper voices, in PyTorch, written from the architecture.

Only the direction Piper's exported graph runs is here: text -> prior (relative-position
transformer), stochastic duration predictor run backwards from noise, monotonic expansion
of the prior by the rounded-up durations, the residual coupling flows run backwards, and
the HiFi-GAN generator. Module and parameter names follow the names the weights carry in
the ``.onnx`` file, so :mod:`.loader` maps initializers onto :meth:`state_dict` keys and a
strict ``load_state_dict`` refuses anything missing, extra or misshapen.

Batches are padded with masks. Every layer that mixes neighbouring time steps sees zeros
beyond an item's end, exactly as it would for the item alone (the generator multiplies
its inputs by an upsampled mask before each convolution when the items differ in
length), which is what makes a batched item equal to the same item run alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DecoderSpec", "FlowSpec", "VitsModel", "VitsSpec"]


@dataclass(frozen=True, slots=True)
class DecoderSpec:
    """HiFi-GAN generator shape (read from the graph, see :mod:`.loader`)."""

    in_channels: int
    initial_channels: int
    upsample_rates: tuple[int, ...]
    upsample_kernels: tuple[int, ...]
    resblock_type: str
    """``"1"``: pairs of (dilated, undilated) convs; ``"2"``: one dilated conv per step."""
    resblock_kernels: tuple[int, ...]
    resblock_dilations: tuple[tuple[int, ...], ...]

    @property
    def hop(self) -> int:
        """Output samples per latent frame."""
        return math.prod(self.upsample_rates)

    def receptive_frames(self) -> int:
        """Latent frames on either side that can influence one output sample (an upper bound).

        Summed in output samples: ``conv_pre``, each transposed conv (its kernel spans
        ``ceil(k/u)`` input steps), the widest residual block of each stage (half-widths
        of its dilated convs add up along the chain) and ``conv_post``.
        """
        hop = self.hop
        total = 3 * hop  # conv_pre, kernel 7
        step = hop  # output samples per time step at the current rate
        for rate, kernel in zip(self.upsample_rates, self.upsample_kernels, strict=True):
            total += math.ceil(kernel / rate) * step
            step //= rate
            widest = 0
            for k, dilations in zip(self.resblock_kernels, self.resblock_dilations, strict=True):
                half = (k - 1) // 2
                per_block = sum(d * half for d in dilations)
                if self.resblock_type == "1":
                    per_block += len(dilations) * half
                widest = max(widest, per_block)
            total += widest * step
        total += 3  # conv_post, kernel 7
        return math.ceil(total / hop) + 1


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """Residual coupling flows and the duration predictor's flows."""

    indices: tuple[int, ...]
    """Positions of the coupling layers in ``flow.flows`` (a channel flip sits between)."""
    kernel: int
    dilation_rate: int
    wn_layers: int
    dp_flow_indices: tuple[int, ...]
    """Positions of the spline flows the reverse pass uses in ``dp.flows``."""
    dp_kernel: int
    dp_layers: int
    num_bins: int
    tail_bound: float = 5.0


@dataclass(frozen=True, slots=True)
class VitsSpec:
    """Every hyper-parameter the inference path needs; none is assumed for one voice."""

    n_vocab: int
    hidden: int
    filter_channels: int
    n_heads: int
    n_layers: int
    ffn_kernel: int
    window: int
    inter_channels: int
    dp_filter: int
    flow: FlowSpec
    decoder: DecoderSpec
    n_speakers: int = 1
    """Rows of the speaker embedding ``emb_g``; 1: a one-speaker voice (no ``emb_g``)."""
    gin_channels: int = 0
    """Width of the speaker embedding; 0 for a one-speaker voice."""


def _layer_norm(x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
    """LayerNorm over the channel axis of ``[batch, channels, time]``."""
    y = F.layer_norm(x.transpose(1, -1), (x.shape[1],), gamma, beta, 1e-5)
    return y.transpose(1, -1)


class ChannelNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(channels), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return _layer_norm(x, self.gamma, self.beta)


def _conv(cin: int, cout: int, kernel: int, dilation: int = 1, groups: int = 1) -> nn.Conv1d:
    conv = nn.Conv1d(
        cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2, groups=groups
    )
    conv.requires_grad_(False)
    return conv


class RelativeAttention(nn.Module):
    """Multi-head self-attention with learned relative-position terms for keys and values.

    Offsets beyond ``window`` get no relative term (the embedding table only covers
    ``-window..window``), so an item's scores do not depend on how much padding follows it.
    """

    def __init__(self, channels: int, n_heads: int, window: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.window = window
        self.k_channels = channels // n_heads
        self.conv_q = _conv(channels, channels, 1)
        self.conv_k = _conv(channels, channels, 1)
        self.conv_v = _conv(channels, channels, 1)
        self.conv_o = _conv(channels, channels, 1)
        shape = (1, 2 * window + 1, self.k_channels)
        self.emb_rel_k = nn.Parameter(torch.zeros(shape), requires_grad=False)
        self.emb_rel_v = nn.Parameter(torch.zeros(shape), requires_grad=False)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, c, t = x.shape
        h, kc, w = self.n_heads, self.k_channels, self.window
        q = self.conv_q(x).view(b, h, kc, t).transpose(2, 3) / math.sqrt(kc)
        k = self.conv_k(x).view(b, h, kc, t).transpose(2, 3)
        v = self.conv_v(x).view(b, h, kc, t).transpose(2, 3)
        scores = q @ k.transpose(2, 3)  # [b, h, t, t]
        # offset[i, j] = j - i; only |offset| <= window has a relative embedding.
        pos = torch.arange(t, device=x.device)
        offset = pos[None, :] - pos[:, None]
        near = (offset.abs() <= w).to(x.dtype)
        index = (offset.clamp(-w, w) + w).expand(b, h, t, t)
        rel_k = q @ self.emb_rel_k[0].transpose(0, 1)  # [b, h, t, 2w+1]
        scores = scores + torch.gather(rel_k, 3, index) * near
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = torch.softmax(scores, dim=-1)
        out = p @ v
        # Weight of each relative offset, per query: scatter the near-diagonal of p.
        p_rel = torch.zeros(b, h, t, 2 * w + 1, dtype=p.dtype, device=p.device)
        p_rel.scatter_add_(3, index, p * near)
        out = out + p_rel @ self.emb_rel_v[0]
        out = out.transpose(2, 3).reshape(b, c, t)
        y: Tensor = self.conv_o(out)
        return y


class FeedForward(nn.Module):
    def __init__(self, channels: int, filter_channels: int, kernel: int) -> None:
        super().__init__()
        self.conv_1 = _conv(channels, filter_channels, kernel)
        self.conv_2 = _conv(filter_channels, channels, kernel)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = torch.relu(self.conv_1(x * mask))
        y: Tensor = self.conv_2(x * mask)
        return y * mask


class Encoder(nn.Module):
    """Post-norm transformer: attention then feed-forward, each with a residual."""

    def __init__(self, spec: VitsSpec) -> None:
        super().__init__()
        n = spec.n_layers
        self.attn_layers = nn.ModuleList(
            RelativeAttention(spec.hidden, spec.n_heads, spec.window) for _ in range(n)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelNorm(spec.hidden) for _ in range(n))
        self.ffn_layers = nn.ModuleList(
            FeedForward(spec.hidden, spec.filter_channels, spec.ffn_kernel) for _ in range(n)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelNorm(spec.hidden) for _ in range(n))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        attn_mask = mask.unsqueeze(2) * mask.unsqueeze(-1)
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm1(x + attn(x, attn_mask))
            x = norm2(x + ffn(x, mask))
        return x * mask


class TextEncoder(nn.Module):
    """Phoneme ids -> prior mean and log-scale per phoneme (``[b, inter, t]`` each)."""

    def __init__(self, spec: VitsSpec) -> None:
        super().__init__()
        self.hidden = spec.hidden
        self.emb = nn.Embedding(spec.n_vocab, spec.hidden)
        self.emb.requires_grad_(False)
        self.encoder = Encoder(spec)
        self.proj = _conv(spec.hidden, spec.inter_channels * 2, 1)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = (self.emb(ids) * math.sqrt(self.hidden)).transpose(1, 2) * mask
        x = self.encoder(x, mask)
        stats = self.proj(x) * mask
        m, logs = stats.chunk(2, dim=1)
        return x, m, logs


class DilatedSeparableStack(nn.Module):
    """Depth-wise dilated convs (dilation ``kernel**i``) with 1x1 mixing, GELU, residual."""

    def __init__(self, channels: int, kernel: int, n_layers: int) -> None:
        super().__init__()
        self.convs_sep = nn.ModuleList(
            _conv(channels, channels, kernel, dilation=kernel**i, groups=channels)
            for i in range(n_layers)
        )
        self.convs_1x1 = nn.ModuleList(_conv(channels, channels, 1) for _ in range(n_layers))
        self.norms_1 = nn.ModuleList(ChannelNorm(channels) for _ in range(n_layers))
        self.norms_2 = nn.ModuleList(ChannelNorm(channels) for _ in range(n_layers))

    def forward(self, x: Tensor, mask: Tensor, g: Tensor | None = None) -> Tensor:
        if g is not None:
            x = x + g
        for sep, mix, n1, n2 in zip(
            self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2, strict=True
        ):
            y = F.gelu(n1(sep(x * mask)))
            y = F.gelu(n2(mix(y)))
            x = x + y
        return x * mask


def _spline_inverse(
    y: Tensor, widths_u: Tensor, heights_u: Tensor, derivs_u: Tensor, bound: float
) -> Tensor:
    """Inverse of a monotonic rational-quadratic spline on ``[-bound, bound]``, identity outside.

    ``widths_u``/``heights_u`` are ``[..., bins]`` unnormalised bin sizes, ``derivs_u`` the
    ``bins - 1`` interior knot slopes (the boundary slopes are 1, matching the linear
    tails). Minimum bin size and slope are 1e-3, as in neural spline flows.
    """
    min_size = 1e-3
    bins = widths_u.shape[-1]

    def knots(unnormalised: Tensor) -> tuple[Tensor, Tensor]:
        size = min_size + (1 - min_size * bins) * torch.softmax(unnormalised, dim=-1)
        cum = F.pad(torch.cumsum(size, dim=-1), (1, 0))
        cum = 2 * bound * cum - bound
        cum = torch.cat([cum[..., :1] * 0 - bound, cum[..., 1:-1], cum[..., -1:] * 0 + bound], -1)
        return cum, cum[..., 1:] - cum[..., :-1]

    cum_w, widths = knots(widths_u)
    cum_h, heights = knots(heights_u)
    # Slope 1 at both ends: softplus(c) + min == 1 for c = log(exp(1 - min) - 1).
    edge = math.log(math.exp(1 - min_size) - 1)
    derivs = min_size + F.softplus(F.pad(derivs_u, (1, 1), value=edge))

    inside = (y >= -bound) & (y <= bound)
    y_in = torch.where(inside, y, torch.zeros_like(y))
    edges = torch.cat([cum_h[..., :-1], cum_h[..., -1:] + 1e-6], dim=-1)
    idx = (torch.sum(y_in.unsqueeze(-1) >= edges, dim=-1) - 1).clamp(0, bins - 1).unsqueeze(-1)

    def pick(t: Tensor) -> Tensor:
        return torch.gather(t, -1, idx).squeeze(-1)

    x0, w = pick(cum_w[..., :-1]), pick(widths)
    y0, h = pick(cum_h[..., :-1]), pick(heights)
    d0, d1 = pick(derivs[..., :-1]), pick(derivs[..., 1:])
    s = h / w
    dy = y_in - y0
    a = dy * (d0 + d1 - 2 * s) + h * (s - d0)
    b = h * d0 - dy * (d0 + d1 - 2 * s)
    c = -s * dy
    disc = (b * b - 4 * a * c).clamp_min(0)
    theta = (2 * c) / (-b - torch.sqrt(disc))
    return torch.where(inside, theta * w + x0, y)


class SplineFlow(nn.Module):
    """Coupling layer of the duration predictor: half the channels drive a spline on the other."""

    def __init__(self, channels: int, filter_channels: int, kernel: int, spec: FlowSpec) -> None:
        super().__init__()
        self.split = channels // 2
        self.num_bins = spec.num_bins
        self.bound = spec.tail_bound
        self.filter_channels = filter_channels
        self.pre = _conv(self.split, filter_channels, 1)
        self.convs = DilatedSeparableStack(filter_channels, kernel, spec.dp_layers)
        self.proj = _conv(filter_channels, self.split * (3 * spec.num_bins - 1), 1)

    def reverse(self, x: Tensor, mask: Tensor, g: Tensor) -> Tensor:
        x0, x1 = x[:, : self.split], x[:, self.split :]
        h = self.convs(self.pre(x0), mask, g)
        h = self.proj(h) * mask
        b, c, t = x0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)  # [b, c, t, 3 * bins - 1]
        nb, scale = self.num_bins, math.sqrt(self.filter_channels)
        x1 = _spline_inverse(
            x1, h[..., :nb] / scale, h[..., nb : 2 * nb] / scale, h[..., 2 * nb :], self.bound
        )
        return torch.cat([x0, x1], dim=1) * mask


class ElementwiseAffine(nn.Module):
    """``x -> (x - m) * inv_scale``; Piper's graph stores ``exp(-logs)`` already computed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1), requires_grad=False)
        self.inv_scale = nn.Parameter(torch.ones(channels, 1), requires_grad=False)

    def reverse(self, x: Tensor, mask: Tensor) -> Tensor:
        return (x - self.m) * self.inv_scale * mask


class DurationPredictor(nn.Module):
    """Stochastic duration predictor, reverse direction: noise -> log-durations per phoneme."""

    def __init__(self, spec: VitsSpec) -> None:
        super().__init__()
        f = spec.flow
        self.pre = _conv(spec.hidden, spec.dp_filter, 1)
        if spec.gin_channels:
            self.cond = _conv(spec.gin_channels, spec.dp_filter, 1)
        self.convs = DilatedSeparableStack(spec.dp_filter, f.dp_kernel, f.dp_layers)
        self.proj = _conv(spec.dp_filter, spec.dp_filter, 1)
        flows: dict[str, nn.Module] = {"0": ElementwiseAffine(2)}
        for i in f.dp_flow_indices:
            flows[str(i)] = SplineFlow(2, spec.dp_filter, f.dp_kernel, f)
        self.flows = nn.ModuleDict(flows)
        self.order = tuple(sorted(f.dp_flow_indices, reverse=True))

    def forward(self, x: Tensor, mask: Tensor, noise: Tensor, g: Tensor | None = None) -> Tensor:
        x = self.pre(x)
        if g is not None:
            x = x + self.cond(g)
        x = self.convs(x, mask)
        x = self.proj(x) * mask
        z = noise
        # Reverse order: each spline flow is preceded (in reverse) by its channel flip;
        # the affine layer comes last and the unused first spline flow is skipped.
        for i in self.order:
            flow = self.flows[str(i)]
            assert isinstance(flow, SplineFlow)
            z = flow.reverse(torch.flip(z, [1]), mask, x)
        affine = self.flows["0"]
        assert isinstance(affine, ElementwiseAffine)
        z = affine.reverse(torch.flip(z, [1]), mask)
        return z[:, :1]


class WaveNet(nn.Module):
    """Gated dilated conv stack with skip sum (the flows' WN); weights already un-normed."""

    def __init__(
        self, hidden: int, kernel: int, dilation_rate: int, n_layers: int, gin_channels: int = 0
    ) -> None:
        super().__init__()
        self.hidden = hidden
        if gin_channels:
            # One projection of the speaker for all layers; layer i takes its 2*hidden slice.
            self.cond_layer = _conv(gin_channels, 2 * hidden * n_layers, 1)
        self.in_layers = nn.ModuleList(
            _conv(hidden, 2 * hidden, kernel, dilation=dilation_rate**i) for i in range(n_layers)
        )
        self.res_skip_layers = nn.ModuleList(
            _conv(hidden, 2 * hidden if i < n_layers - 1 else hidden, 1) for i in range(n_layers)
        )

    def forward(self, x: Tensor, mask: Tensor, g: Tensor | None = None) -> Tensor:
        out = torch.zeros_like(x)
        last = len(self.in_layers) - 1
        cond = None if g is None else self.cond_layer(g)
        for i, (conv_in, conv_rs) in enumerate(
            zip(self.in_layers, self.res_skip_layers, strict=True)
        ):
            a = conv_in(x)
            if cond is not None:
                a = a + cond[:, 2 * self.hidden * i : 2 * self.hidden * (i + 1)]
            acts = torch.tanh(a[:, : self.hidden]) * torch.sigmoid(a[:, self.hidden :])
            rs = conv_rs(acts)
            if i < last:
                x = (x + rs[:, : self.hidden]) * mask
                out = out + rs[:, self.hidden :]
            else:
                out = out + rs
        return out * mask


class CouplingLayer(nn.Module):
    """Mean-only residual coupling: the first half shifts the second."""

    def __init__(self, channels: int, hidden: int, spec: FlowSpec, gin_channels: int = 0) -> None:
        super().__init__()
        self.split = channels // 2
        self.pre = _conv(self.split, hidden, 1)
        self.enc = WaveNet(hidden, spec.kernel, spec.dilation_rate, spec.wn_layers, gin_channels)
        self.post = _conv(hidden, self.split, 1)

    def reverse(self, x: Tensor, mask: Tensor, g: Tensor | None = None) -> Tensor:
        x0, x1 = x[:, : self.split], x[:, self.split :]
        h = self.enc(self.pre(x0) * mask, mask, g)
        m = self.post(h) * mask
        return torch.cat([x0, (x1 - m) * mask], dim=1)


class Flow(nn.Module):
    def __init__(self, spec: VitsSpec) -> None:
        super().__init__()
        f = spec.flow
        self.flows = nn.ModuleDict(
            {
                str(i): CouplingLayer(spec.inter_channels, spec.hidden, f, spec.gin_channels)
                for i in f.indices
            }
        )
        self.order = tuple(sorted(f.indices, reverse=True))

    def reverse(self, z: Tensor, mask: Tensor, g: Tensor | None = None) -> Tensor:
        for i in self.order:
            layer = self.flows[str(i)]
            assert isinstance(layer, CouplingLayer)
            z = layer.reverse(torch.flip(z, [1]), mask, g)
        return z


def _conv_nhwc(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv`` applied to ``x`` held as ``[b, c, 1, t]`` in channels-last layout.

    The generator's long signals run as 2-D convolutions on channels-last tensors: oneDNN
    (CPU) and cuDNN then keep one layout from layer to layer instead of reordering every
    input, which measured several times faster per conv than ``conv1d`` on the longest
    stage (figures in ``docs/vits-torch.md``). Same weights, same arithmetic.
    """
    assert isinstance(conv, nn.Conv1d | nn.ConvTranspose1d)
    weight = conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)
    stride, pad, dil = (1, conv.stride[0]), (0, int(conv.padding[0])), (1, conv.dilation[0])
    if isinstance(conv, nn.ConvTranspose1d):
        return F.conv_transpose2d(x, weight, conv.bias, stride, pad, dilation=dil)
    return F.conv2d(x, weight, conv.bias, stride, pad, dil)


class ResBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "1":
            self.convs1 = nn.ModuleList(_conv(channels, channels, kernel, d) for d in dilations)
            self.convs2 = nn.ModuleList(_conv(channels, channels, kernel) for _ in dilations)
        else:
            self.convs = nn.ModuleList(_conv(channels, channels, kernel, d) for d in dilations)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x`` is ``[b, c, 1, t]`` channels-last (see :func:`_conv_nhwc`)."""

        def masked(t: Tensor) -> Tensor:
            return t if mask is None else t * mask

        # The first residual add makes a new tensor (the input is shared by the stage's
        # blocks); later adds are in place, which saves allocations on long signals.
        if self.kind == "1":
            for n, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
                y = _conv_nhwc(c1, masked(F.leaky_relu(x, 0.1)))
                y = _conv_nhwc(c2, masked(F.leaky_relu(y, 0.1)))
                x = x + y if n == 0 else x.add_(y)
            return x
        for n, conv in enumerate(self.convs):
            y = _conv_nhwc(conv, masked(F.leaky_relu(x, 0.1)))
            x = x + y if n == 0 else x.add_(y)
        return x


class Generator(nn.Module):
    """HiFi-GAN: latent frames -> waveform, ``hop`` samples per frame."""

    def __init__(self, spec: DecoderSpec, gin_channels: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.conv_pre = _conv(spec.in_channels, spec.initial_channels, 7)
        if gin_channels:
            self.cond = _conv(gin_channels, spec.initial_channels, 1)
        ups = []
        blocks = []
        ch = spec.initial_channels
        for rate, kernel in zip(spec.upsample_rates, spec.upsample_kernels, strict=True):
            up = nn.ConvTranspose1d(ch, ch // 2, kernel, rate, padding=(kernel - rate) // 2)
            up.requires_grad_(False)
            ups.append(up)
            ch //= 2
            for k, d in zip(spec.resblock_kernels, spec.resblock_dilations, strict=True):
                blocks.append(ResBlock(ch, k, d, spec.resblock_type))
        self.ups = nn.ModuleList(ups)
        self.resblocks = nn.ModuleList(blocks)
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3, bias=False)
        self.conv_post.requires_grad_(False)

    def forward(self, z: Tensor, frames: Tensor | None = None, g: Tensor | None = None) -> Tensor:
        """``z`` ``[b, c, t]`` -> ``[b, t * hop]``.

        ``frames`` (per-item valid lengths) makes each conv see zeros past an item's end,
        as the item alone would; ``None`` when every item fills the batch. ``g`` is the
        speaker embedding (``[b, gin, 1]``) of a multi-speaker voice.
        """
        mask: Tensor | None = None
        if frames is not None:
            mask = _length_mask(frames, z.shape[2]).to(z.dtype).unsqueeze(2)  # [b, 1, 1, t]
            z = z * mask.squeeze(2)
        x = z.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        x = _conv_nhwc(self.conv_pre, x)
        if g is not None:
            x = x + self.cond(g).to(x.dtype).unsqueeze(2)  # [b, c, 1, 1] over every step
        per = len(self.spec.resblock_kernels)
        for i, (rate, up) in enumerate(zip(self.spec.upsample_rates, self.ups, strict=True)):
            x = F.leaky_relu(x, 0.1)
            up_in = x if mask is None else x * mask
            x = _conv_nhwc(up, up_in)
            if mask is not None:
                mask = mask.repeat_interleave(rate, dim=3)
            acc = self.resblocks[i * per](x, mask)
            for j in range(1, per):
                acc.add_(self.resblocks[i * per + j](x, mask))
            x = acc.div_(per)
        x = F.leaky_relu(x)
        x = _conv_nhwc(self.conv_post, x if mask is None else x * mask)
        return torch.tanh(x)[:, 0, 0].contiguous()


def _length_mask(lengths: Tensor, width: int) -> Tensor:
    """``[b, 1, width]`` with ones where the position is below each length."""
    pos = torch.arange(width, device=lengths.device)
    return (pos[None, :] < lengths[:, None]).unsqueeze(1)


@dataclass(frozen=True, slots=True)
class Latent:
    """What comes before the decoder: ``z`` ``[b, c, frames]``, per-item frame counts and
    per-phoneme durations (frames, ``[b, phonemes]``, zero on padding)."""

    z: Tensor
    frames: Tensor
    durations: Tensor
    g: Tensor | None = None
    """The speakers' embeddings ``[b, gin, 1]`` (multi-speaker voices), for the decoder."""


class VitsModel(nn.Module):
    """The whole inference path; parameter names are the ONNX initializer names."""

    def __init__(self, spec: VitsSpec) -> None:
        super().__init__()
        self.spec = spec
        self.enc_p = TextEncoder(spec)
        self.dp = DurationPredictor(spec)
        self.flow = Flow(spec)
        self.dec = Generator(spec.decoder, spec.gin_channels)
        if spec.gin_channels:
            self.emb_g = nn.Embedding(spec.n_speakers, spec.gin_channels)
            self.emb_g.requires_grad_(False)

    @property
    def hop(self) -> int:
        return self.spec.decoder.hop

    def latent(
        self,
        ids: Tensor,
        lengths: Tensor,
        length_scale: Tensor,
        noise_scale: float,
        noise_w: float,
        speakers: Tensor | None = None,
    ) -> Latent:
        """Encoder, durations, expansion and reverse flows for a padded ``[b, t]`` batch.

        ``length_scale`` is per item (``[b]``), so requests of different speeds share a pass;
        so is ``speakers`` (``[b]`` speaker ids; required by a multi-speaker voice, refused
        by a one-speaker one), so requests for different speakers do too.
        """
        if (speakers is not None) != bool(self.spec.gin_channels):
            raise ValueError(
                f"this voice has {self.spec.n_speakers} speaker(s): speaker ids are "
                f"{'required' if self.spec.gin_channels else 'not accepted'}"
            )
        g = None if speakers is None else self.emb_g(speakers).unsqueeze(-1)
        x_mask = _length_mask(lengths, ids.shape[1]).to(self.dtype)
        x, m_p, logs_p = self.enc_p(ids, x_mask)
        noise = torch.randn(ids.shape[0], 2, ids.shape[1], device=ids.device, dtype=x.dtype)
        logw = self.dp(x, x_mask, noise * noise_w, g)
        w = torch.exp(logw) * x_mask * length_scale.to(x.dtype)[:, None, None]
        durations = torch.ceil(w)[:, 0]
        frames = durations.sum(dim=1).clamp_min(1).long()
        width = int(frames.max())
        # Monotonic expansion: frame f belongs to phoneme i when end[i-1] <= f < end[i].
        ends = torch.cumsum(durations, dim=1)
        starts = ends - durations
        pos = torch.arange(width, device=ids.device, dtype=ends.dtype)
        path = (pos[None, None, :] >= starts[:, :, None]) & (pos[None, None, :] < ends[:, :, None])
        path = path.to(x.dtype)  # [b, phonemes, frames]
        m = m_p @ path
        logs = logs_p @ path
        y_mask = _length_mask(frames, width).to(x.dtype)
        z_p = m + torch.randn_like(m) * torch.exp(logs) * noise_scale
        z = self.flow.reverse(z_p, y_mask, g) * y_mask
        return Latent(z=z, frames=frames, durations=durations.long(), g=g)

    @property
    def dtype(self) -> torch.dtype:
        return self.dec.conv_pre.weight.dtype
