"""A one-client RTMP server for tests and measurements: FFmpeg's listen mode through PyAV.

    python -m puppet.sinks.listen rtmp://127.0.0.1:PORT/app/key [--max-seconds S] [--frames N]

Waits for one publisher, decodes what it sends and prints one JSON line per video frame:
``{"pts_ms": ..., "arrival": epoch seconds, "mean": mean pixel value, "w": ..., "h": ...}``, then
``{"end": reason, "frames": n, "audio_packets": n, "audio_rms": rms of the decoded audio}``. Run it as its own process: FFmpeg's listen mode
blocks in C, and PyAV's timeouts call back into Python, which can deadlock with a publisher in
the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import av
import av.error
import numpy as np


def serve(url: str, max_seconds: float, frames: int | None, out=sys.stdout,
          connected: threading.Event | None = None) -> int:
    """Receive one stream from ``url``; returns the number of video frames decoded."""
    # Small probe: start decoding on the first packets instead of buffering seconds of stream.
    container = av.open(url, options={"listen": "1", "probesize": "32768", "analyzeduration": "500000"})
    if connected is not None:
        connected.set()
    deadline = time.monotonic() + max_seconds
    count = audio = n_samples = 0
    energy = 0.0
    reason = "closed"
    try:
        for packet in container.demux():
            if packet.stream.type == "audio":
                audio += 1
                for frame in packet.decode():
                    samples = frame.to_ndarray().astype(np.float64)
                    energy += float(np.square(samples).sum())
                    n_samples += samples.size
                continue
            if packet.stream.type != "video":
                continue
            for frame in packet.decode():
                arrival = time.time()
                pts_ms = None if frame.pts is None else round(float(frame.pts * frame.time_base) * 1000)
                image = frame.to_ndarray(format="rgb24")
                print(json.dumps({"pts_ms": pts_ms, "arrival": arrival, "mean": float(image.mean()),
                                  "w": frame.width, "h": frame.height}), file=out, flush=True)
                count += 1
            if frames is not None and count >= frames:
                reason = "frames"
                break
            if time.monotonic() > deadline:
                reason = "time"
                break
    except (av.error.EOFError, av.error.OSError) as exc:  # the publisher hung up
        reason = "closed" if getattr(exc, "errno", None) in (5, None) or isinstance(exc, av.error.EOFError) else str(exc)
    except av.error.FFmpegError as exc:
        reason = f"error: {exc}"
    finally:
        container.close()
    rms = (energy / n_samples) ** 0.5 if n_samples else 0.0
    print(json.dumps({"end": reason, "frames": count, "audio_packets": audio, "audio_rms": rms}), file=out,
          flush=True)
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop this long after the publisher came")
    parser.add_argument("--frames", type=int, help="stop after this many video frames")
    parser.add_argument("--wait", type=float, default=60.0, help="give up when nobody publishes within this time")
    args = parser.parse_args(argv)
    # The accept blocks in C without a timeout: a watchdog ends the process when nobody comes.
    connected = threading.Event()
    watchdog = threading.Timer(args.wait, lambda: None if connected.is_set() else _give_up())
    watchdog.daemon = True
    watchdog.start()
    print(json.dumps({"listening": args.url}), flush=True)
    serve(args.url, args.max_seconds, args.frames, connected=connected)
    return 0


def _give_up() -> None:
    print(json.dumps({"end": "nobody published"}), flush=True)
    import os

    os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
