"""Text <-> token ids, built from a GGUF file or a Hugging Face folder, local files only.

Tokenizer               tokenizer.py      encode, decode, chat templates, special ids
GGUFModel, ...          gguf_model.py     a GGUF vocabulary as a `tokenizers` BPE model
PRE_SPLITS, ...         pretokenizers.py  llama.cpp's split regexes, by name
token types, ...        token_pieces.py   special pieces, piece <-> bytes, merges
ChatTemplateRenderer    chat_template.py  the model's Jinja chat template, sandboxed
IncrementalDetokenizer  detokenizer.py    generated ids -> streamed text
StopStringMatcher       stop_strings.py   holds back text that may start a stop string
"""

from __future__ import annotations

from backend.tokenizer.detokenizer import IncrementalDetokenizer
from backend.tokenizer.stop_strings import StopStringMatcher
from backend.tokenizer.tokenizer import Tokenizer

__all__ = ["IncrementalDetokenizer", "StopStringMatcher", "Tokenizer"]
