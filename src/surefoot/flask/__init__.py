"""Flask: idempotency keys and rate limits for a Flask app, with Flask's error handling.

``Surefoot`` is the extension (``Surefoot(app)`` or ``init_app``): app-wide protections from
its arguments or from ``app.config["SUREFOOT"]`` (the gateway policy file's tables), the
``limit`` and ``idempotent`` view decorators, and the error handler that turns every
surefoot problem into the problem+json response. ``HTTPProblem`` is what Flask's error
handlers receive for a refused request (``@app.errorhandler(429)``). Built on the guards of
``surefoot.wsgi`` and the synchronous stores. Needs ``surefoot[flask]``.
"""

from __future__ import annotations

from surefoot.flask._extension import Surefoot
from surefoot.flask._problem import HTTPProblem

__all__ = ["HTTPProblem", "Surefoot"]
