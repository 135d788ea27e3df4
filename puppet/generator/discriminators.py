"""GRAM-style discriminators for the three views AniPortraitGAN judges (facts §8.1, §8.3).

One encoder architecture, three instances: the whole portrait, the face camera, and the torso (the
lower quarter of the portrait, a non-square crop). The encoder follows GRAM's (pi-GAN lineage):

- ``fromRGB``: 1x1 conv to ``channels(long side)`` + LeakyReLU(0.2);
- residual CoordConv blocks: two 3x3 CoordConvs (x, y in [-1, 1] appended) with LeakyReLU(0.2),
  2x average-pool downsampling, a 1x1 projected skip, ``(y + skip) / sqrt(2)``; channels double per
  block up to ``max_channels``; blocks continue until the short side is 2;
- final 2x2 conv to ``1 (+2)`` outputs, **averaged over the remaining positions**. For a square input
  the final map is 2x2, the conv leaves 1x1 and this is exactly GRAM's head. For the torso crop
  (e.g. 32x128 -> 2x8 -> 1x7 after the head) it is a global average of 7 horizontal windows, so the
  same head works for any aspect ratio without a size-dependent linear layer.

Input: **RGBA**, premultiplied RGB in [0, 1] plus alpha, ``(B, 4, H, W)``. We feed alpha because the
synthetic targets have exact mattes and the neural generator renders over nothing (no background):
with alpha the discriminator judges silhouettes (hair outline, shoulders, neckline) directly, which
RGB over a fixed background would only show through a colour edge. ``in_channels=3`` gives an RGB
discriminator for data without mattes. Inputs are mapped to [-1, 1] inside ``forward``.

Optional 2 extra outputs regress the camera (yaw, pitch) as in GRAM's pose-consistency loss.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Widths of one discriminator; the input size is given at construction.

    ``channel_base / long side`` channels after fromRGB (GRAM: 2**13 / S, so 64 at 128 px, 16 at
    512 px), clamped to ``[min_channels, max_channels]``; doubling per block up to ``max_channels``.
    """

    channel_base: int = 8192
    min_channels: int = 16
    max_channels: int = 400
    in_channels: int = 4          # RGBA (premultiplied RGB + alpha); 3 for RGB
    pose_outputs: bool = True     # 2 extra outputs: camera (yaw, pitch) regression

    @staticmethod
    def published() -> "DiscriminatorConfig":
        return DiscriminatorConfig()

    @staticmethod
    def tiny() -> "DiscriminatorConfig":
        """A few thousand parameters per block: for CPU tests and toy runs."""
        return DiscriminatorConfig(channel_base=512, min_channels=8, max_channels=32)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> "DiscriminatorConfig":
        known = set(DiscriminatorConfig.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown discriminator config fields: {sorted(unknown)}")
        cfg = replace(DiscriminatorConfig(), **data)
        if cfg.in_channels not in (3, 4):
            raise ValueError(f"in_channels must be 3 (RGB) or 4 (RGBA), got {cfg.in_channels}")
        if not 1 <= cfg.min_channels <= cfg.max_channels:
            raise ValueError("need 1 <= min_channels <= max_channels")
        return cfg


def coord_channels(batch: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) pixel-centre coordinates x, y in [-1, 1] (CoordConv's extra inputs)."""
    ys = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y]).unsqueeze(0).expand(batch, 2, height, width)


class CoordConv(nn.Module):
    """A conv that also sees the pixel's (x, y): lets D tell where in the frame a feature is."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 2, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.conv(torch.cat([x, coord_channels(b, h, w, x)], dim=1))


def _kaiming_leaky(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ResidualCoordBlock(nn.Module):
    """Two 3x3 CoordConvs + LReLU, 2x avg-pool, 1x1 projected skip, sum / sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.in_channels = in_channels      # channels in
        self.out_channels = out_channels    # channels out (spatial size halves)
        self.conv1 = CoordConv(in_channels, out_channels)
        self.conv2 = CoordConv(out_channels, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, 1)
        self.apply(_kaiming_leaky)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(x), 0.2)
        y = F.leaky_relu(self.conv2(y), 0.2)
        y = F.avg_pool2d(y, 2)
        skip = F.avg_pool2d(self.skip(x), 2)
        return (y + skip) * (1.0 / math.sqrt(2.0))

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}, /2"


@dataclass(frozen=True)
class DiscriminatorOutput:
    """``logit (B,)`` real/fake score; ``pose (B, 2)`` predicted camera (yaw, pitch) or None."""

    logit: torch.Tensor
    pose: torch.Tensor | None


def encoder_layout(height: int, width: int, config: DiscriminatorConfig) -> tuple[int, list[int], tuple[int, int]]:
    """The encoder's widths for an input of ``height x width``: ``(fromRGB channels, output channels
    of each residual block, final map size)``. Blocks halve the size until the short side is 2."""
    if min(height, width) < 2:
        raise ValueError(f"discriminator input must be at least 2x2, got {height}x{width}")
    channels = int(min(config.max_channels, max(config.min_channels, config.channel_base // max(height, width))))
    first, blocks = channels, []
    h, w = height, width
    while min(h, w) >= 4:
        channels = min(config.max_channels, channels * 2)
        blocks.append(channels)
        h, w = h // 2, w // 2
    return first, blocks, (h, w)


class Discriminator(nn.Module):
    """GRAM-style residual CoordConv encoder for ``(B, C, H, W)`` images of one fixed size."""

    def __init__(self, height: int, width: int, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        first, widths, final = encoder_layout(height, width, config)
        self.height = height                # input rows
        self.width = width                  # input columns
        self.config = config
        self.from_rgb = nn.Conv2d(config.in_channels, first, 1)
        self.blocks = nn.ModuleList([ResidualCoordBlock(i, o) for i, o in zip([first] + widths[:-1], widths)])
        self.final_size = final
        self.head = nn.Conv2d(widths[-1] if widths else first, 3 if config.pose_outputs else 1, 2)
        _kaiming_leaky(self.from_rgb)
        _kaiming_leaky(self.head)

    def forward(self, image: torch.Tensor) -> DiscriminatorOutput:
        """``image (B, C, H, W)`` in [0, 1] (premultiplied RGB + alpha) -> logits (and pose)."""
        if image.shape[1:] != (self.config.in_channels, self.height, self.width):
            raise ValueError(f"discriminator expects (B, {self.config.in_channels}, {self.height}, "
                             f"{self.width}), got {tuple(image.shape)}")
        x = F.leaky_relu(self.from_rgb(image * 2.0 - 1.0), 0.2)
        for block in self.blocks:
            x = block(x)
        out = self.head(x).mean(dim=(2, 3))          # (B, 1 or 3): GRAM's 2x2 head, averaged if wider
        logit = out[:, 0]
        pose = out[:, 1:3] if self.config.pose_outputs else None
        return DiscriminatorOutput(logit=logit, pose=pose)

    def extra_repr(self) -> str:
        return (f"input {self.config.in_channels}x{self.height}x{self.width}, "
                f"final {self.final_size[0]}x{self.final_size[1]}, pose={self.config.pose_outputs}")


def torso_crop(image: torch.Tensor) -> torch.Tensor:
    """The lower quarter of a portrait ``(B, C, H, W) -> (B, C, H // 4, W)`` (D_torso's view, facts §8.1)."""
    h = image.shape[-2]
    return image[..., h - h // 4:, :]


class PortraitDiscriminators(nn.Module):
    """The three discriminators of one training stage: whole portrait, face camera, torso crop."""

    def __init__(self, portrait_size: int, face_size: int, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        if portrait_size < 8:
            raise ValueError(f"portrait size must be at least 8 for the torso crop, got {portrait_size}")
        self.whole = Discriminator(portrait_size, portrait_size, config)
        self.face = Discriminator(face_size, face_size, config)
        self.torso = Discriminator(portrait_size // 4, portrait_size, config)

    def forward(self, portrait: torch.Tensor, face: torch.Tensor) -> dict[str, DiscriminatorOutput]:
        """Score a batch: ``portrait (B, C, S, S)``, ``face (B, C, F, F)`` -> {'whole','face','torso'}."""
        return {"whole": self.whole(portrait), "face": self.face(face), "torso": self.torso(torso_crop(portrait))}
