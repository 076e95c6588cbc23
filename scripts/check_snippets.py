#!/usr/bin/env python3
"""Type-check the Python snippets of README.md and docs/*.md with mypy.

Each page's ```python blocks are read in order as the body of one ``async def`` (so a
snippet may ``await``), as a reader would type them into one session; ``app`` (the user's
own ASGI app) is the only name given in advance.
A block that is not meant to run alone starts with a ``# not checked: <why>`` line.
A name used before the block that imports or defines it is an error too (mypy does not
see it for imports, but a reader typing the blocks in order gets a NameError).
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


def _bound(node: ast.AST) -> set[str]:
    """The names a statement of ``page`` binds in its scope (not inside nested scopes)."""
    names: set[str] = set()
    if isinstance(node, ast.Import | ast.ImportFrom):
        names.update((a.asname or a.name).split(".")[0] for a in node.names)
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
        names.add(node.id)
    elif isinstance(node, ast.ExceptHandler | ast.MatchAs | ast.MatchStar) and node.name:
        names.add(node.name)
    if isinstance(node, ast.Lambda | ast.comprehension):
        return names
    for child in ast.iter_child_nodes(node):
        names |= _bound(child)
    return names


def _loaded(node: ast.AST) -> list[ast.Name]:
    """The names a statement reads when it runs (a nested function's body runs later)."""
    if isinstance(node, ast.Name):
        return [node] if isinstance(node.ctx, ast.Load) else []
    if isinstance(node, ast.Lambda):
        return [n for d in node.args.defaults + node.args.kw_defaults if d for n in _loaded(d)]
    children: list[ast.AST] = list(ast.iter_child_nodes(node))
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        children = [c for c in children if c not in node.body]
    own: set[str] = set()  # a comprehension's own variables
    if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        own = {n.id for g in node.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
    return [name for child in children for name in _loaded(child) if name.id not in own]


def used_too_early(source: str) -> list[tuple[int, str]]:
    """(module line, name) of each name read before the statement that first binds it."""
    page = ast.parse(source).body[-1]
    assert isinstance(page, ast.AsyncFunctionDef)
    first: dict[str, int] = {}
    for i, statement in enumerate(page.body):
        for name in _bound(statement):
            first.setdefault(name, i)
    return [
        (name.lineno, name.id)
        for i, statement in enumerate(page.body)
        for name in _loaded(statement)
        if first.get(name.id, i) > i
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
                "the block that imports or defines it"
                for line, used in used_too_early(source)
            ]
        result = subprocess.run(
            [
                sys.executable, "-m", "mypy", "--strict", "--allow-untyped-defs",
                "--allow-incomplete-defs", "--allow-redefinition", "--no-warn-unused-ignores",
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
