"""Both servers collect their cyclic garbage less often than Python does by default
(``surefoot._heap``), set in the process that serves. Each case runs the server's own
entry point in a child process: the test process's collector stays as it is."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest

from surefoot import _heap

#: ``surefoot decide``'s worker: its app factory, as uvicorn calls it.
DECIDE = """
import asyncio, gc, os, sys
os.environ["SUREFOOT_DECIDE_CONFIG"] = sys.argv[1]
from surefoot.edge import _serve

async def main():
    app = _serve._app()
    print(gc.get_threshold())
    await app.aclose()

asyncio.run(main())
"""

#: ``surefoot serve``'s worker, its uvicorn server replaced by one that reports.
SERVE = """
import gc, sys
import uvicorn
from surefoot.gateway import _serve

async def serve(self, sockets):
    print(gc.get_threshold())

uvicorn.Server.serve = serve
_serve._worker(sys.argv[1], _serve._bind("127.0.0.1", 0), None, 1, None)
"""


@pytest.mark.parametrize("server", ["decide", "serve"])
def test_the_server_collects_its_young_generation_less_often(tmp_path: Path, server: str) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(
        '[upstream]\nurl = "http://127.0.0.1:9"\n\n'
        f'[stores]\ndefault = "sqlite:///{tmp_path}/decisions.db"\n\n'
        '[admin]\nenabled = false\n\n[[rate_limit.policies]]\nname = "reads"\nlimits = ["5/hour"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", DECIDE if server == "decide" else SERVE, str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    older = gc.get_threshold()[1:]  # the child starts with Python's, as this process did
    assert done.stdout.strip() == str((_heap.GC_THRESHOLD, *older)), done.stdout + done.stderr
