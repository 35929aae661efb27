"""LiveKit Agents: workers connect to /agent (worker.py, endpoint.py), the dispatcher hands them jobs for rooms
(dispatcher.py, job tokens in token.py), operators dispatch explicitly through AgentDispatchService (service.py)."""
