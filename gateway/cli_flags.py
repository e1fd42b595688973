"""Command-line flags made from a config section: each field of the msgspec struct is one
flag (`max_num_seqs` -> `--max-num-seqs`), its type the flag's type, a Literal its
choices, a bool a `--name/--no-name` pair, its Meta description the help (with the
default), Meta(extra={"group": ...}) its help group. Flags not given stay out of the
section, so its defaults are the only defaults and decoding it checks every bound."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import msgspec

from gateway.config.load import where_and_what

S = TypeVar("S", bound=msgspec.Struct)


def add_section_flags(parser: argparse.ArgumentParser, section: type[msgspec.Struct]) -> None:
    groups: dict[str, Any] = {}
    hints = typing.get_type_hints(section, include_extras=True)
    defaults = dict(zip(section.__struct_fields__, _defaults(section), strict=True))
    for name in section.__struct_fields__:
        base, meta = _unwrap(hints[name])
        group_name = (meta.extra or {}).get("group") if meta is not None else None
        target = parser
        if group_name is not None:
            if group_name not in groups:
                groups[group_name] = parser.add_argument_group(group_name)
            target = groups[group_name]
        help_text = (meta.description or "") if meta is not None else ""
        default = defaults[name]
        if base is bool:
            default = "on" if default else "off"
        if default is not None:
            help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
        kwargs["help"] = help_text.replace("%", "%%") or None
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(base) is Literal:
            kwargs["choices"] = list(get_args(base))
        else:
            kwargs["type"] = base
        target.add_argument("--" + name.replace("_", "-"), **kwargs)


def section_from_flags(args: argparse.Namespace, section: type[S], base: S | None = None) -> S:
    """`base` (default: the section's defaults) with the flags given on the command line
    over it; msgspec.ValidationError (naming the field) when one is out of bounds."""
    values = msgspec.structs.asdict(base) if base is not None else {}
    values.update({name: getattr(args, name) for name in section.__struct_fields__ if name in args})
    return msgspec.convert(values, section)


def flag_error(message: str) -> str:
    """msgspec's "Expected `int` >= 1 - at `$.max_num_seqs`" as "--max-num-seqs: expected
    `int` >= 1"."""
    where, what = where_and_what(message)
    if not where:
        return message
    flag = "--" + where.split(".")[0].replace("_", "-")
    return f"{flag}: {what[0].lower()}{what[1:]}"


def _defaults(section: type[msgspec.Struct]) -> list[Any]:
    """Each field's default (every field of a section has one)."""
    fields = section.__struct_fields__
    values = section.__struct_defaults__
    return [None] * (len(fields) - len(values)) + list(values)


def _unwrap(hint: Any) -> tuple[Any, msgspec.Meta | None]:
    """(the type without None and Annotated, the field's Meta)."""
    meta = None
    if get_origin(hint) is Annotated:
        hint, *extras = get_args(hint)
        meta = next((m for m in extras if isinstance(m, msgspec.Meta)), None)
    if get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        hint = options[0] if len(options) == 1 else hint
    if get_origin(hint) is Annotated:  # Annotated[int, ...] | None
        hint, *extras = get_args(hint)
        meta = meta or next((m for m in extras if isinstance(m, msgspec.Meta)), None)
    return hint, meta
