"""The documented fields of a training config: names, defaults and attribute docstrings.

SAELens's configs and this package's document each field with a string literal right under it
(the convention ``simple_parsing`` reads for ``--help``; SAELens's runner config uses an ``Args:``
section of its class docstring instead, read as a fallback). :func:`config_field_docs` reads them from
the source of every dataclass in the config's MRO, so one description serves the documentation
tables (``docs/generate_config_tables.py``) and anything else that lists the fields.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Any

from sae_lens.registry import get_sae_class
from sae_lens.saes.sae import TrainingSAEConfig


@dataclass(frozen=True)
class FieldDoc:
    name: str
    default: Any
    """The default value (``dataclasses.MISSING`` for a required field)."""
    doc: str
    """The attribute docstring, whitespace folded; empty when the field has none."""
    owner: type
    """The class that declares the field (the most derived one that does)."""


def _attribute_docstrings(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for statement, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


_ARGS_ENTRY = re.compile(r"^(\s*)(\w+)\s*\([^)]*\)\s*:\s*(.*)$")


def _args_section_docs(cls: type) -> dict[str, str]:
    """Field descriptions from a Google-style ``Args:`` section of the class docstring (how
    SAELens documents ``LanguageModelSAERunnerConfig``): ``name (type): text`` entries, with
    continuation lines indented deeper."""
    lines = (vars(cls).get("__doc__") or "").splitlines()
    docs: dict[str, str] = {}
    inside, entry_indent, current = False, None, None
    for line in lines:
        if line.strip() == "Args:":
            inside = True
            continue
        if not inside or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        match = _ARGS_ENTRY.match(line)
        if match and (entry_indent is None or indent == entry_indent):
            entry_indent, current = indent, match.group(2)
            docs[current] = match.group(3).strip()
        elif current is not None and entry_indent is not None and indent > entry_indent:
            docs[current] += " " + line.strip()
        else:
            break  # the section ended
    return docs


def config_field_docs(cfg_class: type, *, skip_base: type = TrainingSAEConfig) -> list[FieldDoc]:
    """Every dataclass field of ``cfg_class`` with its default and docstring, in declaration
    order; fields declared by ``skip_base`` and its bases (SAELens's shared ones) are left out."""
    skipped = (
        {f.name for f in dataclasses.fields(skip_base)}
        if dataclasses.is_dataclass(skip_base)
        else set()
    )
    owners: dict[str, type] = {}
    docs: dict[str, str] = {}
    for klass in reversed(cfg_class.__mro__):
        annotations = vars(klass).get("__annotations__", {})
        found = _args_section_docs(klass) | _attribute_docstrings(klass) if annotations else {}
        for name in annotations:
            owners[name] = klass
            if name in found:
                docs[name] = found[name]
    rows = []
    for f in dataclasses.fields(cfg_class):
        if f.name in skipped or f.name == "metadata":
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        rows.append(FieldDoc(f.name, default, docs.get(f.name, ""), owners.get(f.name, cfg_class)))
    return rows


def is_architecture_field(cfg_class: type[TrainingSAEConfig], name: str) -> bool:
    """Whether a training config's field is saved with the inference SAE (its inference config
    has it too) rather than used by training only."""
    inference = (
        getattr(cfg_class, "inference_config_class", None)
        or get_sae_class(cfg_class.architecture())[1]
    )
    return name in {f.name for f in dataclasses.fields(inference)}
