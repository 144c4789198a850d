"""Helpers the tests share, each written once: polling (``waiting``), loopback ports
(``ports``), simulated LiveKit participants (``livekit_people``), LiveKit tokens and webhook
signatures (``tokens``), settings for a test (``settings``), queries on the running local
stack (``stack``) and a real redis-server with a fresh key prefix per test (``redis``). Running
a real livekit-server is ``tests/livekit_server.py``; Hypothesis strategies for hostile JSON
are ``hostile``; serving an ASGI app is
``tests/servers.py``. A tiny service to run as replicas is ``echo_service``, and a parent
process for the parent-death test is ``replica_parent``."""
