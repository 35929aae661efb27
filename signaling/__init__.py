"""The control plane: LiveKit signalling, rooms, the WebRTC peer stack, RoomService, webhooks and the `tern` CLI."""
