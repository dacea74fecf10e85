"""The layers hold: Ray only in study/tune (and cli, lazily), run-folder names only in
study/layout.py, no import circles, no environment changed at import, no pointers outside the
repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from study import layout
from tests.conftest import REPO

PACKAGE = REPO / "study"


def _modules() -> dict[str, Path]:
    """Every module of study/ and models/ by dotted name."""
    out = {}
    for root in ("study", "models"):
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The modules `path` imports (at module level only, or anywhere in it)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` blocks are not imports at run time
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_the_pure_packages_import_without_ray() -> None:
    code = ("import sys, study.train.loop, study.train.pretrain, study.plan.budget, study.plan.trials, "
            "study.analysis.report, study.data.coco, study.data.checks, study.layout, study.config, "
            "models.mask_rcnn, models.init; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_study_tune_imports_ray_only_where_it_starts_ray_jobs() -> None:
    """`study analyze s3://...`, `study trial --no-ray` and `study pretrain` need no Ray: of
    study/tune, only the driver and the searcher import it when imported."""
    code = ("import sys, study.cli, study.tune.storage, study.tune.forking, study.tune.weights, "
            "study.tune.trial_fn, study.tune.preflight, study.tune.jobs, study.tune.launch; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_only_study_tune_and_the_cli_import_ray() -> None:
    offenders = []
    for name, path in _modules().items():
        rays = {m for m in _imports(path, top_level_only=False) if m == "ray" or m.startswith("ray.")}
        if not rays or name.startswith("study.tune"):
            continue
        offenders.append((name, sorted(rays)))
    assert offenders == []
    # the CLI imports study.tune only inside the commands that need it
    top = _imports(PACKAGE / "cli.py", top_level_only=True)
    assert not any(m.startswith(("ray", "study.tune")) for m in top), sorted(top)


def test_there_is_no_import_circle() -> None:
    modules = _modules()
    graph = {name: {m for m in _imports(path, top_level_only=True) if m in modules and m != name}
             for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                pytest.fail("import circle: " + " -> ".join([*path[path.index(dep):], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_layers_import_downwards_only() -> None:
    """plan/ and analysis/ know nothing of training or Ray; train/ nothing of tune/; config nothing of plan/."""
    allowed_not = {"study.config": ("study.plan", "study.train", "study.tune", "study.analysis"),
                   "study.plan": ("study.train", "study.tune", "study.analysis", "torch"),
                   "study.train": ("study.tune", "study.analysis"),
                   "study.analysis": ("study.train", "study.tune", "torch"),
                   "study.data": ("study.plan", "study.train", "study.tune", "study.analysis"),
                   "study.layout": ("study.",),
                   "models": ("study",)}
    bad = []
    for name, path in _modules().items():
        for layer, banned in allowed_not.items():
            if name == layer or name.startswith(layer + "."):
                bad += [(name, m) for m in _imports(path, top_level_only=False) if m.startswith(banned)]
    assert bad == []


def test_no_module_changes_the_environment_at_import() -> None:
    # Ray and torch set a few variables of their own when imported: import them first
    code = ("import os, sys, torch, torchvision, ray, ray.tune, ray.train, ray.train.torch, optuna; "
            "before = dict(os.environ); "
            "import study.cli, study.tune.driver, study.tune.jobs, study.tune.trial_fn, study.tune.launch, "
            "study.tune.weights, study.tune.searcher; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def _distributed_uses(path: Path) -> list[str]:
    """Where `path` imports torch.distributed or names it (`torch.distributed.x`, `from torch
    import distributed`), as 'file:line'."""
    tree = ast.parse(path.read_text())
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            lines.add(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.startswith("torch.distributed")
                or (node.module == "torch" and any(a.name == "distributed" for a in node.names))):
            lines.add(node.lineno)
        elif (isinstance(node, ast.Attribute) and node.attr == "distributed"
              and isinstance(node.value, ast.Name) and node.value.id == "torch"):
            lines.add(node.lineno)
    return [f"{path.relative_to(REPO)}:{n}" for n in sorted(lines)]


def test_only_the_collectives_module_touches_torch_distributed() -> None:
    """Collectives on the wrong backend fail on GPUs only: every one goes through
    study/train/collectives.py, which this test finds, and nothing else in the code (benchmarks
    included) calls torch.distributed."""
    own = REPO / "study" / "train" / "collectives.py"
    assert _distributed_uses(own)  # the check would see a use
    files = [p for root in ("study", "models", "bench") for p in sorted((REPO / root).rglob("*.py"))]
    assert [use for p in files if p != own for use in _distributed_uses(p)] == []


def _run_folder_names() -> set[str]:
    """The file and folder names of the run folder that study/layout.py defines."""
    names = {v for k, v in vars(layout).items() if k.isupper() and isinstance(v, str)}
    return names | {layout.fork_checkpoint(0).split("0")[0]}  # the 'fork_' prefix


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module, docstrings left out (prose may name the files)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_every_run_folder_name_is_spelled_only_in_layout() -> None:
    names = _run_folder_names()
    assert {"metrics.jsonl", "checkpoint.pt", "fork.json", "study.yaml", "run.json", "failed.txt",
            "trials", "train_runs", "fork_"} <= names
    # a name alone, or as a path part / file name inside a longer string ("x/metrics.jsonl", "fork_{it}.pt")
    pattern = re.compile(r"(?:^|[/\s'\"`])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                         + r")(?:$|[/\s'\"`.{])")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "layout.py":
            continue
        for line, text in _code_strings(path):
            for hit in pattern.finditer(text):
                # a folder name that is also a word ("data", "pretrained": the init) counts as a
                # path part: with a '/' beside it
                word = hit.group(1).isalpha()
                start, end = hit.span(1)
                if not word or "/" in text[max(0, start - 1):start] + text[end:end + 1]:
                    found.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert found == []


def test_one_atomic_write_serves_every_writer() -> None:
    """os.replace appears once in the package: inside layout.move, which atomic_write and
    write_checkpoint use."""
    uses = [f"{p.relative_to(REPO)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if "os.replace(" in line]
    assert uses == ["study/layout.py:" + str(next(i for i, line in enumerate(
        (PACKAGE / "layout.py").read_text().splitlines(), 1) if "os.replace(" in line))]


def test_nothing_points_outside_the_repository() -> None:
    """No comment, docstring or doc names the notes beside the project or an issue number."""
    pattern = re.compile(r"RAY_NOTES|PAPER\.md|STYLE\.md|\.\./shared|issue\s*#?\d|#\d+\b(?!\s*[x)])", re.I)
    found = []
    files = [*REPO.glob("*.md"), REPO / "cluster.yaml", *REPO.glob("search_spaces/*.yaml")]
    for root in ("study", "models", "bench", "tests"):
        files += sorted((REPO / root).rglob("*.py"))
    for path in files:
        if path == Path(__file__):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and "shared/data/fruits_nuts" not in line:
                found.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert found == []
