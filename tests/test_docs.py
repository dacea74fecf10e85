"""The research records the docs cite exist, and docs/results/README.md lists every one."""

from __future__ import annotations

import itertools
import re

from tests.conftest import REPO

CITED = re.compile(r"docs/results/[\w./{},*-]+")


def _expand(path: str) -> list[str]:
    """`a_{x,y}_{1,2}.json` -> the four paths it stands for (a `*` is left for glob)."""
    parts = re.split(r"(\{[^}]*\})", path)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def test_every_cited_record_exists() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "search_spaces").glob("*.yaml"))]
    missing = []
    for page in pages:
        for hit in CITED.findall(page.read_text()):
            for path in _expand(hit.rstrip(".,)")):
                if not ((REPO / path).exists() or ("*" in path and list(REPO.glob(path)))):
                    missing.append(f"{page.relative_to(REPO)}: {path}")
    assert missing == []


def test_the_records_index_names_every_record() -> None:
    root = REPO / "docs" / "results"
    index = (root / "README.md").read_text()
    files = [p.name for p in root.iterdir() if p.is_file() and p.name != "README.md"]
    runs = [f"runs/{p.name}/" for p in (root / "runs").iterdir()]
    assert [n for n in files + runs if f"`{n}`" not in index] == []
