"""Where the rendered frames go when streaming live (``puppet stream``).

- ``base``: the ``Sink`` protocol (open / send(image, t, captured) / close / stats), ``SinkStats``,
  ``StreamFormat``, and the newest-frame worker the encoding sinks share;
- ``virtualcam``: pyvirtualcam (v4l2loopback on Linux, OBS Virtual Camera elsewhere);
- ``rtmp``: FLV over RTMP through PyAV in a helper process, reconnecting with backoff;
- ``hls``: fragmented-MP4 HLS into a folder with a rolling playlist and an offline viewer page;
- ``webrtc``: aiortc, one newest-frame track per viewer page;
- ``encode``: the low-latency H.264 + AAC encoder RTMP and HLS share; ``http``: the local web
  server for the viewer pages; ``listen``: an FFmpeg RTMP server for tests and measurements.

Modules are imported on use: aiortc and pyvirtualcam load only for the sinks that need them.
"""
