"""Virtual-presenter streaming (``puppet stream``): the live avatar to a browser, HLS, RTMP or a
virtual camera.

Usage: python -m demos.stream_demo [--camera 0|clip.mp4 [--loop]] [--to webrtc] [--to hls:out/hls]
                                   [--to rtmp://HOST/APP/KEY] [--to virtualcam] [--avatar NAME]
With no --to, streams to a WebRTC page (open the printed http://127.0.0.1:8080/webrtc/).
Ctrl-C ends every stream cleanly.
"""

import sys

from puppet.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(["stream", *args] if "--to" in args else ["stream", "--to", "webrtc", *args]))
