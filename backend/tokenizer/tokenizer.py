"""Text <-> token ids for the bundled engine, built from local files only.

Two sources:

* a GGUF file's `tokenizer.ggml.*` metadata (`Tokenizer.from_gguf_metadata`): the vocabulary,
  merges and token types are turned into a HuggingFace `tokenizers.Tokenizer` in code, with the
  pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`, so the ids match what llama.cpp (and
  transformers' GGUF loader) produce;
* a HuggingFace folder (`Tokenizer.from_hf_folder`): `tokenizer.json` plus the config files.

Encoding goes through `tokenizers` (Rust). Decoding does not: every id maps once to the raw bytes
it stands for (`token_bytes`), so `decode` is a join plus one UTF-8 decode, and
`IncrementalDetokenizer` (detokenizer.py) can stream text per generated token without ever
splitting a character.

The pieces live next door: `gguf_model.py` (a GGUF vocabulary as a BPE model),
`pretokenizers.py` (llama.cpp's split regexes by name),
`token_pieces.py` (token types, special pieces, piece <-> bytes, merges) and
`chat_template.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _HFTokenizer

from backend.tokenizer.chat_template import (
    ChatTemplateRenderer,
    gguf_chat_templates,
    hf_chat_templates,
    select_template,
)
from backend.tokenizer.gguf_model import GGUF_MODELS, gguf_bpe_model
from backend.tokenizer.token_pieces import (
    SILENT,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_USER_DEFINED,
    add_whole_tokens,
    end_of_generation_ids,
    gguf_token_types,
    hf_byte_decoder,
    hf_special_ids,
    mark_byte_tokens,
    spm_bytes,
)
from backend.tokenizer.token_pieces import piece_table as build_piece_table

__all__ = ["Tokenizer"]


class Tokenizer:
    """Encode/decode for one model; build it with `from_gguf_metadata` or `from_hf_folder`."""

    def __init__(
        self,
        backend: _HFTokenizer,
        *,
        tokens: Sequence[str],
        token_types: Sequence[int],
        byte_decoder: Callable[[str], bytes],
        bos_token_id: int | None,
        eos_token_id: int | None,
        eos_token_ids: Iterable[int] = (),
        unk_token_id: int | None = None,
        pad_token_id: int | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        strip_leading_space: bool = False,
        manual_specials: bool = True,
        chat_template: str | None = None,
        chat_templates: Mapping[str, str] | None = None,
    ) -> None:
        self._backend = backend
        self._tokens = list(tokens)
        self._types = list(token_types)
        self._byte_decoder = byte_decoder
        self._manual_specials = manual_specials
        self.vocab_size: int = len(self._tokens)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.unk_token_id = unk_token_id
        self.pad_token_id = pad_token_id
        self.add_bos = add_bos and bos_token_id is not None
        self.add_eos = add_eos and eos_token_id is not None
        self._strip_leading_space = strip_leading_space
        self.bos_token = self._text_of(bos_token_id)
        self.eos_token = self._text_of(eos_token_id)
        self.unk_token = self._text_of(unk_token_id)
        self.pad_token = self._text_of(pad_token_id)

        eog = {i for i in eos_token_ids if 0 <= i < self.vocab_size}
        if eos_token_id is not None:
            eog.add(eos_token_id)
        eog.update(end_of_generation_ids(self._tokens, self._types))
        self.eos_token_ids: set[int] = eog

        self.chat_templates: dict[str, str] = dict(chat_templates or {})
        if chat_template is not None:
            self.chat_templates.setdefault("default", chat_template)
        self.chat_template: str | None = chat_template or self.chat_templates.get("default")
        self._template_renderer = ChatTemplateRenderer()

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer a GGUF file describes (`GGUFFile(path).metadata`)."""
        model = str(metadata.get("tokenizer.ggml.model", ""))
        if model not in GGUF_MODELS:
            raise NotImplementedError(
                f"GGUF tokenizer model {model!r} is not supported (supported: 'gpt2' byte-level "
                "BPE and 'llama' sentencepiece BPE)"
            )
        raw_tokens = metadata.get("tokenizer.ggml.tokens")
        if not raw_tokens:
            raise ValueError("GGUF metadata has no tokenizer.ggml.tokens")
        # llama.cpp renames empty tokens so that every entry stays addressable.
        tokens = [str(t) if t else f"[EMPTY_{i}]" for i, t in enumerate(raw_tokens)]
        n = len(tokens)

        def special_id(key: str) -> int | None:
            value = metadata.get(f"tokenizer.ggml.{key}")
            if value is None:
                return None
            value = int(value)
            return value if 0 <= value < n else None

        bos_id = special_id("bos_token_id")
        eos_id = special_id("eos_token_id")
        unk_id = special_id("unknown_token_id")
        pad_id = special_id("padding_token_id")
        types = gguf_token_types(
            metadata.get("tokenizer.ggml.token_type"),
            n,
            control=(bos_id, eos_id, pad_id),
            unknown=unk_id,
        )
        bpe = gguf_bpe_model(metadata, tokens, types, unk_id)
        add_whole_tokens(bpe.backend, tokens, types)
        eos_ids = [
            i for i in (special_id("eot_token_id"), special_id("eom_token_id")) if i is not None
        ]
        template, templates = gguf_chat_templates(metadata)
        return cls(
            bpe.backend,
            tokens=tokens,
            token_types=types,
            byte_decoder=bpe.byte_decoder,
            bos_token_id=bos_id,
            eos_token_id=eos_id,
            eos_token_ids=eos_ids,
            unk_token_id=unk_id,
            pad_token_id=pad_id,
            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", bpe.add_bos_default)),
            add_eos=bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
            strip_leading_space=bpe.strip_leading_space,
            chat_template=template,
            chat_templates=templates,
        )

    @classmethod
    def from_hf_folder(cls, folder: str | Path) -> Tokenizer:
        """Load `tokenizer.json` (+ tokenizer_config.json, generation_config.json, config.json,
        chat_template.jinja) from a local HuggingFace model folder."""
        folder = Path(folder)
        tokenizer_file = folder / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found: only HuggingFace 'fast' tokenizers (tokenizer.json) "
                "are supported"
            )
        backend = _HFTokenizer.from_file(str(tokenizer_file))
        spec = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        config = _read_json(folder / "tokenizer_config.json")

        n = backend.get_vocab_size(with_added_tokens=True)
        added = backend.get_added_tokens_decoder()
        n = max([n, *(i + 1 for i in added)])
        tokens = [backend.id_to_token(i) or f"[EMPTY_{i}]" for i in range(n)]
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        byte_decoder, strip = hf_byte_decoder(spec, backend)
        types = [TOKEN_NORMAL] * n
        if byte_decoder is spm_bytes and byte_fallback:
            mark_byte_tokens(tokens, types)
        for i, tok in added.items():
            types[i] = TOKEN_CONTROL if tok.special else TOKEN_USER_DEFINED

        ids = hf_special_ids(
            backend,
            config,
            _read_json(folder / "config.json"),
            _read_json(folder / "generation_config.json"),
        )
        template, templates = hf_chat_templates(folder, config)
        # what tokenizer.json's post-processor adds (encode() lets it do the adding)
        probe = backend.encode("", add_special_tokens=True).ids
        return cls(
            backend,
            tokens=tokens,
            token_types=types,
            byte_decoder=byte_decoder,
            bos_token_id=ids.bos,
            eos_token_id=ids.eos,
            eos_token_ids=ids.eos_ids,
            unk_token_id=ids.unk,
            pad_token_id=ids.pad,
            add_bos=bool(probe) and ids.bos is not None and probe[0] == ids.bos,
            add_eos=bool(probe) and ids.eos is not None and probe[-1] == ids.eos,
            strip_leading_space=strip,
            # tokenizer.json's post-processor adds BOS/EOS itself
            manual_specials=False,
            chat_template=template,
            chat_templates=templates,
        )

    # ---- vocabulary -------------------------------------------------------------------------

    def _text_of(self, token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < self.vocab_size:
            return None
        return self._tokens[token_id]

    def id_to_token(self, token_id: int) -> str:
        """The token's text as stored in the vocabulary (byte-level / '▁' spelling)."""
        return self._tokens[token_id]

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def is_special(self, token_id: int) -> bool:
        """True for control/unknown/unused tokens (those `decode` skips by default)."""
        return 0 <= token_id < self.vocab_size and self._types[token_id] in SILENT

    @cached_property
    def piece_table(self) -> list[bytes]:
        """id -> raw bytes; b'' for special tokens."""
        return build_piece_table(self._tokens, self._types, self._byte_decoder)

    @property
    def strips_leading_space(self) -> bool:
        """Whether decoding drops the space sentencepiece put before the first word."""
        return self._strip_leading_space

    @cached_property
    def _full_piece_table(self) -> list[bytes]:
        """id -> bytes, with special tokens written out as their text."""
        return [
            text.encode("utf-8") if kind in SILENT else piece
            for text, kind, piece in zip(self._tokens, self._types, self.piece_table, strict=True)
        ]

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (b'' for control/special tokens)."""
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range (vocab size {self.vocab_size})")
        return self.piece_table[token_id]

    # ---- encode / decode --------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special tokens written in the text (e.g. '<|im_start|>') become
        their own id. With `add_special_tokens`, BOS (and EOS) are added when the model says so."""
        if not self._manual_specials:
            return list(self._backend.encode(text, add_special_tokens=add_special_tokens).ids)
        ids = list(self._backend.encode(text, add_special_tokens=False).ids) if text else []
        if add_special_tokens:
            if self.add_bos and self.bos_token_id is not None:
                ids.insert(0, self.bos_token_id)
            if self.add_eos and self.eos_token_id is not None:
                ids.append(self.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        table = self.piece_table if skip_special_tokens else self._full_piece_table
        n = self.vocab_size
        data = b"".join([table[i] if 0 <= i < n else b"" for i in ids])
        text = data.decode("utf-8", errors="replace")
        if self._strip_leading_space and text.startswith(" "):
            text = text[1:]
        return text

    # ---- chat -------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render the model's chat template (Jinja, sandboxed) to a prompt string."""
        template = select_template(
            self.chat_template, self.chat_templates, tools=extra.get("tools")
        )
        special_tokens = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "unk_token": self.unk_token,
            "pad_token": self.pad_token,
        }
        return self._template_renderer.render(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            special_tokens=special_tokens,
            extra=extra,
        )

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, "
            f"eos={self.eos_token!r})"
        )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
