"""tern's packet engine: the Cython data plane and its Python face (Engine, EV_* events).

Modules (each opens with its job): engine.pyx (Engine: control API, loop glue, stats), state.pxd (the shared C
state), path (UDP v4/v6 addresses, ICE-TCP connections, TURN allocations), udpmux (recvmmsg/sendmmsg/GSO), tcpmux +
tcpframer (ICE-TCP and TURN streams: epoll, RFC 4571 or TURN framing, bounded send queues), turnmux (TURN's data
path: ChannelData / Send / Data for allocations whose peer is the engine), demux (RFC 7983, SRTP, stream binding, RTX ->
ExtPacket, packet.pxd), codecs/ (vp8, h264, vp9, av1, describe), receiver + packetcache, fanout, forwarder, munger,
downtrack, feedback (NACK/PLI/FIR), reports (SR/RR/SDES/REMB), transportcc (transport-cc both ways: twcc codec,
bwe estimator); rtp, rtcp, srtp, table, wire, batchio underneath.
"""
from .engine import EV_BANDWIDTH, EV_DTLS, EV_RECEIVER_LAYER, EV_STUN, EV_TURN, EXT_TRANSPORT_CC, Engine

__all__ = ["EV_BANDWIDTH", "EV_DTLS", "EV_RECEIVER_LAYER", "EV_STUN", "EV_TURN", "EXT_TRANSPORT_CC", "Engine"]
