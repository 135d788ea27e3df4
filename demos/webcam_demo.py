"""Live puppeteering in a window (``puppet webcam``): a webcam, or a video played in real time.

Usage: python -m demos.webcam_demo [--camera 0|clip.mp4] [--avatar NAME]
Keys: c recalibrate, n / p next / previous avatar, o overlay, q quit.
"""

import sys

from puppet.cli import main

if __name__ == "__main__":
    sys.exit(main(["webcam", *sys.argv[1:]]))
