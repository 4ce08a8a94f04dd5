"""The model families' config schemas (``schema/model/<name>`` in Hydra's ConfigStore), read without torch.

Composing a config (``--help``, ``--cfg job``, every TAB of shell completion) needs them, and
importing torch for that took longer than the rest of the start-up. Yet a schema belongs beside its
model, so that a new family is its module and its ``conf/model`` file, with no shared list to edit.
Both hold: a family's module marks its config dataclass ``@schema("<name>")``, and
:func:`model_schemas` finds the marked classes in the *source* of each module of ``ups.models``
(``ast``) and runs each class statement alone, without importing the module. When the module is
imported, ``@schema`` hands back that same class, so the config store, the spec and pickles share one.

A schema is therefore plain data: fields typed with builtins and ``typing`` (``List``, ``Dict``,
``Optional``, ``Any``, ``Tuple``, ``Union``), literal defaults or ``field(default_factory=lambda: ...)``.
A schema that uses another name of its module is refused, naming the file, the class and the name.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

# What a schema's class statement may use besides builtins (it runs without its module's imports).
_VOCABULARY = {
    "dataclass": dataclass,
    "field": field,
    "Any": Any,
    "Dict": Dict,
    "List": List,
    "Optional": Optional,
    "Tuple": Tuple,
    "Union": Union,
}


class SchemaError(Exception):
    """A model module's schema cannot be read without importing the module (a bug of that module)."""


def schema(name: str) -> Callable[[type], type]:
    """Mark a family's config dataclass as ``schema/model/<name>``; put it above ``@dataclass``.

    Returns the class :func:`model_schemas` built from the same statement, so there is one class."""

    def _mark(cls: type) -> type:
        found = discovered().get(name)
        if found is None or (found.__module__, found.__qualname__) != (cls.__module__, cls.__qualname__):
            raise SchemaError(
                f"{cls.__module__}.{cls.__qualname__}: schema {name!r} was not found in the source of "
                "ups.models' modules, where configs look for it without importing torch"
            )
        return found

    return _mark


def model_schemas() -> dict[str, type]:
    """Family name (its spec's ``name``, the ``/schema/model/<name>`` a conf/model file starts from) -> schema."""
    return discovered()


def discovered() -> dict[str, type]:
    """The ``@schema`` classes of every non-private module of ``ups.models`` (each folder of its path)."""
    import ups.models  # torch-free: the package imports its modules lazily

    found: dict[str, type] = {}
    where: dict[str, Path] = {}
    for folder in ups.models.__path__:
        for path in sorted(Path(folder).glob("*.py")):
            if path.name.startswith("_"):
                continue
            for name, cls in _schemas_in(path):
                if name in found:
                    raise SchemaError(f"schema {name!r} is defined twice: {where[name]} and {path}")
                found[name], where[name] = cls, path
    return found


@functools.cache  # one class per file and process: the config store, the spec and pickles must agree
def _schemas_in(path: Path) -> tuple[tuple[str, type], ...]:
    """The marked classes of one module, each built from its own statement in a bare namespace."""
    source = path.read_text(encoding="utf-8")
    if "@schema(" not in source:  # most modules: no parse needed
        return ()
    module, out = f"ups.models.{path.stem}", []
    for node in ast.parse(source, str(path)).body:
        name = _marked(node)
        if name is None:
            continue
        # dont_inherit: annotations are evaluated here (no ``from __future__ import annotations``),
        # so the class's field types resolve without its module, which is never imported.
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec", dont_inherit=True)
        namespace: dict[str, Any] = {"__name__": module, "schema": lambda _name: lambda cls: cls, **_VOCABULARY}
        try:
            exec(code, namespace)
        except NameError as err:
            raise SchemaError(
                f"{path}: schema {node.name} uses {err.name!r}, which a schema cannot: it is read "
                "without importing its module (see ups/models/schemas.py)"
            ) from None
        out.append((name, namespace[node.name]))
    return tuple(out)


def _marked(node: ast.stmt) -> str | None:
    """The name in a class's ``@schema("<name>")`` decorator, or None."""
    if not isinstance(node, ast.ClassDef):
        return None
    for dec in node.decorator_list:
        func = dec.func if isinstance(dec, ast.Call) else None
        if (
            getattr(func, "id", getattr(func, "attr", None)) == "schema"
            and len(dec.args) == 1
            and isinstance(dec.args[0], ast.Constant)
            and isinstance(dec.args[0].value, str)
        ):
            return dec.args[0].value
    return None
