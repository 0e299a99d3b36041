"""Command-line flags generated from a pydantic settings model: one mechanism for every component.

The server, the router and the operator each describe their configuration once, as a
pydantic-settings model whose fields carry their documentation (a ``description=`` or an
attribute docstring with ``use_attribute_docstrings=True``). :func:`add_flags` turns every
field into an ``argparse`` option whose help is that documentation, followed by the
environment variable(s) that set the same field and its default, so ``--help`` says what
each flag does and the flag, the variable and the model cannot drift apart. A field with no
documentation is a programming error (:class:`UndocumentedFlag`), caught by any test that
builds a parser.

How a field appears on the command line is said in its ``json_schema_extra`` (see
:func:`flag`): extra or short option strings, a metavar, a repeatable or on/off option, a
mutually exclusive group, a computed default text. Unset options stay absent from the
parsed namespace (``argparse.SUPPRESS``), so the environment, then the model's default,
decides; :func:`given` returns only what the command line set.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, Literal, TypedDict

from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = [
    "FlagSpec",
    "UndocumentedFlag",
    "add_flags",
    "by_annotation",
    "flag",
    "given",
    "option_name",
]

Kind = Literal["value", "repeat", "switch"]


class FlagSpec(TypedDict, total=False):
    """How one field appears on the command line (kept in the field's ``json_schema_extra``)."""

    flags: Sequence[str]
    """Option strings; default ``--field-name``."""
    metavar: str
    help: str
    """Help when it cannot be the field's documentation (e.g. it names a computed value)."""
    default_text: str
    """The default as ``--help`` shows it, when the model's default is computed."""
    kind: Kind
    """``value`` (one value), ``repeat`` (repeatable, collected in a list), ``switch`` (on)."""
    group: str
    """Name of a mutually exclusive group the caller passes to :func:`add_flags`."""
    hidden: bool
    """Not a flag (resolved by the program, or environment only)."""


class UndocumentedFlag(TypeError):
    """A settings field would become a flag with no help: document the field."""


def flag(
    *flags: str,
    metavar: str | None = None,
    help: str | None = None,
    default_text: str | None = None,
    kind: Kind = "value",
    group: str | None = None,
    hidden: bool = False,
) -> dict[str, Any]:
    """A field's command-line shape, for ``Field(json_schema_extra=flag(...))``."""
    spec: dict[str, Any] = {"kind": kind, "hidden": hidden}
    if flags:
        spec["flags"] = tuple(flags)
    for key, value in (
        ("metavar", metavar),
        ("help", help),
        ("default_text", default_text),
        ("group", group),
    ):
        if value is not None:
            spec[key] = value
    return spec


def option_name(field: str) -> str:
    """The long option of a field: ``poll_interval_s`` -> ``--poll-interval-s``."""
    return "--" + field.replace("_", "-")


def spec_of(info: FieldInfo) -> FlagSpec:
    """The field's :class:`FlagSpec` (empty: a plain ``--field-name VALUE`` option)."""
    extra = info.json_schema_extra
    return FlagSpec(**extra) if isinstance(extra, dict) else FlagSpec()  # type: ignore[typeddict-item]


def _default_text(info: FieldInfo, spec: FlagSpec) -> str:
    if "default_text" in spec:
        return spec["default_text"]
    if info.default_factory is not None:
        return "empty"
    default = info.get_default()
    if default is None:
        return "unset"
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float):
        return f"{default:g}"
    if isinstance(default, list | tuple):
        return ",".join(map(str, default)) or "empty"
    return str(default) if str(default) != "" else "empty"


def help_of(field: str, info: FieldInfo, spec: FlagSpec) -> str:
    """What the flag does: the spec's help, else the field's documentation, in one line."""
    text = spec.get("help") or info.description or ""
    text = " ".join(text.split())
    if not text:
        raise UndocumentedFlag(f"settings field {field!r} has no description or docstring")
    return text


def by_annotation(field: str, info: FieldInfo) -> Callable[[str], Any] | None:
    """``int``/``float`` fields (optional or not) convert on the command line, so a bad number
    is argparse's "invalid int value" naming the flag; everything else is left to pydantic."""
    annotation = info.annotation
    for kind in (int, float):
        if annotation in (kind, kind | None):
            return kind
    return None


def _metavar(field: str, info: FieldInfo) -> str:
    if info.annotation in (int, int | None):
        return "N"
    if info.annotation in (float, float | None):
        return "S" if field.endswith("_s") else "X"
    return field.upper().rsplit("_", 1)[-1]


def add_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    env_names: Callable[[str], Sequence[str]],
    groups: Mapping[str, argparse._MutuallyExclusiveGroup] | None = None,
    types: Callable[[str, FieldInfo], Callable[[str], Any] | None] | None = None,
    format_default: Callable[[str], str] | None = None,
) -> None:
    """Add one option per field of ``model`` to ``parser``, documented from the model.

    ``env_names(field)`` gives the variables that also set the field (shown in the help;
    empty: none). ``types`` may give a converter for a field's text (else pydantic converts
    later); ``format_default`` may fill placeholders in a computed default text.
    """
    for field, info in model.model_fields.items():
        spec = spec_of(info)
        if spec.get("hidden"):
            continue
        text = help_of(field, info, spec)
        default = _default_text(info, spec)
        if format_default is not None:
            default = format_default(default)
        envs = " or ".join(f"${name}" for name in env_names(field))
        suffix = f"[env {envs}; default: {default}]" if envs else f"[default: {default}]"
        kind = spec.get("kind", "value")
        options: dict[str, Any] = {
            "dest": field,
            "default": argparse.SUPPRESS,
            "help": f"{text} {suffix}".replace("%", "%%"),
        }
        if kind == "switch":
            options["action"] = "store_true"
        else:
            options["action"] = "append" if kind == "repeat" else "store"
            options["metavar"] = spec.get("metavar") or _metavar(field, info)
            convert = types(field, info) if types is not None else None
            if convert is not None:
                options["type"] = convert
        target: argparse._ActionsContainer = parser
        if "group" in spec:
            if groups is None or spec["group"] not in groups:
                raise KeyError(f"settings field {field!r}: no group {spec['group']!r} given")
            target = groups[spec["group"]]
        target.add_argument(*spec.get("flags", (option_name(field),)), **options)


def given(namespace: argparse.Namespace) -> dict[str, Any]:
    """The fields the command line set (unset options are absent: ``argparse.SUPPRESS``)."""
    return {key: value for key, value in vars(namespace).items() if value is not None}
