"""The generator's networks (AniPortraitGAN, facts §1-§7): mapping MLPs, the FiLM-SIREN radiance
net, the manifold predictor, the expression deformation net D_e and the StyleRRDB super-resolution.

All per-point networks take ``(B, N, C)`` points and per-sample codes ``(B, ...)``. Only plain
torch ops (Linear, sin, conv2d, pixel_shuffle, ...) and no control flow on tensor values, so the
per-frame modules trace to ONNX (opset 17) for TensorRT.

Units: points are in the generator frame (see docs/neural_generator.md); every SIREN-like net
sees them once scaled by ``WARP_SCALE`` (2/0.24, APG's box warp). APG warps twice before its
manifold predictor and adds a warped-unit displacement to unwarped points (facts §11.1-2); we
keep ONE unit system: the manifold predictor, the radiance net and D_e all see
``WARP_SCALE * x`` and D_e's displacement is returned in generator units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from puppet.generator.config import WARP_SCALE


def film_gamma(freq: torch.Tensor) -> torch.Tensor:
    """APG's frequency mapping gamma = 15 f + 30 (facts §1.2): a SIREN omega of ~30 at init."""
    return freq * 15.0 + 30.0


def _uniform_(weight: torch.Tensor, bound: float) -> None:
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def frequency_init_(linear: nn.Linear, freq: float = 25.0) -> None:
    """SIREN hidden init U(+-sqrt(6/n_in)/freq) (facts §4, ``frequency_init(25)``)."""
    _uniform_(linear.weight, math.sqrt(6.0 / linear.in_features) / freq)


def first_layer_init_(linear: nn.Linear) -> None:
    """SIREN first-layer init U(+-1/n_in) (facts §4)."""
    _uniform_(linear.weight, 1.0 / linear.in_features)


class MappingNetwork(nn.Module):
    """MLP code -> modulation: ``layers`` linear layers with LeakyReLU(0.2) between them, Kaiming
    init, last layer's weights times ``last_scale`` (0.25 for FiLM mappings, 1 for the SR style;
    facts §1.2-1.4). ``(B, in_dim) -> (B, out_dim)``."""

    def __init__(self, in_dim: int, width: int, out_dim: int, layers: int = 4, last_scale: float = 0.25) -> None:
        super().__init__()
        dims = [in_dim] + [width] * (layers - 1) + [out_dim]
        mods: list[nn.Module] = []
        for i in range(layers):
            lin = nn.Linear(dims[i], dims[i + 1])
            nn.init.kaiming_normal_(lin.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            mods.append(lin)
            if i < layers - 1:
                mods.append(nn.LeakyReLU(0.2))
        with torch.no_grad():
            mods[-1].weight.mul_(last_scale)
        self.net = nn.Sequential(*mods)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, out_dim={self.out_dim}"


class FiLMLayer(nn.Module):
    """``sin(gamma * (W x + b) + beta)``: ``x (B, N, in)``, ``gamma, beta (B, out)`` -> ``(B, N, out)``.
    ``gamma`` is already mapped (``film_gamma``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        return torch.sin(gamma.unsqueeze(1) * self.linear(x) + beta.unsqueeze(1))


class RadianceNet(nn.Module):
    """FiLM-SIREN radiance field Phi (facts §4): ``layers`` FiLM layers (3 -> width -> ... width),
    a colour FiLM layer on [view dir || last hidden], multi-exit heads summed over trunk layers
    1..layers-1 (sigma, rgb, features; the last rgb head reads the colour layer).

    The modulation (from a ``MappingNetwork``) is ``(B, 2 * (layers + 1) * width)``: first half raw
    frequencies, second half phases, each ``layers + 1`` slices of ``width`` (trunk then colour).
    ``forward(points (B, N, 3) gen units, view_dirs (B, N, 3) unit, modulation)`` ->
    ``rgb (B, N, 3)`` in (0, 1), ``sigma (B, N, 1)`` raw, ``features (B, N, feature_dim)``.
    """

    def __init__(self, layers: int = 8, width: int = 256, feature_dim: int = 32) -> None:
        super().__init__()
        self.layers, self.width, self.feature_dim = layers, width, feature_dim
        self.trunk = nn.ModuleList([FiLMLayer(3 if i == 0 else width, width) for i in range(layers)])
        self.color = FiLMLayer(width + 3, width)
        self.sigma_heads = nn.ModuleList([nn.Linear(width, 1) for _ in range(layers - 1)])
        self.rgb_heads = nn.ModuleList([nn.Linear(width, 3) for _ in range(layers - 1)])
        self.feature_heads = nn.ModuleList([nn.Linear(width, feature_dim) for _ in range(layers - 1)])
        for lin in [l.linear for l in self.trunk[1:]] + [self.color.linear] + list(self.sigma_heads) + \
                list(self.rgb_heads) + list(self.feature_heads):
            frequency_init_(lin)  # feature heads too, as GRAM-HD (APG leaves them at default)
        first_layer_init_(self.trunk[0].linear)

    @property
    def modulation_dim(self) -> int:
        return 2 * (self.layers + 1) * self.width

    def forward(self, points: torch.Tensor, view_dirs: torch.Tensor, modulation: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w, n = self.width, self.layers + 1
        freq = film_gamma(modulation[:, : n * w])
        phase = modulation[:, n * w:]
        x = points * WARP_SCALE
        sigma = rgb = feat = None
        for i, layer in enumerate(self.trunk):
            x = layer(x, freq[:, i * w:(i + 1) * w], phase[:, i * w:(i + 1) * w])
            if i == 0:
                continue
            h = x
            if i == self.layers - 1:
                h = self.color(torch.cat([view_dirs, x], dim=-1), freq[:, self.layers * w:], phase[:, self.layers * w:])
            s_i, c_i, f_i = self.sigma_heads[i - 1](x), self.rgb_heads[i - 1](h), self.feature_heads[i - 1](x)
            sigma = s_i if sigma is None else sigma + s_i
            rgb = c_i if rgb is None else rgb + c_i
            feat = f_i if feat is None else feat + f_i
        assert sigma is not None and rgb is not None and feat is not None
        return torch.sigmoid(rgb), sigma, feat


class ManifoldPredictor(nn.Module):
    """The manifold predictor M (facts §3.1): one scalar field s(x) shared by all identities,
    whose iso-levels are the radiance manifolds: an MLP 3 -> width (x ``hidden_layers``, ReLU) -> 1
    plus a fixed sphere prior, ``s(x) = a |x - center| + b + MLP(WARP_SCALE (x - center))``.

    Units: a single warp. APG feeds its predictor ``69.44 x + (0, 0, 1.5)`` because it warps twice
    (facts §11.1); we do not copy that quirk, so M, Phi and D_e share one unit system.

    Init (our choice, documented): ``a``, ``b`` put level ``level_max`` on the sphere of radius
    ``radii[1]`` and level ``level_min`` on radius ``radii[0]`` about ``center``: nested shells whose
    front caps cross the whole canonical box, outermost (level_max, met first by a ray) to
    innermost. The MLP keeps GRAM's geometric init in its hidden layers (N(0, sqrt(2/out)), bias 0)
    and starts with a zero output layer, so the levels start as exact spheres. (GRAM's init alone,
    s ~ 10 |p|, is spherical only on average over the random weights: at width 128 the radius of a
    level varies by ~19 % with the direction, which over our thin [0.5, 0.75] shell band tangles
    the levels.) ``forward(points (..., 3)) -> s (..., 1)``.
    """

    def __init__(self, width: int = 128, hidden_layers: int = 3, center: tuple[float, float, float] = (0.0, 0.0, -0.6),
                 radii: tuple[float, float] = (0.5, 0.75), levels: tuple[float, float] = (23.0, 8.0)) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(hidden_layers):
            lin = nn.Linear(3 if i == 0 else width, width)
            with torch.no_grad():
                lin.weight.normal_(0.0, math.sqrt(2.0 / width))
                lin.bias.zero_()
            mods += [lin, nn.ReLU()]
        self.hidden = nn.Sequential(*mods)
        self.out = nn.Linear(width, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        (lmax, lmin), (r_in, r_out) = levels, radii
        slope = (lmax - lmin) / (r_out - r_in)
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32), persistent=False)
        self.register_buffer("prior", torch.tensor([slope, lmax - slope * r_out], dtype=torch.float32),
                             persistent=False)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        rel = points - self.center
        radius = torch.sqrt((rel * rel).sum(dim=-1, keepdim=True) + 1e-12)
        return self.prior[0] * radius + self.prior[1] + self.out(self.hidden(rel * WARP_SCALE))


class ExpressionDeformNet(nn.Module):
    """Expression deformation D_e (facts §7): a displacement field target -> canonical,
    conditioned on [z_id || expression] through its own mapping network (FiLM, gamma = 15 f + 30).

    Input per point: ``[WARP_SCALE * x, zeros(input_dim - 3)]`` (APG feeds 4 always-zero values;
    kept so the layer shapes match its 7-d input). ``layers`` FiLM-SIREN layers of ``width``, then a
    zero-initialised linear layer to 3 outputs: D_e starts as the identity. The output is in
    warped units and divided by ``WARP_SCALE``, so the displacement is in generator units (one unit
    system; APG adds warped-unit displacements to unwarped points, facts §11.2).
    ``forward(points (B, N, 3), condition (B, id + expr)) -> displacement (B, N, 3)``.
    """

    def __init__(self, condition_dim: int, input_dim: int = 7, width: int = 128, layers: int = 3,
                 mapping_width: int = 128, mapping_layers: int = 4) -> None:
        super().__init__()
        self.input_dim, self.width, self.layers = input_dim, width, layers
        self.mapping = MappingNetwork(condition_dim, mapping_width, 2 * layers * width, mapping_layers, 0.25)
        self.film = nn.ModuleList([FiLMLayer(input_dim if i == 0 else width, width) for i in range(layers)])
        for lin in [l.linear for l in self.film[1:]]:
            frequency_init_(lin)
        first_layer_init_(self.film[0].linear)
        self.out = nn.Linear(width, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, points: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        mod = self.mapping(condition)
        w, n = self.width, self.layers
        freq, phase = film_gamma(mod[:, : n * w]), mod[:, n * w:]
        x = points * WARP_SCALE
        if self.input_dim > 3:
            x = torch.cat([x, x.new_zeros(x.shape[:-1] + (self.input_dim - 3,))], dim=-1)
        for i, layer in enumerate(self.film):
            x = layer(x, freq[:, i * w:(i + 1) * w], phase[:, i * w:(i + 1) * w])
        return self.out(x) / WARP_SCALE


# ------------------------------------------------------------------------ super-resolution


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated + demodulated conv, unfused: ``conv(x * s) * d`` with
    ``d[b, o] = rsqrt(sum_{i,k} (w[o, i, k] s[b, i])^2 + 1e-8)``; equal to convolving with the
    per-sample modulated weight, but a plain conv2d on any batch (ONNX/TensorRT friendly).
    ``x (N, in, H, W)``, ``style (N, in)`` -> ``(N, out, H, W)``; bias added after, unmodulated."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel, kernel))
        nn.init.kaiming_normal_(self.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        w2 = self.weight.square().sum(dim=(2, 3))  # (out, in)
        demod = torch.rsqrt(style.square() @ w2.t() + 1e-8)  # (N, out)
        y = F.conv2d(x * style[:, :, None, None], self.weight, padding=self.padding)
        return y * demod[:, :, None, None] + self.bias[None, :, None, None]


def _conv(in_ch: int, out_ch: int, scale: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_in")
    with torch.no_grad():
        conv.weight.mul_(scale)
        conv.bias.zero_()
    return conv


class ResidualDenseBlock(nn.Module):
    """ESRGAN's 5-conv dense block with growth ``gc``, LeakyReLU(0.2), residual scale 0.2."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList([_conv(nf + i * gc, gc if i < 4 else nf, 0.1) for i in range(5)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for i, conv in enumerate(self.convs):
            y = conv(torch.cat(feats, dim=1))
            if i < 4:
                feats.append(F.leaky_relu(y, 0.2))
        return x + 0.2 * y


class RRDB(nn.Module):
    """Residual-in-residual dense block: 3 dense blocks, residual scale 0.2."""

    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualDenseBlock(nf, gc) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.blocks(x)


class StyleRRDBNet(nn.Module):
    """Manifold super-resolution U (facts §5.2): an RRDB trunk (not modulated), then one
    modulated 3x3 conv + pixel shuffle x2 per up step, a modulated 3x3 HR conv and a modulated 1x1
    conv to ``out_ch``, sigmoid on all channels. The style ``(N, style_dim)`` is split in order by the
    input channels of each modulated conv (``style_dim = nf + sum(up) + up[-1]``).
    ``forward(x (N, in_ch, H, W), style (N, style_dim)) -> (N, out_ch, H * scale, W * scale)`` in (0, 1).
    """

    def __init__(self, in_ch: int = 36, out_ch: int = 4, nf: int = 64, nb: int = 4, gc: int = 32,
                 up_channels: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        self.conv_first = _conv(in_ch, nf)
        self.trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = _conv(nf, nf)
        ins = (nf,) + tuple(up_channels)
        self.ups = nn.ModuleList([ModulatedConv2d(ins[i], 4 * ins[i + 1], 3) for i in range(len(up_channels))])
        last = ins[-1]
        self.hr_conv = ModulatedConv2d(last, last, 3)
        self.to_rgba = ModulatedConv2d(last, out_ch, 1)
        self.style_splits = list(ins) + [last]
        self.scale = 2 ** len(up_channels)

    @property
    def style_dim(self) -> int:
        return sum(self.style_splits)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        styles = torch.split(style, self.style_splits, dim=1)
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.trunk(fea))
        for i, up in enumerate(self.ups):
            fea = F.leaky_relu(F.pixel_shuffle(up(fea, styles[i]), 2), 0.2)
        fea = F.leaky_relu(self.hr_conv(fea, styles[-2]), 0.2)
        return torch.sigmoid(self.to_rgba(fea, styles[-1]))

    def extra_repr(self) -> str:
        return f"scale={self.scale}, style_dim={self.style_dim}"
