"""Prompts the SDK tests share."""

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Tell me a short story about a cat who learns to swim."}]

# The engine's own answer, not the exact cache's (in the default chain) replay of an
# earlier test's: these tests measure the engine's streaming and speculation.
NO_CACHE = {"cache-control": "no-cache"}
