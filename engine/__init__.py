"""tern's packet engine: the Cython data plane (see engine/core.pyx) and its event names."""
from .core import EV_DTLS, EV_RECEIVER_LAYER, EV_STUN, Engine

__all__ = ["EV_DTLS", "EV_RECEIVER_LAYER", "EV_STUN", "Engine"]
