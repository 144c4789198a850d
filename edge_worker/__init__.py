"""The edge plane: Twilio's public front door, as a standard-library core plus thin adapters.

``edge_worker.core.handle`` answers requests; ``edge_worker.asgi`` serves it under uvicorn and
``edge_worker.worker`` on Cloudflare. This package's ``__init__`` imports only the stdlib core,
so the Cloudflare bundle never pulls in an adapter it does not use.
"""

from edge_worker.config import EdgeConfig, EdgeConfigError, NumberRoute
from edge_worker.core import EdgeRequest, EdgeResponse, handle

__all__ = ["EdgeConfig", "EdgeConfigError", "EdgeRequest", "EdgeResponse", "NumberRoute", "handle"]
