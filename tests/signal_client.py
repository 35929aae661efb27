"""A bare LiveKit signal client (protobuf over WebSocket) for driving the server where an SDK would not misbehave."""
from __future__ import annotations

import asyncio
import base64

from livekit.protocol import models, rtc
from websockets.asyncio.client import ClientConnection, connect


class SignalClient:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def join(cls, url: str, token: str) -> tuple[SignalClient, rtc.JoinResponse]:
        connection = await connect(f"{url}/rtc?protocol=16&auto_subscribe=1", additional_headers={"Authorization": f"Bearer {token}"})
        client = cls(connection)
        first = await client.receive()
        assert first.WhichOneof("message") == "join", first
        return client, first.join

    @classmethod
    async def reconnect(cls, url: str, token: str, sid: str, v1: bool = False) -> tuple[SignalClient, rtc.SignalResponse]:
        """A resume of the session `sid` as the SDKs ask for it (on /rtc, or on /rtc/v1 in a join_request); returns
        the client and the first message."""
        if v1:
            join = rtc.JoinRequest(client_info=models.ClientInfo(protocol=16), reconnect=True, participant_sid=sid,
                                   reconnect_reason=models.ReconnectReason.RR_SIGNAL_DISCONNECTED)
            wrapped = rtc.WrappedJoinRequest(join_request=join.SerializeToString()).SerializeToString()
            path = f"/rtc/v1?join_request={base64.urlsafe_b64encode(wrapped).decode()}"
        else:
            path = f"/rtc?protocol=16&reconnect=1&reconnect_reason=1&sid={sid}"
        connection = await connect(url + path, additional_headers={"Authorization": f"Bearer {token}"})
        client = cls(connection)
        return client, await client.receive()

    async def send(self, request: rtc.SignalRequest) -> None:
        await self.connection.send(request.SerializeToString())

    async def receive(self, timeout: float = 10) -> rtc.SignalResponse:
        return rtc.SignalResponse.FromString(await asyncio.wait_for(self.connection.recv(), timeout))

    async def receive_until(self, kind: str, timeout: float = 10) -> rtc.SignalResponse:
        async def wait() -> rtc.SignalResponse:
            while True:
                response = await self.receive(timeout)
                if response.WhichOneof("message") == kind:
                    return response
        return await asyncio.wait_for(wait(), timeout)
