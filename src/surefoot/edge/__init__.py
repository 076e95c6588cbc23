"""The edge: NGINX, HAProxy and Envoy ask surefoot for rate-limit decisions, with the
gateway's policy file, identity rules and store (``docs/edge.md``).

``DecisionApp`` is the decision service (an ASGI app: ``/decide``, ``/healthz``,
``/readyz``), ``decide`` serves it with uvicorn (``surefoot decide``). Needs
``surefoot[gateway]``. ``EnvoyRateLimitService`` answers Envoy's gRPC
``ShouldRateLimit``, and ``serve_envoy`` serves it (``surefoot envoy``); they need
``surefoot[edge]`` and are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from surefoot._lazy import lazy_names
from surefoot.edge._decide import DecisionApp
from surefoot.edge._serve import decide

if TYPE_CHECKING:
    from surefoot.edge._envoy import EnvoyRateLimitService, EnvoyServer, serve_envoy
else:
    __getattr__, __dir__ = lazy_names(
        __name__,
        {"surefoot.edge._envoy": ("EnvoyRateLimitService", "EnvoyServer", "serve_envoy")},
    )

__all__ = [
    "DecisionApp",
    "EnvoyRateLimitService",
    "EnvoyServer",
    "decide",
    "serve_envoy",
]
