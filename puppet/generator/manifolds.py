"""Ray-manifold intersections and compositing (facts §3.3, §4), for all levels at once.

Intersections: along each ray the field s is sampled at S points ordered from the camera
outward; level l is crossed by the pair (s_k, s_k+1) when ``s_k >= l >= s_k+1`` (s decreasing).
The FIRST such pair is chosen (argmax of a descending cost, as APG), the intersection is the linear
interpolation between the pair's points when ``|s_k+1 - s_k| > min_gap``, else the far point, and
the same weights carry any other per-sample tensors (target-space point, canonical point,
displacement). ``valid`` = the chosen pair really crosses (the gap test is not part of it). One
broadcast over (levels, intervals), no Python loop or branch per level: the graph is static.

Compositing: the L candidates of a ray are sorted by TARGET-space depth (distance from the camera:
the physically meaningful order, as AniFaceGAN; APG's released code sorts by canonical distance to
the un-offset camera, facts §11.5), then ``T_i = prod_{k<i} (1 - alpha_k + 1e-10)``, ``w_i = alpha_i T_i``
and the output is RGBA: premultiplied ``rgb = sum w_i c_i``, ``alpha = sum w_i``. No white
background (APG composites white and outputs 2C - 1; we keep coverage so images composite over any
background like the mesh engine's). The transmittance is a matmul of log(1 - alpha) with a constant
triangular matrix (ONNX has no CumProd) and the sort is ``torch.sort`` (ONNX TopK, which TensorRT
supports for k <= 3840; here k = levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Crossings:
    """First crossings of every level: ``values`` one ``(..., L, C_i)`` tensor per carried input,
    ``valid (..., L)`` float 0/1, ``s_lo, s_hi (..., L)`` the field values of the chosen pairs."""

    values: tuple[torch.Tensor, ...]
    valid: torch.Tensor
    s_lo: torch.Tensor
    s_hi: torch.Tensor


def first_crossings(s: torch.Tensor, levels: torch.Tensor, carried: tuple[torch.Tensor, ...],
                    min_gap: float = 0.05) -> Crossings:
    """The first crossing of each level along each ray.

    ``s (..., S)`` the field at S samples ordered from the camera outward; ``levels (L,)``;
    ``carried`` tensors ``(..., S, C)`` interpolated with the same weights -> ``Crossings``.
    """
    n = s.shape[-1]
    s_lo, s_hi = s[..., :-1].unsqueeze(-2), s[..., 1:].unsqueeze(-2)  # (..., 1, S-1)
    lv = levels.to(s.dtype).reshape(-1, 1)  # (L, 1)
    cross = (s_lo >= lv) & (s_hi <= lv)  # (..., L, S-1)
    # descending positive cost: the nearest crossing wins; no crossing -> the last interval (cost 0)
    cost = torch.arange(n - 2, -1, -1, device=s.device, dtype=s.dtype)
    score = torch.where(cross, cost, -cost)
    idx = torch.argmax(score, dim=-1)  # (..., L)
    lead, n_lv = s.shape[:-1], lv.shape[0]
    s_l = torch.gather(s[..., :-1], -1, idx)  # gather over the samples: no (L, S) copies
    s_h = torch.gather(s[..., 1:], -1, idx)
    lvl = lv.squeeze(-1)
    valid = (s_l >= lvl) & (s_h <= lvl)
    denom = s_h - s_l
    lerp = valid & (denom.abs() > min_gap)
    safe = torch.where(lerp, denom, torch.full_like(denom, -1.0))
    w_lo = ((s_h - lvl) / safe).unsqueeze(-1)
    w_hi = ((lvl - s_l) / safe).unsqueeze(-1)
    out = []
    for x in carried:
        i = idx.unsqueeze(-1).expand(lead + (n_lv, x.shape[-1]))  # (..., L, C)
        x_lo = torch.gather(x, -2, i)
        x_hi = torch.gather(x, -2, i + 1)
        out.append(torch.where(lerp.unsqueeze(-1), w_lo * x_lo + w_hi * x_hi, x_hi))
    return Crossings(values=tuple(out), valid=valid.to(s.dtype), s_lo=s_l, s_hi=s_h)


def alpha_from_sigma(sigma: torch.Tensor, delta: float = 0.04) -> torch.Tensor:
    """Opacity of a manifold sample: ``1 - exp(-delta * softplus(sigma))`` (facts §4)."""
    return 1.0 - torch.exp(-delta * torch.nn.functional.softplus(sigma))


@dataclass(frozen=True)
class Composite:
    """Front-to-back composite of a ray's samples: premultiplied ``rgb (..., C)``, ``alpha (...)``
    (the coverage, sum of weights), ``depth (...)`` (weight-averaged depth; meaningful where
    alpha > 0), ``weights (..., L)`` in depth order."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor


def composite(rgb: torch.Tensor, alpha: torch.Tensor, depth: torch.Tensor, dim: int = -1) -> Composite:
    """Sort the samples along ``dim`` by ``depth`` (ascending) and alpha-composite them.

    ``rgb (..., L, C)`` with the sample axis at ``dim`` of ``alpha``/``depth`` (``(..., L)``) and at
    ``dim - 1`` of ``rgb``; invalid samples should carry alpha 0 (their position then does not matter).
    """
    if dim != -1:
        alpha, depth = alpha.movedim(dim, -1), depth.movedim(dim, -1)
        rgb = rgb.movedim(dim - 1 if dim < 0 else dim, -2)
    depth_sorted, order = torch.sort(depth, dim=-1)
    a = torch.gather(alpha, -1, order)
    c = torch.gather(rgb, -2, order.unsqueeze(-1).expand(order.shape + (rgb.shape[-1],)))
    n = a.shape[-1]
    log_t = torch.log(1.0 - a + 1e-10)
    k = torch.arange(n, device=a.device)
    strict = (k[:, None] < k[None, :]).to(a.dtype)  # [k, i] = k < i (a constant: no Trilu op in the graph)
    trans = torch.exp(log_t @ strict)
    w = a * trans
    acc = w.sum(dim=-1)
    out_rgb = (w.unsqueeze(-1) * c).sum(dim=-2)
    out_depth = (w * depth_sorted).sum(dim=-1) / acc.clamp_min(1e-8)
    return Composite(rgb=out_rgb, alpha=acc, depth=out_depth, weights=w)
