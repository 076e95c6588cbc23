"""``lazy_names``: a public door that imports an adapter only when one of its names is used.

A package's ``__init__`` imports its pure modules (cores, events, policies, store
interfaces) at once and hands the names of its adapters (middlewares, transports: the
modules that import asyncio or a driver) to ``__getattr__, __dir__ = lazy_names(...)``,
importing the same names under ``if TYPE_CHECKING`` for the type checker. So
``import surefoot.idempotency._core`` loads no I/O module, while
``from surefoot.idempotency import IdempotencyMiddleware`` works as before (PEP 562).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence

__all__ = ["lazy_names"]


def lazy_names(
    package: str, modules: Mapping[str, Sequence[str]], *, extra: tuple[str, str] | None = None
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A module's ``__getattr__`` and ``__dir__`` for ``package``: ``{module: names}`` imported
    on first use, and listed by ``dir()`` (and so by completion) from the start.

    With ``extra=(distribution_module, extra_name)``, a name used while that module is not
    installed raises one ``ImportError`` line naming the extra to install.
    """
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if extra is not None and importlib.util.find_spec(extra[0]) is None:
            raise ImportError(
                f"{package}.{name} needs the {extra[1]!r} extra: pip install 'surefoot[{extra[1]}]'"
            )
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # the next use is a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *home})

    return __getattr__, __dir__
