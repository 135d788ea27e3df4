"""Contact sheets to look at: every built-in avatar (neutral, and smiling with head and camera
turned), and frames of a converted (side-by-side) clip.

Usage:
  python scripts/contact_sheets.py avatars [-o docs/avatars_contact_sheet.png] [--size 256]
  python scripts/contact_sheets.py clip VIDEO [-o docs/convert_contact_sheet.png] [--frames 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]


def avatar_sheet(output: Path, size: int = 256, per_row: int = 4) -> Path:
    import engines
    from puppet.avatar import list_avatars, load_avatar
    from puppet.contract import Blendshape, SmplJoint, pose_row
    from puppet.params import AvatarParams
    from puppet.rotations import matrix_to_axis_angle
    from trackers.body_solver import RestSkeleton

    names = list_avatars()
    rows = (len(names) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * 2 * size, rows * size), (40, 44, 52))
    draw = ImageDraw.Draw(sheet)
    rest = np.zeros((6, 3), np.float32)
    for joint, left in ((SmplJoint.LEFT_SHOULDER, True), (SmplJoint.RIGHT_SHOULDER, False)):
        rest[pose_row(joint)] = matrix_to_axis_angle(RestSkeleton().rest_arm(left))
    neutral = AvatarParams.neutral().replace(pose=rest)
    e = np.zeros(52, np.float32)
    for name, w in (("mouthSmileLeft", 0.75), ("mouthSmileRight", 0.75), ("jawOpen", 0.12),
                    ("cheekSquintLeft", 0.3), ("cheekSquintRight", 0.3), ("eyeLookOutLeft", 0.35),
                    ("eyeLookInRight", 0.35)):
        e[Blendshape[name]] = w
    turned = rest.copy()
    turned[pose_row(SmplJoint.NECK)] = [0.0, 0.12, 0.03]
    turned[pose_row(SmplJoint.HEAD)] = [0.05, 0.2, 0.05]
    smile = neutral.replace(expression=e, pose=turned, camera=np.array([0.3, -0.05], np.float32))
    with engines.create("mesh", size=size) as engine:
        for i, name in enumerate(names):
            baked = engine.bake(load_avatar(name))
            for j, params in enumerate((neutral, smile)):
                x, y = ((i % per_row) * 2 + j) * size, (i // per_row) * size
                sheet.paste(Image.fromarray(engine.render(baked, params).image[..., :3]), (x, y))
            draw.text(((i % per_row) * 2 * size + 6, (i // per_row) * size + 4), name, fill=(255, 255, 255))
    sheet.save(output)
    return output


def clip_sheet(video: Path, output: Path, frames: int = 8, per_row: int = 2, width: int = 768) -> Path:
    """Evenly spaced frames of ``video``, each scaled to ``width`` pixels, labelled with their time."""
    from puppet.sources import VideoFileSource

    with VideoFileSource(video) as source:
        all_frames = list(source)
    picks = [all_frames[i] for i in np.linspace(0, len(all_frames) - 1, frames).round().astype(int)]
    h, w = picks[0].image.shape[:2]
    height = round(h * width / w)
    rows = (frames + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * width, rows * height), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for k, frame in enumerate(picks):
        x, y = (k % per_row) * width, (k // per_row) * height
        sheet.paste(Image.fromarray(frame.image).resize((width, height)), (x, y))
        draw.text((x + 6, y + 4), f"t = {frame.t:.2f} s", fill=(255, 255, 255))
    sheet.save(output)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("avatars")
    a.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "avatars_contact_sheet.png")
    a.add_argument("--size", type=int, default=256)
    c = sub.add_parser("clip")
    c.add_argument("video", type=Path)
    c.add_argument("-o", "--output", type=Path, default=REPO / "docs" / "convert_contact_sheet.png")
    c.add_argument("--frames", type=int, default=8)
    args = parser.parse_args()
    from puppet.cli import _quiet_native_logs

    _quiet_native_logs()
    out = avatar_sheet(args.output, args.size) if args.what == "avatars" else clip_sheet(args.video, args.output, args.frames)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
