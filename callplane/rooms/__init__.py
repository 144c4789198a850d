"""LiveKit rooms: the agent job that serves a room, and phone calls that join one."""
