"""An answer under a JSON grammar whose token budget is about to end is steered to close
what it has open (json_close.py), so a cut answer still parses. It is forced one token
at a time, from SLACK tokens before the step where the closing text needs all the
tokens left."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.structured.json_close import json_closing
from backend.tokenizer import Tokenizer

if TYPE_CHECKING:
    from backend.request import Request

# Tokens left below which the closing is worked out at all (it costs a decode of the
# answer a step): an answer nested deeper than this cannot be closed in time (measured:
# at 32, one JSON-mode answer of 20 was 57 objects deep and ended 3 braces short).
CLOSE_WITHIN = 128
# Tokens the closing starts early by: one free token can deepen the answer by several
# (`{"` opens an object and a key: 2-3 closing tokens more while the budget drops by 1);
# measured, starting just in time left a 57-deep answer 3 braces short.
SLACK = 4


def closing_token(req: Request, tokenizer: Tokenizer) -> int | None:
    """The token req must take now to close its JSON within its budget, or None."""
    grammar = req.params.grammar
    left = req.max_tokens - req.seq.num_output_tokens
    if grammar is None or grammar.kind != "json_schema" or left > CLOSE_WITHIN:
        return None
    closing = json_closing(tokenizer.decode(req.output_token_ids, skip_special_tokens=False))
    if not closing:
        return None
    ids = tokenizer.encode(closing)
    return ids[0] if ids and len(ids) + SLACK >= left else None
