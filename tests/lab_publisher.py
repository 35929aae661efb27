"""A LiveKit Python SDK publisher for the network lab (tests/netlab.py runs it inside a namespace): joins, publishes
the test card and tone (tests/media.py) and a reliable data message every DATA_INTERVAL_S for a while, and prints one
JSON line with what its SDK went through. --audio-only leaves the test card out; --red on|off sets the tone's RED.

Output fields: connected, sid and tracks ({name: sid}) right after publishing and again at the end (a resume keeps
them, a rejoin does not), events ([seconds since joined, room event] for reconnecting, reconnected, disconnected and
connection state changes while in the call, not its end), state (the connection state at the end), data_refused
(data messages the SDK refused)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from livekit import rtc

from media import Publisher

JOIN_TIMEOUT_S = 20
EVENTS = ("reconnecting", "reconnected", "disconnected")
DATA_INTERVAL_S = 0.5


def published(room: rtc.Room) -> dict[str, str]:
    return {p.name: p.sid for p in room.local_participant.track_publications.values()}


async def ticks(room: rtc.Room, result: dict) -> None:
    """Reliable data messages, counting those the SDK refused (while reconnecting)."""
    result["data_refused"] = 0
    while True:
        try:
            await room.local_participant.publish_data(b"tick", reliable=True)
        except Exception:
            result["data_refused"] += 1
        await asyncio.sleep(DATA_INTERVAL_S)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--audio-only", action="store_true", help="publish the tone alone, no test card")
    parser.add_argument("--red", choices=("on", "off"), help="turn the SDK's RED on or off (else its default)")
    args = parser.parse_args()
    result: dict = {"connected": False}
    events: list = []
    room = rtc.Room()
    start = time.monotonic()

    def note(name: str) -> None:
        events.append([round(time.monotonic() - start, 2), name])

    for name in EVENTS:
        room.on(name, lambda *_, name=name: note(name))
    room.on("connection_state_changed",
            lambda state: note(f"state:{rtc.ConnectionState.Name(state)}"))
    publisher = Publisher(room, video=not args.audio_only, red={"on": True, "off": False}.get(args.red))
    try:
        await asyncio.wait_for(room.connect(args.url, args.token), JOIN_TIMEOUT_S)
        result["connected"] = True
        start = time.monotonic()
        await publisher.start()
        result.update(sid=room.local_participant.sid, tracks=published(room))
        ticking = asyncio.create_task(ticks(room, result))
        await asyncio.sleep(args.seconds)
        ticking.cancel()
        result.update(sid_at_end=room.local_participant.sid, tracks_at_end=published(room),
                      state=rtc.ConnectionState.Name(room.connection_state))
        result["events"] = list(events)
    except asyncio.TimeoutError:
        result["error"] = "timed out joining"
    finally:
        await publisher.stop()
        await room.disconnect()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    # The result is printed: leave without finalizing the interpreter, where the SDK's threads have aborted the
    # process (a Rust panic "in a function that cannot unwind", exit -6) after a clean disconnect.
    os._exit(0)
