"""Codec payload formats, one module each: descriptors, keyframe detection, in-place rewriting (Cython).

`describe` dispatches on the codec id; vp8, h264, vp9 and av1 hold the formats; dd parses the dependency descriptor
(an RTP header extension used by AV1 and VP9 SVC)."""
