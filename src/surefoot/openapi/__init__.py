"""OpenAPI enrichment: the key parameter, problem responses and rate-limit headers that
``IdempotencyMiddleware`` and ``RateLimitMiddleware`` add to an API, in its OpenAPI document.

The work is done by ``enrich`` (``_enrich``, pure: a document in, a new document out);
``install`` makes a FastAPI app's ``/openapi.json`` and ``/docs`` show it. Neither
imports FastAPI.
"""

from __future__ import annotations

from surefoot.openapi._enrich import EMITTED, PROBLEM_SCHEMA, enrich
from surefoot.openapi._install import install

__all__ = ["EMITTED", "PROBLEM_SCHEMA", "enrich", "install"]
