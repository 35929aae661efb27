"""LiveKit's signal protocol: turns a client's signal connection into calls on its Participant."""
