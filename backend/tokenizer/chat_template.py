"""Chat templates: the Jinja templates a model ships to turn a list of messages into a prompt.

Where a model keeps them (GGUF `tokenizer.chat_template[.NAME]` metadata, or a HuggingFace
folder's tokenizer_config.json / chat_template.jinja / chat_template.json /
additional_chat_templates/), which one a request uses (the 'tool_use' one when tools are given),
and rendering it in a Jinja sandbox with the helpers transformers provides: raise_exception,
tojson, strftime_now and the `{% generation %}` tag.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "ChatTemplateRenderer",
    "compile_template",
    "gguf_chat_templates",
    "hf_chat_templates",
    "select_template",
]

_GGUF_PREFIX = "tokenizer.chat_template."


class _TemplateRaised(Exception):
    """raise_exception() called by a chat template."""


def compile_template(source: str) -> jinja2.Template:
    """Compile `source` in a sandboxed Jinja environment set up as transformers does."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _GenerationTag(Extension):
        # transformers' `{% generation %}...{% endgeneration %}` (marks assistant text for masks):
        # rendering it is just rendering its body.
        tags = {"generation"}  # noqa: RUF012

        def parse(self, parser: Any) -> list[nodes.Node]:
            next(parser.stream)
            return list(parser.parse_statements(("name:endgeneration",), drop_needle=True))

    def raise_exception(message: str) -> None:
        raise _TemplateRaised(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def select_template(default: str | None, named: Mapping[str, str], *, tools: Any = None) -> str:
    """The template a request renders: `default`, or the 'tool_use' one when tools are given."""
    template = default
    if tools and "tool_use" in named:
        template = named["tool_use"]
    if not template:
        raise ValueError(
            "this model has no chat template (no tokenizer.chat_template in the GGUF / "
            "chat_template in tokenizer_config.json); send a raw prompt instead"
        )
    return template


class ChatTemplateRenderer:
    """Renders chat templates, compiling each distinct template source once."""

    def __init__(self) -> None:
        self._compiled: dict[str, jinja2.Template] = {}

    def render(
        self,
        source: str,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        special_tokens: Mapping[str, str | None],
        extra: Mapping[str, Any],
    ) -> str:
        """Render `source` for `messages`. The template sees `special_tokens` (bos_token, ...),
        `tools` and `documents` (None unless given), then `extra` (which may override them).
        Every failure (bad syntax, raise_exception(), a sandbox refusal) is a ValueError."""
        compiled = self._compiled.get(source)
        if compiled is None:
            try:
                compiled = compile_template(source)
            except Exception as e:  # jinja2.TemplateSyntaxError and friends
                raise ValueError(f"invalid chat template: {e}") from e
            self._compiled[source] = compiled
        context: dict[str, Any] = {**special_tokens, "tools": None, "documents": None}
        context.update(extra)
        context["messages"] = messages
        context["add_generation_prompt"] = add_generation_prompt
        try:
            return str(compiled.render(**context))
        except _TemplateRaised as e:
            raise ValueError(str(e)) from e
        except Exception as e:
            raise ValueError(f"chat template failed: {type(e).__name__}: {e}") from e


# ---- where templates come from -------------------------------------------------------------


def gguf_chat_templates(metadata: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    """A GGUF file's default template (`tokenizer.chat_template`) and its named ones
    (`tokenizer.chat_template.NAME`)."""
    templates = {
        key[len(_GGUF_PREFIX) :]: str(value)
        for key, value in metadata.items()
        if key.startswith(_GGUF_PREFIX) and value
    }
    template = metadata.get("tokenizer.chat_template")
    return (str(template) if template else None), templates


def hf_chat_templates(folder: Path, config: Mapping[str, Any]) -> tuple[str | None, dict[str, str]]:
    """A HuggingFace folder's default template and all its named ones, looked up as transformers
    does: tokenizer_config.json's `chat_template` (a string, or a list of named templates), then
    chat_template.jinja, then chat_template.json, plus additional_chat_templates/*.jinja."""
    templates: dict[str, str] = {}
    raw = config.get("chat_template")
    if isinstance(raw, str):
        templates["default"] = raw
    elif isinstance(raw, list):
        for entry in raw:
            if isinstance(entry, dict) and entry.get("name") and entry.get("template"):
                templates[str(entry["name"])] = str(entry["template"])
    jinja_file = folder / "chat_template.jinja"
    if "default" not in templates and jinja_file.is_file():
        templates["default"] = jinja_file.read_text(encoding="utf-8")
    json_file = folder / "chat_template.json"
    if "default" not in templates and json_file.is_file():
        data = json.loads(json_file.read_text(encoding="utf-8"))
        value = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(value, str):
            templates["default"] = value
    extra_dir = folder / "additional_chat_templates"
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates.setdefault(path.stem, path.read_text(encoding="utf-8"))
    return templates.get("default"), templates
