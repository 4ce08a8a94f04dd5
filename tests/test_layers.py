"""Import rules between the layers (docs/architecture.md): a lower layer never imports a higher one.

Read from the source with ``ast``, every import counted (inside functions too), except those under
``if TYPE_CHECKING:``, which exist for annotations only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

UPS = Path(__file__).resolve().parents[1] / "ups"

# package (or module) -> modules it must never import
RULES = {
    "models": (
        "ups.data",
        "ups.training",
        "ups.objectives",
        "ups.evaluation",
        "ups.distributed",
        "ups.build",
        "ups.runner",
        "ups.config",
        "torch.distributed",
    ),
    "data": ("ups.training", "ups.objectives", "ups.evaluation", "ups.build", "ups.runner", "ups.config"),
    "objectives": ("ups.training", "ups.evaluation", "ups.build", "ups.runner"),
    "evaluation": ("ups.runner",),
    "training": ("ups.runner", "ups.evaluate", "ups.train"),
    "distributed": ("ups.runner", "ups.evaluation", "ups.train"),
    "build.py": ("ups.runner", "ups.evaluation", "ups.bench"),
    "errors.py": ("ups", "torch", "omegaconf"),  # Hydra only inside in_multirun, once Hydra is loaded
}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Ids of import nodes inside ``if TYPE_CHECKING:`` blocks."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            out |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports at run time (relative imports resolved to ``ups.*``)."""
    return imports_of(path.read_text(), ".".join(path.relative_to(UPS.parent).with_suffix("").parts[:-1]))


def imports_of(source: str, package: str) -> list[str]:
    """Every module ``source``, a module of ``package``, imports at run time."""
    tree = ast.parse(source)
    skip = _type_checking_only(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def _files(where: str) -> list[Path]:
    target = UPS / where
    return [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("where", sorted(RULES))
def test_a_lower_layer_never_imports_a_higher_one(where: str) -> None:
    broken = [
        f"{p.relative_to(UPS.parent)} imports {m}"
        for p in _files(where)
        for m in imports(p)
        if any(m == rule or m.startswith(rule + ".") for rule in RULES[where])
    ]
    assert not broken, "\n".join(broken)


def test_the_rules_can_fail() -> None:
    """The scan sees imports inside functions and relative ones, and skips TYPE_CHECKING blocks."""
    found = imports_of(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ups.training import trainer\n"
        "def f():\n    from ..runner import run\n",
        "ups.models",
    )
    assert "ups.runner" in found and not any(m.startswith("ups.training") for m in found)
