"""tern's packet engine: the Cython data plane (engine/engine.pyx and the modules it names) and its event names."""
from .engine import EV_DTLS, EV_RECEIVER_LAYER, EV_STUN, Engine

__all__ = ["EV_DTLS", "EV_RECEIVER_LAYER", "EV_STUN", "Engine"]
