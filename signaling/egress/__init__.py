"""The built-in egress: published tracks recorded to local files without transcoding. `manager` (EgressInfo
lifecycle, engine plain transports, webhooks), `service` (the Egress Twirp API), `recorder` (the per-recording thread),
`jitter` (RTP parsing and reordering), `depacketize` (payloads into frames), `muxer` (frames into files with PyAV)."""
