"""The agent room imports what docs/architecture.md says (model, gpu, cluster.kube, serving), and `berth agent` refuses
bad invocations with exit 2 and a sentence."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scheduler import cli

AGENT = Path(__file__).resolve().parents[2] / "scheduler" / "agent"
ALLOWED = ("scheduler.model", "scheduler.gpu", "scheduler.cluster.kube", "scheduler.serving", "scheduler.agent")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("scheduler")}


@pytest.mark.parametrize("path", sorted(AGENT.rglob("*.py")), ids=lambda p: str(p.relative_to(AGENT)))
def test_the_agent_imports_only_its_rooms(path: Path) -> None:
    stray = {n for n in _imports(path) if not n.startswith(ALLOWED)}
    assert not stray, f"{path.name} imports {stray}"


def test_nothing_but_the_cli_imports_the_agent() -> None:
    root = AGENT.parent
    users = {p.relative_to(root).as_posix() for p in root.rglob("*.py") if not p.is_relative_to(AGENT)}
    users = {u for u in users if any(n.startswith("scheduler.agent") for n in _imports(root / u))}
    assert users == {"cli.py"}


def test_agent_without_a_node_name_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    assert cli.main(["agent"]) == 2
    assert "no node name" in capsys.readouterr().err
    assert cli.main(["agent", "--node", "n", "--poll-seconds", "0"]) == 2
    assert "intervals must be positive" in capsys.readouterr().err
