"""The official OpenAI SDK pointed at the session's real `llm-gateway serve`."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture(scope="session")
def client(server_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0)
