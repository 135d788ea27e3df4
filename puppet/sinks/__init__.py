"""Where the rendered frames go when streaming live: virtual camera, RTMP, HLS, WebRTC."""
