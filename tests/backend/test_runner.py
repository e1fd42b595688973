"""ModelRunner (backend/runner.py) with the real SmolLM2-135M model (CPU, fp32) and a
small paged KV cache, batches built as the scheduler builds them (BlockManager.allocate
and append_slots, ScheduledBatch.add).

Asserted: in a batch listing prefills before decodes, the decodes' rows still come first;
only sequences that reach their last token this step get logits (a prefill chunk part-way
through its prompt gets none, then its last chunk gets the row the whole prompt would);
a sequence feeding speculative guesses gets 1 + len(draft) rows, equal to feeding those
tokens one decode step at a time (same argmax, close logits); `attended` counts the
context of every one-query row; and every row of a mixed batch equals the logits of that
sequence run alone through one plain prefill.
"""

from __future__ import annotations

import pytest
import torch

from backend.attention import AttentionMetadata
from backend.blocks import BlockManager
from backend.loading.weights import LoadedModel
from backend.model import LlamaModel
from backend.runner import ModelRunner, StepOutput
from backend.scheduler import ScheduledBatch
from backend.sequence import Sequence

pytestmark = pytest.mark.slow

BLOCK = 16
NUM_BLOCKS = 24  # 384 slots: a few short sequences at once
# fp32 on CPU: the same math through different shapes (prefill / decode / batch size)
# differs in the last bits; the model's own HF comparison allows the same.
ATOL, RTOL = 2e-4, 1e-4
TEXTS = [  # 5 to 45 tokens: prompts within one block, and over three
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who "
    "mended his nets every morning and told stories to the children every night, until",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + "
    "fibonacci(n - 2)\n\n\ndef factorial(n):\n    return",
    "List three primary colours, separated by commas, and then explain why the sky",
]


@pytest.fixture(scope="module")
def prompts(plain_loaded: LoadedModel) -> list[list[int]]:
    return [plain_loaded.tokenizer.encode(t) for t in TEXTS]


class Harness:
    """A runner and a block manager over the same small cache; `step` builds the batch
    as Scheduler.schedule does and counts the fed tokens as Scheduler.after_step does
    (guesses thrown away: a verify step here keeps none of them)."""

    def __init__(self, model: LlamaModel) -> None:
        self.blocks = BlockManager(NUM_BLOCKS, BLOCK)  # never marked computed: no cache hits
        self.runner = ModelRunner(model, NUM_BLOCKS, BLOCK, torch.float32, torch.device("cpu"))
        self._next_id = 0

    def admit(self, token_ids: list[int]) -> Sequence:
        seq = Sequence(self._next_id, list(token_ids), len(token_ids))
        self._next_id += 1
        self.blocks.allocate(seq)
        return seq

    def step(self, *work: tuple[Sequence, int]) -> StepOutput:
        batch = ScheduledBatch()
        for seq, n in work:
            self.blocks.append_slots(seq, len(seq.draft))
            batch.add(seq, n)
        out = self.runner.execute(batch)
        for seq, n in work:
            seq.num_computed_tokens += n - len(seq.draft)
            seq.draft = []
            self.blocks.trim(seq)
        return out


@torch.inference_mode()
def alone(model: LlamaModel, token_ids: list[int]) -> torch.Tensor:
    """[len, vocab] logits at every position of token_ids, as one plain prefill into a
    cache of its own: the sequence run alone."""
    n = len(token_ids)
    kv = model.allocate_kv_cache(-(-n // BLOCK), BLOCK, torch.float32, torch.device("cpu"))
    meta = AttentionMetadata.single_prefill(n, BLOCK)
    hidden = model.forward(torch.tensor(token_ids), torch.arange(n), meta, kv)
    return model.compute_logits(hidden)


def greedy(model: LlamaModel, token_ids: list[int], count: int) -> list[int]:
    """The model's own greedy continuation of token_ids, `count` tokens long."""
    out = list(token_ids)
    for _ in range(count):
        out.append(int(alone(model, out)[-1].argmax()))
    return out[len(token_ids) :]


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def test_decode_rows_come_before_prefill_rows(
    plain_loaded: LoadedModel, prompts: list[list[int]]
) -> None:
    model, h = plain_loaded.model, Harness(plain_loaded.model)
    a, b, c = (h.admit(p) for p in prompts[:3])
    first = h.step((a, a.num_tokens))
    a.append_token(int(first.logits[0].argmax()))
    # listed prefill, decode, prefill: the decode's row leads all the same
    out = h.step((b, b.num_tokens), (a, 1), (c, c.num_tokens))
    assert out.sampling == [a, b, c] and out.num_rows == [1, 1, 1]
    assert out.logits.shape == (3, model.config.vocab_size)
    assert out.logits.dtype == torch.float32
    for row, seq in zip(out.logits, out.sampling, strict=True):
        _close(row[None], alone(model, seq.token_ids)[-1:])
    assert out.attended == a.num_tokens  # one decode row over a's whole context


def test_a_prompt_part_way_through_its_prefill_gets_no_logits(
    plain_loaded: LoadedModel, prompts: list[list[int]]
) -> None:
    model, h = plain_loaded.model, Harness(plain_loaded.model)
    short, long = h.admit(prompts[0]), h.admit(prompts[1])
    n = long.num_tokens
    assert n > 2 * BLOCK, "the long prompt needs three chunks, across blocks"
    first = h.step((short, short.num_tokens), (long, 10))  # a chunk, not the end
    assert first.sampling == [short] and first.num_rows == [1]
    assert first.logits.shape[0] == 1
    middle = h.step((long, 13))  # still part-way (into the second block): nothing to sample
    assert middle.sampling == [] and middle.num_rows == [] and middle.logits.shape[0] == 0
    last = h.step((long, n - 23))  # the rest: the prompt's last token
    assert last.sampling == [long] and last.num_rows == [1]
    _close(last.logits, alone(model, long.token_ids)[-1:])


def test_guesses_get_one_row_each_equal_to_feeding_them_one_at_a_time(
    plain_loaded: LoadedModel, prompts: list[list[int]]
) -> None:
    model = plain_loaded.model
    prompt = prompts[2]
    right = greedy(model, prompt, 4)
    draft = [*right[1:3], right[3] + 1]  # two right guesses, then a wrong one

    h = Harness(model)
    seq = h.admit(prompt)
    h.step((seq, seq.num_tokens))
    seq.append_token(right[0])
    seq.draft = list(draft)
    context = seq.num_tokens
    verify = h.step((seq, 1 + len(draft)))
    assert verify.sampling == [seq] and verify.num_rows == [1 + len(draft)]
    assert verify.logits.shape[0] == 1 + len(draft)
    # Row j attends to the context and guesses before it: contexts n, n+1, ..., n+k.
    assert verify.attended == sum(range(context, context + len(draft) + 1))
    # greedy agrees with the two right guesses and sees through the wrong one
    assert verify.logits.argmax(-1).tolist()[:3] == right[1:4]

    one = Harness(model)  # the same tokens, one decode step each
    plain = one.admit(prompt)
    one.step((plain, plain.num_tokens))
    rows = []
    for token in [right[0], *draft]:
        plain.append_token(token)
        out = one.step((plain, 1))
        assert out.num_rows == [1]
        rows.append(out.logits[0])
    _close(verify.logits, torch.stack(rows))


def test_a_mixed_batch_equals_each_sequence_run_alone(
    plain_loaded: LoadedModel, prompts: list[list[int]]
) -> None:
    """One step holding a decode, a verify with guesses, the last chunk of a chunked
    prefill and a whole prompt: every row as if each sequence had run by itself."""
    model, h = plain_loaded.model, Harness(plain_loaded.model)
    dec, ver, chunked, fresh = (h.admit(p) for p in prompts)
    h.step((dec, dec.num_tokens), (ver, ver.num_tokens), (chunked, BLOCK + 3))
    dec.append_token(greedy(model, dec.token_ids, 1)[0])
    ver.append_token(greedy(model, ver.token_ids, 1)[0])
    ver.draft = [11, 22, 33]  # guesses right or wrong: each row is checked all the same
    fed_ver = ver.token_ids + ver.draft

    out = h.step(
        (fresh, fresh.num_tokens),
        (chunked, chunked.num_uncomputed_tokens),
        (ver, 1 + len(ver.draft)),
        (dec, 1),
    )
    # one-query rows first, then the prefills, each group in the order listed
    assert out.sampling == [ver, dec, fresh, chunked]
    assert out.num_rows == [4, 1, 1, 1]
    assert out.attended == sum(range(ver.num_tokens, ver.num_tokens + 4)) + dec.num_tokens
    want = torch.cat(
        [
            alone(model, fed_ver)[-4:],
            alone(model, dec.token_ids)[-1:],
            alone(model, fresh.token_ids)[-1:],
            alone(model, chunked.token_ids)[-1:],
        ]
    )
    _close(out.logits, want)
