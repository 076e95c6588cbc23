"""The gateway's ASGI app built for granian (``bench/gateway.py --servers granian``).

granian imports this module in each of its workers and calls ``app()`` (``--factory``):
the policy file is ``SUREFOOT_BENCH_CONFIG``, logging is ``surefoot serve``'s JSON lines.
No admin API (the benchmark does not use it).
"""

from __future__ import annotations

import os
from typing import Any

from surefoot.gateway import Gateway, GatewayMetrics, load_config
from surefoot.gateway._serve import _configure_logging


def app() -> Any:
    path = os.environ["SUREFOOT_BENCH_CONFIG"]
    config = load_config(path)
    _configure_logging(config.root.server.log_level)
    workers = int(os.environ.get("SUREFOOT_BENCH_WORKERS", "1"))
    metrics = GatewayMetrics(multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return Gateway(config, config_path=path, metrics=metrics, workers=workers)
