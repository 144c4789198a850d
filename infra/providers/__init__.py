"""Pulumi dynamic providers around the official SDKs (``twilio``, ``livekit-api``, ``modal``).

Each provider is a plain class whose CRUD methods take and return dicts, so the tests call them
directly against real local peers (the Twilio simulator, livekit-server); the ``Resource``
subclass beside each one is what the program declares. Providers hold no state (clients are made
inside each method), so the pickled provider captured in the state carries no secret and no
connection.
"""
