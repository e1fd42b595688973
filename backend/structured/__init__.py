"""Constrained decoding: answers that follow a JSON schema, a regular expression, a list
of choices or a grammar (Lark or GBNF), whatever the model would rather say.

GrammarSpec         spec.py      what a request asks for (pure data, no library)
GrammarError        spec.py      a spec the library cannot compile (the gateway: 400)
Grammars            grammars.py  compiles specs with llguidance for one tokenizer, cached
GrammarMasks        masks.py     allowed-token bitmasks for a step, built while it runs

A request with a grammar gets its own matcher. Before each step that samples for it, the
matcher's bitmask of allowed tokens is computed (on a worker thread, while the model
runs); the sampler sees the logits with every other token at -inf; the sampled token is
then fed to the matcher. Once the grammar can only end, the request stops.

llguidance over xgrammar (both measured on this model's 49k vocabulary, alone): xgrammar
fills a mask ~2x faster (4.7 vs 11 us a token on a nested schema); in the engine the
fill takes 0.1-0.4 ms a row and overlaps the model step (bench/structured.py: ~0.01 ms
waited for it), so the difference does not reach throughput. xgrammar silently ignores
JSON Schema keywords it does not implement (`not`, `uniqueItems`, unknown formats,
look-around in patterns, remote `$ref`), so an answer could fail the client's own
validation; llguidance refuses them by name. What a grammar costs a step is applying
the masks to the logits (masks.py) and feeding the chosen token to the matcher.
"""

from backend.structured.spec import GRAMMAR_KINDS, GrammarError, GrammarSpec

__all__ = ["GRAMMAR_KINDS", "GrammarError", "GrammarSpec"]
