"""The OpenAI Responses API served over chat completions.

One module per step of the way:

    items.py     input items: checked, kept as message items, turned into chat messages
    convert.py   the Responses request read and turned into a chat request
    output.py    a chat answer as the Response object
    events.py    a chat stream as the Responses streaming events
    store.py     stored responses (for previous_response_id, GET and DELETE)
    owners.py    which model's upstream holds a response the gateway passed through
    adapter.py   ResponsesAdapter, which the gateway calls
"""

from __future__ import annotations

from gateway.responses.adapter import ResponsesAdapter

__all__ = ["ResponsesAdapter"]
