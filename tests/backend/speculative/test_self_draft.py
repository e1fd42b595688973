"""The self-draft proposer (backend/speculative/self_draft.py) with the real SmolLM2-135M
model (CPU, fp32), reading the K/V the target model wrote into a small paged cache.

Asserted: its guesses are the greedy continuation of the model cut to its first
`num_layers` layers (computed here from scratch, without the cache), and at full depth
the model's own greedy continuation; each sequence gets exactly as many guesses as it has
placeholders (none for an empty draft), batched guesses equal guessing alone; it writes
only its own layers' slots from the last token on, the slots the step reserved, so the
verification pass that follows gives the logits of the guessed tokens as if fed by hand;
and its interface: lazy (guesses after scheduling, `propose` refused), full depth refused
at construction, `calibrate` sets the cost of one guessing pass.
"""

from __future__ import annotations

import pytest
import torch

from backend.attention import AttentionMetadata
from backend.blocks import BlockManager
from backend.loading.weights import LoadedModel
from backend.model import LlamaModel
from backend.runner import ModelRunner
from backend.scheduler import ScheduledBatch
from backend.sequence import Sequence
from backend.speculative import ProposalRequest, SelfDraftProposer

pytestmark = pytest.mark.slow

BLOCK = 16
NUM_BLOCKS = 16  # 256 slots
TEXTS = [  # different lengths: guesses from different positions, across a block's end
    "The capital of France is",
    "Write a haiku about autumn leaves falling from the old oak tree",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
]


@pytest.fixture(scope="module")
def prompts(plain_loaded: LoadedModel) -> list[list[int]]:
    return [plain_loaded.tokenizer.encode(t) for t in TEXTS]


@pytest.fixture
def runner(plain_loaded: LoadedModel) -> ModelRunner:
    return ModelRunner(plain_loaded.model, NUM_BLOCKS, BLOCK, torch.float32, torch.device("cpu"))


def decoding(runner: ModelRunner, prompts: list[list[int]], drafts: list[int]) -> list[Sequence]:
    """Sequences as the engine hands them to `fill`: prompt computed by the full model,
    one sampled token not yet fed, and drafts[i] placeholder guesses with their slots."""
    blocks = BlockManager(NUM_BLOCKS, BLOCK)
    seqs = [Sequence(i, list(p), len(p)) for i, p in enumerate(prompts)]
    batch = ScheduledBatch()
    for seq in seqs:
        blocks.allocate(seq)
        batch.add(seq, seq.num_tokens)
    out = runner.execute(batch)
    for seq, row, k in zip(seqs, out.logits, drafts, strict=True):
        seq.num_computed_tokens = seq.num_tokens
        seq.append_token(int(row.argmax()))
        seq.draft = [0] * k
        blocks.append_slots(seq, k)
    return seqs


@torch.inference_mode()
def cut_greedy(model: LlamaModel, token_ids: list[int], count: int, layers: int) -> list[int]:
    """The greedy continuation of the model cut to its first `layers` layers (then its
    norm and head), every token recomputed from scratch in a cache of its own."""
    out = list(token_ids)
    for _ in range(count):
        n = len(out)
        kv = model.allocate_kv_cache(-(-n // BLOCK), BLOCK, torch.float32, torch.device("cpu"))
        meta = AttentionMetadata.single_prefill(n, BLOCK)
        hidden = model.forward(torch.tensor(out), torch.arange(n), meta, kv, num_layers=layers)
        out.append(int(model.compute_logits(hidden[-1:]).argmax()))
    return out[len(token_ids) :]


@pytest.mark.parametrize("layers", [6, 29])
def test_guesses_are_the_cut_models_greedy_continuation(
    plain_loaded: LoadedModel, prompts: list[list[int]], runner: ModelRunner, layers: int
) -> None:
    (seq,) = decoding(runner, prompts[1:2], [5])
    SelfDraftProposer(runner, layers).fill([seq])
    assert seq.draft == cut_greedy(plain_loaded.model, seq.token_ids, 5, layers)


def test_at_full_depth_the_guesses_are_the_models_own_greedy_continuation(
    plain_loaded: LoadedModel, prompts: list[list[int]], runner: ModelRunner
) -> None:
    """The constructor refuses full depth (it would cost what the model costs); past
    that guard, the same passes reproduce the model: guessing through the target's own
    cache adds nothing of its own."""
    total = plain_loaded.config.num_layers
    proposer = SelfDraftProposer(runner, total - 1)
    proposer.num_layers = total
    (seq,) = decoding(runner, prompts[2:3], [6])
    want = cut_greedy(plain_loaded.model, seq.token_ids, 6, total)
    proposer.fill([seq])
    assert seq.draft == want


def test_each_sequence_gets_as_many_guesses_as_placeholders_as_if_alone(
    plain_loaded: LoadedModel, prompts: list[list[int]], runner: ModelRunner
) -> None:
    layers = 8
    seqs = decoding(runner, prompts, [4, 0, 2])
    SelfDraftProposer(runner, layers).fill(seqs)
    assert [len(s.draft) for s in seqs] == [4, 0, 2]  # k at most, none for k = 0
    for seq in seqs:
        assert seq.draft == cut_greedy(plain_loaded.model, seq.token_ids, len(seq.draft), layers)


def test_no_placeholders_no_guesses_and_the_cache_untouched(
    prompts: list[list[int]], runner: ModelRunner
) -> None:
    seqs = decoding(runner, prompts[:2], [0, 0])
    before = runner.kv_cache.clone()
    SelfDraftProposer(runner, 8).fill(seqs)
    assert [s.draft for s in seqs] == [[], []]
    assert torch.equal(runner.kv_cache, before)


def test_it_writes_only_its_layers_slots_and_verification_sees_the_guesses(
    plain_loaded: LoadedModel, prompts: list[list[int]], runner: ModelRunner
) -> None:
    layers, k = 8, 4
    (seq,) = decoding(runner, prompts[1:2], [k])  # the guesses cross into a new block
    first_guess = seq.num_tokens - 1  # the position of the last (unfed) token
    assert first_guess // BLOCK != (first_guess + k - 1) // BLOCK
    before = runner.kv_cache.clone()
    SelfDraftProposer(runner, layers).fill([seq])

    positions = range(first_guess, first_guess + k)
    slots = [seq.block_table[p // BLOCK] * BLOCK + p % BLOCK for p in positions]
    # [L, 2, blocks, block, Hkv, D] -> [L, 2, slot, Hkv * D]: which slots changed, by layer
    changed = (runner.kv_cache != before).flatten(2, 3).flatten(3).any(-1)
    assert not changed[layers:].any()  # the layers it does not run
    assert changed[:layers, :, slots].all()  # its own layers: the reserved slots...
    changed[:, :, slots] = False
    assert not changed.any()  # ...and nothing else: the prompt's K/V stay the target's

    batch = ScheduledBatch()
    batch.add(seq, 1 + k)  # the verification pass, as the engine runs it next
    out = runner.execute(batch)
    fed = seq.token_ids + seq.draft
    n = len(fed)
    kv = plain_loaded.model.allocate_kv_cache(
        -(-n // BLOCK), BLOCK, torch.float32, torch.device("cpu")
    )
    with torch.inference_mode():
        meta = AttentionMetadata.single_prefill(n, BLOCK)
        hidden = plain_loaded.model.forward(torch.tensor(fed), torch.arange(n), meta, kv)
        want = plain_loaded.model.compute_logits(hidden[-1 - k :])
    torch.testing.assert_close(out.logits, want, atol=2e-4, rtol=1e-4)


def test_it_guesses_after_scheduling_and_refuses_full_depth(
    plain_loaded: LoadedModel, runner: ModelRunner
) -> None:
    total = plain_loaded.config.num_layers
    for layers in (total, total + 1):
        with pytest.raises(ValueError, match="self_draft_layers"):
            SelfDraftProposer(runner, layers)
    proposer = SelfDraftProposer(runner, 4)
    assert proposer.lazy  # the engine schedules placeholders, then calls fill
    with pytest.raises(NotImplementedError):
        proposer.propose([ProposalRequest([1, 2, 3], 2)])
    assert proposer.pass_seconds == 0.0
    proposer.calibrate()  # the cache holds nothing in use yet
    assert proposer.pass_seconds > 0.0
