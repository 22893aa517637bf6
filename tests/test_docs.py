"""Every ```python block in the documentation runs, and the documentation builds; so does
every example in the library's docstrings.

Blocks of one page run in order in one namespace, as a reader would type them. A block
whose first lines carry the comment ``# requires: cuda`` is skipped where no GPU is
present (the rest of the page still runs). Failures name the page and the line of the block.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)")
_REQUIRES = re.compile(r"^\s*#\s*requires:\s*(?P<what>[\w, ]+)$")


@dataclass
class Block:
    line: int  # line of the first line of code, 1-based
    source: str
    requires: frozenset[str]


def python_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown page, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        start = i + 1
        i = start
        while i < len(lines) and not re.match(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$", lines[i]):
            i += 1
        if opening["info"].lower() in ("python", "py", "python3"):
            indent = opening["indent"]
            body = [line[len(indent) :] if line.startswith(indent) else line for line in lines[start:i]]
            requires = set()
            for line in body:
                marker = _REQUIRES.match(line)
                if marker:
                    requires |= {w.strip() for w in marker["what"].split(",")}
            blocks.append(Block(line=start + 1, source="\n".join(body) + "\n", requires=frozenset(requires)))
        i += 1
    return blocks


def test_the_extractor_sees_fences_and_markers():
    page = "\n".join(
        [
            "text", "```python", "a = 1", "```", "```console", "$ ls", "```",
            "````python", "# requires: cuda", "```", "````", "~~~py", "b = a", "~~~",
        ]
    )  # fmt: skip
    blocks = python_blocks(page)
    assert [b.source for b in blocks] == ["a = 1\n", "# requires: cuda\n```\n", "b = a\n"]
    assert [b.line for b in blocks] == [3, 9, 13]
    assert blocks[1].requires == {"cuda"}


def test_every_page_is_found():
    names = {p.name for p in PAGES}
    assert {"index.md", "getting-started.md", "tutorial.md", "tolerances.md", "conventions.md"} <= names


def _available(requirement: str) -> bool:
    if requirement == "cuda":
        return torch.cuda.is_available()
    raise ValueError(f"unknown requirement {requirement!r} in a docs code block; known: cuda")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_code_blocks_run(page: Path):
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    if not blocks:
        pytest.skip(f"{page.name} has no python code blocks")
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    skipped = []
    grad_enabled, default_dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    try:
        with torch.random.fork_rng(devices=[]):  # pages seed torch; later tests get the state back
            torch.manual_seed(0)
            for block in blocks:
                missing = sorted(r for r in block.requires if not _available(r))
                if missing:
                    skipped.append(f"line {block.line} (needs {', '.join(missing)})")
                    continue
                _run(page, block, namespace)
    finally:  # the tutorial switches these; they must not leak into other tests
        torch.set_grad_enabled(grad_enabled)
        torch.set_default_dtype(default_dtype)
    if skipped:
        print(f"skipped blocks in {page.name}: {'; '.join(skipped)}")


def _run(page: Path, block: Block, namespace: dict[str, object]) -> None:
    # Pad with newlines so that tracebacks point at the line in the Markdown file.
    code = compile("\n" * (block.line - 1) + block.source, str(page), "exec")
    try:
        exec(code, namespace)
    except Exception as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(page)]
        where = f"line {frames[-1].lineno}: {frames[-1].line}" if frames else f"the block at line {block.line}"
        pytest.fail(
            f"{page.relative_to(ROOT)}, {where}\n{type(error).__name__}: {error}\n\n"
            f"The code block (from line {block.line}):\n{block.source}",
            pytrace=False,
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_sphinx_build_has_no_warnings(tmp_path: Path):
    build = pytest.importorskip("sphinx.cmd.build", reason="sphinx is not installed (pip install -e '.[docs]')")
    pytest.importorskip("myst_parser", reason="myst-parser is not installed (pip install -e '.[docs]')")
    warnings = tmp_path / "warnings.txt"
    status = build.build_main(
        ["-W", "--keep-going", "-q", "-b", "html", "-w", str(warnings), "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(tmp_path / "html")]
    )  # fmt: skip
    assert status == 0, warnings.read_text()
    assert (tmp_path / "html" / "index.html").exists()


MODULES = sorted(p.stem for p in (ROOT / "autocheck").glob("*.py") if p.stem != "__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"autocheck.{name}" if name != "__init__" else "autocheck")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of autocheck/{name}.py failed (see the output)"
