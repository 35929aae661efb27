"""The WebRTC peer stack of the control plane: SDP, ICE-lite, DTLS, SCTP and data channels, transports and negotiation."""
