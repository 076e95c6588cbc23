#!/usr/bin/env python3
"""Type-check the Python snippets of README.md and docs/*.md with mypy.

Each page's ```python blocks are read in order as the body of one ``async def`` (so a
snippet may ``await``), as a reader would type them into one session; ``app`` (the user's
own ASGI app) is the only name given in advance.
A block that is not meant to run alone starts with a ``# not checked: <why>`` line.
A name used before the block that imports it is an error too (mypy does not see it, but a
reader typing the blocks in order gets a NameError).
Errors are reported as page:line.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ``typing`` under a name no snippet uses, so that a snippet must import ``Any`` itself
PREAMBLE = "import typing as _typing\n\n\nasync def page(app: _typing.Any) -> None:\n"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)


def module(page: Path) -> tuple[str, list[int]]:
    """The page's blocks as one module, and the page line of each module line."""
    text = page.read_text()
    lines, where = PREAMBLE.splitlines(), [0] * len(PREAMBLE.splitlines())
    for block in FENCE.finditer(text):
        body = block.group(1)
        if body.startswith("# not checked:"):
            continue
        first = text.count("\n", 0, block.start(1)) + 1
        for offset, line in enumerate(body.splitlines()):
            lines.append(f"    {line}" if line else "")
            where.append(first + offset)
    return "\n".join(lines) + "\n", where


def _loaded(node: ast.AST) -> list[ast.Name]:
    """The names a statement reads when it runs (a function's body runs later)."""
    if isinstance(node, ast.Name):
        return [node] if isinstance(node.ctx, ast.Load) else []
    later: list[ast.AST] = []
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        later = list(node.body)
    elif isinstance(node, ast.Lambda):
        later = [node.body]
    return [n for child in ast.iter_child_nodes(node) if child not in later for n in _loaded(child)]


def used_before_import(source: str) -> list[tuple[int, str]]:
    """(module line, name) of each name read before the block that imports it: mypy reports
    a variable or function used before its definition, but not an import."""
    page = ast.parse(source).body[-1]
    assert isinstance(page, ast.AsyncFunctionDef)
    imported: dict[str, int] = {}
    for i, statement in enumerate(page.body):
        if isinstance(statement, ast.Import | ast.ImportFrom):
            for alias in statement.names:
                imported.setdefault((alias.asname or alias.name).split(".")[0], i)
    return [
        (name.lineno, name.id)
        for i, statement in enumerate(page.body)
        for name in _loaded(statement)
        if imported.get(name.id, i) > i
    ]


def main() -> int:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with tempfile.TemporaryDirectory() as tmp:
        maps: dict[str, tuple[Path, list[int]]] = {}
        early: list[str] = []
        for page in pages:
            source, where = module(page)
            if len(where) == len(PREAMBLE.splitlines()):
                continue
            name = f"snippet_{page.stem.replace('-', '_').lower()}.py"
            (Path(tmp) / name).write_text(source)
            maps[name] = (page, where)
            early += [
                f"{page.relative_to(ROOT)}:{where[line - 1]}: Name {used!r} is used before "
                "the block that imports it"
                for line, used in used_before_import(source)
            ]
        result = subprocess.run(
            [
                sys.executable, "-m", "mypy", "--strict", "--allow-untyped-defs",
                "--allow-incomplete-defs", "--allow-redefinition", "--no-warn-unused-ignores",
                # Django and DRF ship no types: their names are Any, as in a user's project.
                "--disable-error-code=import-untyped", "--allow-subclassing-any",
                "--python-version=3.11",
                "--config-file=", "--no-error-summary", "--show-error-codes", *sorted(maps),
            ],
            cwd=tmp, capture_output=True, text=True,
        )  # fmt: skip
    for line in early:
        print(line)
    errors = len(early)
    for line in result.stdout.splitlines():
        found = re.match(r"(snippet_\w+\.py):(\d+): (\w+): (.*)", line)
        if not found:
            print(line)
            continue
        page, where = maps[found.group(1)]
        if found.group(3) == "note":
            continue
        errors += 1
        print(f"{page.relative_to(ROOT)}:{where[int(found.group(2)) - 1]}: {found.group(4)}")
    if result.returncode not in (0, 1) or (result.returncode == 1 and not errors):
        print(result.stderr, file=sys.stderr)
        return 2
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
