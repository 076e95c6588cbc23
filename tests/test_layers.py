"""The layers hold at run time: importing a core loads no I/O module and no adapter.

``scripts/check`` runs the static contracts (``lint-imports``, configured under
``[tool.importlinter]`` in ``pyproject.toml``); this test checks what Python really loads,
package ``__init__`` modules included, which a static import graph cannot see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: The pure modules: cores, policies, events and store interfaces.
CORES = [
    "surefoot.idempotency._core",
    "surefoot.idempotency._policy",
    "surefoot.idempotency._store",
    "surefoot.ratelimit._algorithms",
    "surefoot.ratelimit._core",
    "surefoot.ratelimit._policy",
    "surefoot.ratelimit._store",
    "surefoot.client._flow",
    "surefoot.chaos._plan",
    "surefoot.webhooks._event",
    "surefoot.webhooks._order",
    "surefoot.webhooks._store",
    "surefoot.webhooks._verify",
    "surefoot.outbox._core",
    "surefoot.outbox._signing",
    "surefoot.saga._core",
    "surefoot.metrics._alert",
    "surefoot.metrics._board",
    "surefoot.metrics._notify",
    "surefoot.metrics._rules",
    "surefoot.metrics._topk",
    "surefoot.abuse._anomaly",
    "surefoot.abuse._bans",
    "surefoot.abuse._failures",
    "surefoot.openapi._enrich",
    "surefoot.contracts._lifecycle",
    "surefoot.contracts._versions",
    "surefoot.probe._plan",
    "surefoot._health",
]

#: What a core must never load: I/O, drivers, and the layers above it.
FORBIDDEN = (
    "asyncio",
    "sqlite3",
    "httpx",
    "redis",
    "psycopg",
    # Read a configuration file lazily (chaos._plan imports its schema when it reads one):
    # a static graph counts that import, so only this test can hold these two.
    "pydantic",
    "prometheus_client",
    "surefoot.storage",
    "surefoot.idempotency.middleware",
    "surefoot.idempotency.transactional",
    "surefoot.ratelimit.middleware",
    "surefoot.ratelimit.dependency",
    "surefoot.gateway",
)


def _loaded(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    # Without coverage's measurement of subprocesses, which itself loads sqlite3 and asyncio.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", CORES)
def test_a_core_loads_no_io_module(module: str) -> None:
    loaded = _loaded(f"import {module}")
    assert module in loaded
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert bad == [], f"importing {module} loads {bad}"


#: The stores, and what they load: a door that needs only their interfaces leaves them out.
STORES = (
    "sqlite3",
    "surefoot.storage._registry",
    "surefoot.storage.memory",
    "surefoot.storage.sqlite",
    "surefoot.storage.redis",
    "surefoot.storage.postgres",
)


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import surefoot.storage", (*STORES, "asyncio")),
        ("import surefoot.testing", STORES),
        ("import surefoot.client._schema", (*STORES, "asyncio", "httpx")),
        ("from surefoot.client import BreakerTable", (*STORES, "asyncio", "httpx")),
    ],
)
def test_a_door_loads_no_store_it_does_not_need(statement: str, forbidden: tuple[str, ...]) -> None:
    loaded = _loaded(statement)
    bad = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert bad == [], f"{statement} loads {bad}"


@pytest.mark.parametrize(
    "first", ["surefoot.storage", "surefoot.idempotency", "surefoot.ratelimit", "surefoot.cli"]
)
def test_public_doors_import_in_any_order(first: str) -> None:
    loaded = _loaded(
        f"import {first}; from surefoot.idempotency import IdempotencyMiddleware; "
        "from surefoot.ratelimit import RateLimitMiddleware; import surefoot.storage"
    )
    assert {"surefoot.idempotency.middleware", "surefoot.ratelimit.middleware"} <= loaded


def test_a_lazy_name_that_does_not_exist_is_an_attribute_error() -> None:
    import surefoot.idempotency

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = surefoot.idempotency.Nope  # type: ignore[attr-defined]


def test_the_documented_layers_are_the_enforced_ones() -> None:
    import re
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["id"] == "layers"]
    page = (root / "docs" / "architecture.md").read_text()
    table = page.split("## The layers", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    documented = [re.split(r"\s{2,}", line, maxsplit=1)[0] for line in table.splitlines()]
    assert documented == layers


def test_a_lazy_name_is_listed_before_it_is_loaded() -> None:
    loaded = _loaded(
        "import surefoot.idempotency as i; assert 'IdempotencyMiddleware' in dir(i); "
        "assert 'Record' in dir(i)"
    )
    assert "surefoot.idempotency.middleware" not in loaded
