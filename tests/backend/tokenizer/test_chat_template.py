"""backend.chat_template through Tokenizer.apply_chat_template: rendering matches transformers'
own chat templating for SmolLM2, plus the sandbox, raise_exception, tojson and `{% generation %}`.
Fixtures (tok, ref, metadata) come from conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

from backend.tokenizer import Tokenizer

MESSAGE_LISTS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [
        {"role": "system", "content": "You are a pirate."},
        {"role": "user", "content": "Where is the treasure?"},
    ],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3? 😀 日本語"},
    ],
]


@pytest.mark.parametrize("messages", MESSAGE_LISTS)
def test_chat_template_matches_reference(
    tok: Tokenizer, ref: Any, messages: list[dict[str, Any]]
) -> None:
    ours = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert ours == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.encode(ours) == ref.encode(ours, add_special_tokens=False)
    no_prompt = tok.apply_chat_template(messages, add_generation_prompt=False)
    assert no_prompt == ref.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False
    )
    assert not no_prompt.endswith("<|im_start|>assistant\n")


def test_chat_template_default_system_prompt(tok: Tokenizer) -> None:
    rendered = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert rendered.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_chat_template_errors(metadata: dict[str, Any]) -> None:
    no_template = dict(metadata)
    del no_template["tokenizer.chat_template"]
    t = Tokenizer.from_gguf_metadata(no_template)
    assert t.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        t.apply_chat_template([{"role": "user", "content": "Hi"}])

    raising = Tokenizer.from_gguf_metadata(
        {
            **metadata,
            "tokenizer.chat_template": (
                "{% if messages[0]['role'] != 'user' %}"
                "{{ raise_exception('Conversation must start with a user message') }}"
                "{% endif %}{{ bos_token }}{{ messages[0]['content'] }}"
            ),
        }
    )
    with pytest.raises(ValueError, match="Conversation must start with a user message"):
        raising.apply_chat_template([{"role": "assistant", "content": "x"}])
    assert raising.apply_chat_template([{"role": "user", "content": "x"}]) == "<|im_start|>x"

    broken = Tokenizer.from_gguf_metadata({**metadata, "tokenizer.chat_template": "{% for %}"})
    with pytest.raises(ValueError, match="chat template"):
        broken.apply_chat_template([{"role": "user", "content": "x"}])

    # the sandbox refuses unsafe attribute access
    unsafe = Tokenizer.from_gguf_metadata(
        {**metadata, "tokenizer.chat_template": "{{ messages.__class__.__mro__ }}"}
    )
    with pytest.raises(ValueError):
        unsafe.apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_generation_tag(metadata: dict[str, Any]) -> None:
    t = Tokenizer.from_gguf_metadata(
        {
            **metadata,
            "tokenizer.chat_template": (
                "{% for m in messages %}{% if m['role'] == 'assistant' %}"
                "{% generation %}{{ m['content'] }}{% endgeneration %}"
                "{% else %}{{ m['content'] }}{% endif %}|{% endfor %}"
            ),
        }
    )
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert t.apply_chat_template(msgs) == "a|b|"


def test_chat_template_extras(metadata: dict[str, Any]) -> None:
    t = Tokenizer.from_gguf_metadata(
        {
            **metadata,
            "tokenizer.chat_template": (
                "{%- for m in messages %}\n"
                "  {{- m['role'] }}: {{ m['content'] }}\n"
                "{% endfor %}\n"
                "{%- if tools %}{{ tools | tojson }}{% endif %}"
                "{%- if add_generation_prompt %}assistant:{% endif %}"
                "{{ custom | default('') }}"
            ),
        }
    )
    msgs = [{"role": "user", "content": "hé"}]
    assert t.apply_chat_template(msgs) == "user: hé\nassistant:"
    assert t.apply_chat_template(msgs, add_generation_prompt=False, custom="!") == "user: hé\n!"
    tools = [{"type": "function", "function": {"name": "f", "description": "é"}}]
    assert '"description": "é"' in t.apply_chat_template(msgs, tools=tools)
