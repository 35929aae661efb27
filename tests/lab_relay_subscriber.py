"""aiortc as a subscriber through TURN, for the network lab (tests/netlab.py runs it inside a namespace): joins,
decodes the first remote video for a while over the JoinResponse's TURN URL of the given scheme ("turns:": TLS,
trusting the certificate in SSL_CERT_FILE) and prints one JSON line: connected, frames, resolution, selected (the
local candidate types of the nominated pairs)."""
from __future__ import annotations

import argparse
import asyncio
import json

from aiortc_client import AiortcSubscriber

JOIN_TIMEOUT_S = 10


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--turn", default="turns:")
    args = parser.parse_args()
    subscriber, _ = await asyncio.wait_for(AiortcSubscriber.join(args.url, args.token, args.turn), JOIN_TIMEOUT_S)
    try:
        await asyncio.sleep(args.seconds)
        selected = []
        for transceiver in subscriber.pc.getTransceivers():
            # aioice's nominated pairs (aiortc has no stats for them): the local candidate's type.
            connection = transceiver.receiver.transport.transport._connection
            selected += [pair.local_candidate.type for pair in connection._nominated.values()]
        print(json.dumps({
            "connected": subscriber.pc.connectionState == "connected",
            "frames": len(subscriber.frames),
            "resolution": subscriber.frames[-1] if subscriber.frames else None,
            "selected": sorted(set(selected)),
        }), flush=True)
    finally:
        await subscriber.close()


if __name__ == "__main__":
    asyncio.run(main())
