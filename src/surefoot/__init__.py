"""surefoot makes HTTP APIs survive the real world.

Each subpackage's ``__init__`` is its public door: ``surefoot.idempotency``,
``surefoot.ratelimit``, ``surefoot.storage``, ``surefoot.client``, ``surefoot.chaos``,
``surefoot.metrics``, ``surefoot.gateway``, ``surefoot.testing``, and the modules
``surefoot.errors``, ``surefoot.events``, ``surefoot.clock``, ``surefoot.identity``. A private
module (``_name``) is used only inside its own package; ``docs/architecture.md`` draws the
layers that ``scripts/check`` enforces.
"""

from __future__ import annotations

import logging

from surefoot._version import __version__

# A library adds no handler of its own: without logging configured, events stay silent
# instead of reaching Python's last-resort stderr handler.
logging.getLogger("surefoot").addHandler(logging.NullHandler())

__all__ = ["__version__"]
