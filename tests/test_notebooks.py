"""What every chapter notebook must carry: an install cell for Colab/Binder, exercises whose
solutions execute, and well-formed theorem blocks (the rendering itself is checked by test_book)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
REPOSITORY = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_chapters():
    assert len(CHAPTERS) >= 9


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_first_code_cell_installs_ntklib_from_the_configured_repository(notebook):
    """Colab and Binder start without ntklib; the first code cell installs it when it is missing,
    from the repository that _config.yml's launch buttons point at, and is hidden on the website."""
    first = next(cell for cell in cells(notebook) if cell["cell_type"] == "code")
    text = source(first)
    assert 'importlib.util.find_spec("ntklib") is None' in text
    assert f"git+{REPOSITORY}" in text
    assert "remove-cell" in first["metadata"].get("tags", [])
    assert not first.get("outputs"), "with ntklib installed the cell prints nothing (nbval compares outputs)"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_kernel_is_the_venvs(notebook):
    """The kernel spec the notebook names is the one ipykernel installs in the venv, so opening a
    chapter in `make lab` does not mark it changed."""
    spec = json.loads(notebook.read_text())["metadata"]["kernelspec"]
    assert spec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_code_lines_fit_the_page(notebook):
    """The site cuts code lines longer than about 88 characters (ruff format --line-length 88)."""
    long = [line for cell in cells(notebook) if cell["cell_type"] == "code"
            for line in source(cell).split("\n") if len(line) > 88]  # fmt: skip
    assert not long, f"{notebook.name}: {len(long)} code lines longer than 88 characters, e.g. {long[0]!r}"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_exercises_have_executing_solutions(notebook):
    """At least two exercises, each followed by a dropdown solution with a code cell that asserts."""
    all_cells = cells(notebook)
    labels = [m.group(1) for cell in all_cells if cell["cell_type"] == "markdown"
              for m in re.finditer(r"```\{exercise\}[^\n]*\n:label: (\S+)", source(cell))]  # fmt: skip
    assert len(labels) >= 2, f"{notebook.name}: {len(labels)} exercises"
    assert len(set(labels)) == len(labels)
    for label in labels:
        start = next((i for i, cell in enumerate(all_cells)
                      if source(cell).startswith(f"```{{solution-start}} {label}\n")), None)  # fmt: skip
        assert start is not None, f"{label}: no solution"
        assert ":class: dropdown" in source(all_cells[start]), f"{label}: the solution is not hidden"
        end = next(i for i in range(start + 1, len(all_cells)) if source(all_cells[i]).startswith("```{solution-end}"))
        code = [source(cell) for cell in all_cells[start + 1 : end] if cell["cell_type"] == "code"]
        assert code, f"{label}: the solution has no code cell"
        assert any("assert" in text for text in code), f"{label}: the solution checks nothing"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_theorem_blocks_are_labelled_and_proved(notebook):
    """Every theorem, proposition or lemma has a label and is followed by a proof block, or cites
    where the proof is (Mercer's theorem is quoted, not proved)."""
    all_cells = [source(cell) for cell in cells(notebook) if cell["cell_type"] == "markdown"]
    kinds = ("theorem", "proposition", "lemma")
    for i, text in enumerate(all_cells):
        for match in re.finditer(r"```\{prf:(" + "|".join(kinds) + r")\}[^\n]*\n(:label: \S+)?", text):
            assert match.group(2), f"{notebook.name}: an unlabelled {match.group(1)}"
            block = text[match.end():].split("\n```", 1)[0]
            rest = text[match.end():] + "".join(all_cells[i + 1 : i + 3])
            assert "{prf:proof}" in rest or "{cite}" in block, f"{notebook.name}: {match.group(2)}: no proof, no citation"


@pytest.mark.parametrize("notebook", CHAPTERS, ids=lambda p: p.stem)
def test_no_placeholder_text(notebook):
    """Draft markers must not reach the reader (one once did: a cell reading PLACEHOLDER_FINDINGS)."""
    for cell in cells(notebook):
        found = re.search(r"PLACEHOLDER|TODO|FIXME|XXX", source(cell))
        assert not found, f"{notebook.name}: {found.group(0)!r} in {source(cell)[:80]!r}"
