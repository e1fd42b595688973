"""Function calling on the bundled engine: OpenAI's `tools`, `tool_choice` and
`parallel_tool_calls` over a model that only writes text.

ToolRequest, tool_request  request.py  the tools and the choice, checked (400s)
prompt_messages            prompt.py   what the chat template sees (tools, past calls)
call_grammar               grammar.py  `required` / a named function: the answer's form
parse_calls, CallStream    parse.py    the answer's text -> tool calls, whole or streamed
assistant_reply            reply.py    a choice's text -> the assistant message and finish

How each choice is served:
- `auto`: the model sees the tools (through its template, or where the template takes
  none, in the system message in the Hermes format many open models are trained on) and
  may answer `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; such blocks (or
  an answer that is one such JSON object) become `tool_calls`, the rest stays content.
- `required`: the answer is constrained to a JSON list of calls, each a known function's
  name and arguments valid for its schema (one call when `parallel_tool_calls` is false).
- a named function: the answer is constrained to that function's arguments (as vLLM).
- `none`: no tools are shown, nothing is parsed.
"""

from gateway.upstreams.tools.grammar import call_grammar
from gateway.upstreams.tools.parse import CallStream, parse_calls
from gateway.upstreams.tools.prompt import prompt_messages
from gateway.upstreams.tools.reply import assistant_reply
from gateway.upstreams.tools.request import ToolRequest, tool_request

__all__ = [
    "CallStream",
    "ToolRequest",
    "assistant_reply",
    "call_grammar",
    "parse_calls",
    "prompt_messages",
    "tool_request",
]
