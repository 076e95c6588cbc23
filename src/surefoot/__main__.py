from __future__ import annotations

from surefoot.cli import main

main(prog_name="surefoot")
