"""surefoot makes HTTP APIs survive the real world.

Subpackages are the public doors: ``surefoot.idempotency``, ``surefoot.storage``,
``surefoot.errors``, ``surefoot.events``, ``surefoot.testing``, ``surefoot.clock``,
``surefoot.identity``.
"""

from __future__ import annotations

import logging

from surefoot._version import __version__

# A library adds no handler of its own: without logging configured, events stay silent
# instead of reaching Python's last-resort stderr handler.
logging.getLogger("surefoot").addHandler(logging.NullHandler())

__all__ = ["__version__"]
