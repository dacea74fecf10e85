"""The README is a user's guide: short, every command in it works as written (each `study`
verb and flag is checked against the parser `study --help` prints), every link resolves."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from study.cli import build_parser
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def _study_commands() -> list[str]:
    """Every `study ...` invocation: lines of the README's code blocks (continuations joined) and
    inline code spans that start with `study ` or `.venv/bin/study `."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    spans = re.findall(r"`((?:\.venv/bin/)?study [^`]+)`", README)
    found = []
    for text in lines + spans:
        for hit in re.finditer(r"(?:^|[\s;&|(])(?:\.venv/bin/)?study\s+([^;&|#]*)", text):
            found.append(hit.group(1).strip())
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _check(words: list[str]) -> list[str]:
    """What is wrong with one command line (verbs, then flags of the innermost verb)."""
    parser, path = build_parser(), ["study"]
    words = [w for w in words if not (w.startswith("[") and w.endswith("]") and w[1:-1].isupper())]
    while words and _subparsers(parser) and not words[0].startswith("-"):
        verb = words.pop(0)
        if verb.isupper():  # `study VERB --help`: any verb
            return []
        choices = _subparsers(parser)
        if verb not in choices:
            return [f"{' '.join(path)}: no verb {verb!r} (has {', '.join(choices)})"]
        parser, path = choices[verb], [*path, verb]
    flags = {s for a in parser._actions for s in a.option_strings}
    problems = []
    for word in words:
        flag = word.strip("[]").split("=")[0]
        if flag.startswith("--") and flag not in flags:
            problems.append(f"{' '.join(path)}: no option {flag}")
    return problems


def test_the_readme_is_short() -> None:
    assert len(README.encode()) <= 30_000, len(README.encode())


def test_every_study_command_in_the_readme_parses() -> None:
    commands = _study_commands()
    assert len(commands) >= 20  # the code blocks and the command table
    problems = [p for c in commands for p in _check(shlex.split(c.replace("\\|", "|").replace("|", " ")))]
    assert problems == []


@pytest.mark.parametrize("command,problem", [
    ("analyse runs/x", "no verb 'analyse'"),
    ("run SPACE.yaml --storag runs", "study run: no option --storag"),
    ("data chek a.json", "study data: no verb 'chek'"),
])
def test_a_wrong_command_would_be_caught(command: str, problem: str) -> None:
    assert any(problem in p for p in _check(shlex.split(command)))


def test_every_link_in_the_readme_resolves() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    assert links and [link for link in links if "://" not in link and not (REPO / link).exists()] == []
