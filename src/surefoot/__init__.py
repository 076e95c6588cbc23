"""surefoot makes HTTP APIs survive the real world.

Subpackages are the public doors: ``surefoot.idempotency``, ``surefoot.storage``,
``surefoot.errors``, ``surefoot.events``, ``surefoot.testing``, ``surefoot.clock``,
``surefoot.identity``.
"""

from __future__ import annotations

from surefoot._version import __version__

__all__ = ["__version__"]
