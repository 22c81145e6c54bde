"""Command-line flags built from a config dataclass: one ``--field-name`` per field, read with the
field's annotated type, its docstring as the help text.

SAELens's own CLI builds its parser from its dataclasses (through ``simple_parsing``); this does
the same for ``sae-variants train``, so every SAE and runner field is reachable by name, and one
reader (:func:`value_reader`) turns text into a field's value for flags and ``--set`` alike.

    flags = add_config_flags(group, CubicOrthoTrainingSAEConfig, exclude={"d_in", "d_sae"})
    args = parser.parse_args(["--ortho-coefficient", "0.3"])
    given_fields(args, flags)  # {"ortho_coefficient": 0.3}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sae_variants.integrations.training.config_fields import config_field_docs


class _Unset:
    """The default of every generated flag: tells "not given" apart from any value, None too."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_NONE = ("none", "null")


def _options(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _read_one(text: str, annotation: Any) -> Any:
    """``text`` as one (non-union) annotated type; ValueError when it is not one."""
    origin = typing.get_origin(annotation)
    if annotation is type(None):
        if text.lower() in _NONE:
            return None
    elif annotation is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    elif annotation is int:
        return int(text)
    elif annotation is float:
        return float(text)
    elif annotation is str:
        return text
    elif origin is typing.Literal:
        for choice in typing.get_args(annotation):
            if str(choice) == text:
                return choice
    elif origin in (list, tuple):
        args = typing.get_args(annotation)
        item = args[0] if args else str
        items = [part.strip() for part in text.split(",")] if text.strip() else []
        values = [value_reader(item)(part) for part in items]
        return tuple(values) if origin is tuple else values
    elif origin is dict or annotation is dict:
        value = json.loads(text)
        if isinstance(value, dict):
            return value
    raise ValueError(f"{text!r} is not a {_type_name(annotation)}")


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "none"
    if typing.get_origin(annotation) in (list, tuple):
        return "comma-separated list"
    if typing.get_origin(annotation) is dict:
        return "JSON object"
    return getattr(annotation, "__name__", str(annotation))


def value_reader(annotation: Any) -> Callable[[str], Any]:
    """A function reading a field's value from text: ``true``/``false`` for bools, ``none`` for
    optional fields, comma-separated items for lists and tuples, JSON for dicts; raises
    ``ValueError`` naming the expected type."""

    def read(text: str) -> Any:
        for option in _options(annotation):
            try:
                return _read_one(text, option)
            except (ValueError, json.JSONDecodeError):
                continue
        raise ValueError(f"{text!r} is not a {_type_name(annotation)}")

    read.__name__ = _type_name(annotation)  # argparse names the type in its error message
    return read


def read_field_value(cfg_class: type, name: str, text: str) -> Any:
    """The value ``text`` gives field ``name`` of ``cfg_class``, read with its annotated type."""
    annotation = typing.get_type_hints(cfg_class)[name]
    try:
        return value_reader(annotation)(text)
    except ValueError as error:
        raise ValueError(f"option {name}={text!r} cannot be read: {error}") from None


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True)
class ConfigFlags:
    """The flags one :func:`add_config_flags` call added: argparse dest -> config field name."""

    fields: dict[str, str]


def _help(doc: str, default: Any) -> str:
    shown = "required" if default is dataclasses.MISSING else f"default: {default!r}"
    text = f"{doc} ({shown})" if doc else f"({shown})"
    return text.replace("%", "%%")  # argparse formats help with %


def add_config_flags(
    group: argparse._ActionsContainer,
    cfg_class: type,
    *,
    exclude: Collection[str] = (),
    dest_prefix: str = "cfg__",
) -> ConfigFlags:
    """Add one flag per dataclass field of ``cfg_class`` (but ``exclude``) to ``group``, typed by
    the field's annotation and documented by its docstring; nested dataclass fields are skipped
    (add their class separately). A bool flag given alone means true. Every flag defaults to
    :data:`UNSET`, so :func:`given_fields` returns only what the command line set."""
    hints = typing.get_type_hints(cfg_class)
    docs = {d.name: d for d in config_field_docs(cfg_class, skip_base=object)}
    fields: dict[str, str] = {}
    for field in dataclasses.fields(cfg_class):
        annotation = hints[field.name]
        if field.name in exclude or field.name not in docs:
            continue
        if dataclasses.is_dataclass(annotation) or isinstance(annotation, typing.TypeVar):
            continue
        dest = dest_prefix + field.name
        doc = docs[field.name]
        extra: dict[str, Any] = {}
        if annotation is bool:
            extra = {"nargs": "?", "const": True}
        group.add_argument(
            flag_name(field.name),
            dest=dest,
            type=value_reader(annotation),
            default=UNSET,
            metavar=_metavar(annotation),
            help=_help(doc.doc, doc.default),
            **extra,
        )
        fields[dest] = field.name
    return ConfigFlags(fields)


def _metavar(annotation: Any) -> str:
    options = [o for o in _options(annotation) if o is not type(None)]
    if len(options) == 1 and typing.get_origin(options[0]) is typing.Literal:
        return "{" + ",".join(str(c) for c in typing.get_args(options[0])) + "}"
    names = []
    for option in options:
        origin = typing.get_origin(option)
        if origin in (list, tuple):
            names.append("A,B,...")
        elif origin is dict:
            names.append("JSON")
        elif origin is typing.Literal:
            names.append("|".join(str(c) for c in typing.get_args(option)))
        else:
            names.append(getattr(option, "__name__", str(option)).upper())
    return "|".join(names) + ("|none" if len(options) < len(_options(annotation)) else "")


def given_fields(args: argparse.Namespace, flags: ConfigFlags) -> dict[str, Any]:
    """The fields ``args`` sets through ``flags`` (flags left out are not in the result)."""
    return {
        name: getattr(args, dest)
        for dest, name in flags.fields.items()
        if getattr(args, dest, UNSET) is not UNSET
    }


_SAELENS_SAE_FIELD_DOCS = {
    "apply_b_dec_to_input": "subtract b_dec from the input before encoding (SAELens)",
    "normalize_activations": "how SAELens scales activations before the SAE sees them; "
    "expected_average_only_in scales inputs to norm sqrt(d_in) and is folded into the saved SAE",
    "reshape_activations": "hook_z: flatten attention heads into d_in (SAELens)",
    "decoder_init_norm": "the norm of each decoder row at initialization (SAELens)",
    "l1_coefficient": "weight of the sparsity penalty (lambda)",
    "lp_norm": "the p of the sparsity penalty's Lp norm (SAELens standard)",
    "l1_warm_up_steps": "steps over which the sparsity coefficient ramps up from 0",
}
"""Help for SAELens's shared SAE fields, which SAELens does not document field by field."""

_LOGGING_FIELD_DOCS = {
    "log_activations_store_to_wandb": "log the activation store's statistics to W&B",
    "log_optimizer_state_to_wandb": "log the optimizer's state to W&B",
    "log_weights_to_wandb": "upload the trained SAE's weights to W&B as an artifact",
    "wandb_id": "resume this W&B run id",
    "wandb_entity": "the W&B entity (team or user) to log under",
    "wandb_log_frequency": "log training metrics every this many steps",
    "eval_every_n_wandb_logs": "run SAELens's evals every this many W&B logs",
}


@dataclass(frozen=True)
class RunConfigFlags:
    """The SAE-config and runner-config flags of one ``train`` parser."""

    sae: ConfigFlags
    runner: ConfigFlags
    logging: ConfigFlags

    def sae_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return given_fields(args, self.sae)

    def runner_options(self, args: argparse.Namespace) -> dict[str, Any]:
        return given_fields(args, self.runner) | given_fields(args, self.logging)

    def dests(self) -> set[str]:
        return set(self.sae.fields) | set(self.runner.fields) | set(self.logging.fields)


def _add_documented_flags(
    group: argparse._ActionsContainer,
    cfg_class: type,
    exclude: Collection[str],
    dest_prefix: str,
    fallback_docs: dict[str, str],
) -> ConfigFlags:
    flags = add_config_flags(group, cfg_class, exclude=exclude, dest_prefix=dest_prefix)
    for action in group._group_actions:  # fill help SAELens does not give
        name = flags.fields.get(action.dest)
        if name in fallback_docs and action.help and action.help.startswith("("):
            action.help = f"{fallback_docs[name]} {action.help}"
    return flags


def add_run_config_flags(
    parser: argparse.ArgumentParser,
    sae_config_class: type,
    *,
    managed_sae_fields: Collection[str],
    request_runner_fields: Collection[str],
) -> RunConfigFlags:
    """Two argument groups on ``parser``: every field of ``sae_config_class`` but the managed
    ones, and every ``LanguageModelSAERunnerConfig``/``LoggingConfig`` field the request does not
    decide itself. A name present in both groups (or already a flag of ``parser``) is a
    ValueError: flags must stay one-to-one with fields."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    architecture = sae_config_class.architecture()
    sae_group = parser.add_argument_group(
        f"{architecture} hyperparameters",
        f"the fields of {sae_config_class.__name__} (`--architecture NAME --help` lists "
        "another architecture's). Defaults shown are the class's; the run's own choices "
        "(normalize_activations=expected_average_only_in, demo's options) come first, these "
        "flags last; `--dry-run --json` prints what a run resolves",
    )
    runner_group = parser.add_argument_group(
        "SAELens runner fields",
        "further LanguageModelSAERunnerConfig and LoggingConfig fields, applied over what the "
        "request and its preset resolve (defaults shown are SAELens's; `--dry-run --json` "
        "prints the resolved config)",
    )
    try:
        sae = _add_documented_flags(
            sae_group, sae_config_class, managed_sae_fields, "sae__", _SAELENS_SAE_FIELD_DOCS
        )
        runner = _add_documented_flags(
            runner_group, LanguageModelSAERunnerConfig, request_runner_fields, "runner__", {}
        )
        logging = _add_documented_flags(
            runner_group, LoggingConfig, request_runner_fields, "logging__", _LOGGING_FIELD_DOCS
        )
    except argparse.ArgumentError as error:
        raise ValueError(
            f"{architecture}: a config field's flag collides with another flag: {error}"
        ) from error
    return RunConfigFlags(sae, runner, logging)
