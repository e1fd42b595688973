"""BERT's forward over a batch's real tokens only, for a BERT model with mean pooling
(all-MiniLM-L6-v2 is one): the weights sentence-transformers loaded, without its
per-call pipeline and without padding in the linear layers.

With 2 torch threads on a 2-core CPU that takes 3.3 ms for one short text where
SentenceTransformer.encode takes ~7 (its per-call pipeline), and 62 ms for 32 texts of
5-38 tokens where encode takes 136 (no padding in the linear layers, ~90% of the flops).
Other pipelines run through encode(). A batch is then bound by fp32 matmul at the CPU's
peak; one text by reading the weights once (~2 ms), which is what batching shares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from policies.batching import group_by_length

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


@dataclass(frozen=True, slots=True)
class _Layer:
    qkv_w: torch.Tensor  # (3*hidden, hidden): query, key, value fused into one matmul
    qkv_b: torch.Tensor
    out_w: torch.Tensor  # attention output projection (hidden, hidden)
    out_b: torch.Tensor
    norm1: torch.nn.LayerNorm
    up_w: torch.Tensor  # (intermediate, hidden)
    up_b: torch.Tensor
    down_w: torch.Tensor  # (hidden, intermediate)
    down_b: torch.Tensor
    norm2: torch.nn.LayerNorm


@dataclass(frozen=True, slots=True)
class _Group:
    """`count` consecutive sequences of the length-sorted batch: tokens [t0, t1) of the
    packed batch, padded to `length` (the group's longest) for attention."""

    t0: int
    t1: int
    count: int
    length: int
    rows: torch.Tensor | None  # (t1-t0,) each token's row in the (count*length) grid
    mask: torch.Tensor | None  # (count, 1, 1, length) real keys; None: all equal lengths


class PackedBert:
    """BERT's encoder over packed tokens: embeddings, the linear layers, layer norms and
    GELU see only real tokens, x: (T, hidden) with T the batch's total length; attention
    alone runs on a padded grid, one per group of similar lengths. Then mean pooling and
    L2 normalization, as the sentence-transformers pipeline does. Same weights and math as
    BertModel.forward in eval mode (no dropout); agrees with encode() to ~1e-7."""

    def __init__(self, bert: Any) -> None:
        emb = bert.embeddings
        self.word: torch.Tensor = emb.word_embeddings.weight  # (vocab, hidden)
        self.position: torch.Tensor = emb.position_embeddings.weight  # (max_pos, hidden)
        self.type0: torch.Tensor = emb.token_type_embeddings.weight[0]  # (hidden,) segment A
        self.embed_norm: torch.nn.LayerNorm = emb.LayerNorm
        self.heads: int = bert.config.num_attention_heads
        self.hidden: int = bert.config.hidden_size
        self.layers = []
        for layer in bert.encoder.layer:
            attn = layer.attention
            q, k, v = attn.self.query, attn.self.key, attn.self.value
            self.layers.append(
                _Layer(
                    torch.cat([q.weight, k.weight, v.weight]).contiguous(),
                    torch.cat([q.bias, k.bias, v.bias]).contiguous(),
                    attn.output.dense.weight,
                    attn.output.dense.bias,
                    attn.output.LayerNorm,
                    layer.intermediate.dense.weight,
                    layer.intermediate.dense.bias,
                    layer.output.dense.weight,
                    layer.output.dense.bias,
                    layer.output.LayerNorm,
                )
            )

    @classmethod
    def of(cls, st: SentenceTransformer) -> PackedBert | None:
        """None unless the first module is a plain BERT encoder (absolute positions, erf
        GELU, not a decoder); the pooling is checked by running it
        (EmbeddingModel._packed_agrees)."""
        from transformers import BertModel

        bert = getattr(st[0], "auto_model", None)
        if not isinstance(bert, BertModel):
            return None
        config = bert.config
        absolute = getattr(config, "position_embedding_type", "absolute") == "absolute"
        if config.hidden_act != "gelu" or config.is_decoder or not absolute:
            return None
        return cls(bert)

    def __call__(self, rows: list[list[int]], device: torch.device) -> torch.Tensor:
        """rows: token ids per text -> (len(rows), hidden) unit vectors, in rows' order."""
        # Shortest first, so each attention group is one contiguous run of packed tokens.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        lengths = [len(rows[i]) for i in order]
        ids = torch.tensor([t for i in order for t in rows[i]], device=device)  # (T,)
        positions = torch.tensor([p for n in lengths for p in range(n)], device=device)  # (T,)
        groups = self._groups(lengths, device)

        # BertEmbeddings' order of additions: (word + segment) + position, then LayerNorm.
        x = self.word[ids] + self.type0 + self.position[positions]  # (T, hidden)
        x = self.embed_norm(x)
        for layer in self.layers:
            qkv = F.linear(x, layer.qkv_w, layer.qkv_b)  # (T, 3*hidden)
            parts = [self._attend(qkv[g.t0 : g.t1], g) for g in groups]
            attn = parts[0] if len(parts) == 1 else torch.cat(parts)  # (T, hidden)
            x = layer.norm1(F.linear(attn, layer.out_w, layer.out_b) + x)
            h = F.gelu(F.linear(x, layer.up_w, layer.up_b))  # (T, intermediate)
            x = layer.norm2(F.linear(h, layer.down_w, layer.down_b) + x)

        # Mean pooling per text: sum its tokens' rows, divide by its length.
        count = torch.tensor(lengths, device=device)  # (B,)
        seq = torch.repeat_interleave(torch.arange(len(rows), device=device), count)  # (T,)
        sums = x.new_zeros(len(rows), self.hidden).index_add_(0, seq, x)  # (B, hidden)
        vectors = F.normalize(sums / count[:, None].to(x.dtype), p=2.0, dim=1)
        out = torch.empty_like(vectors)
        out[torch.tensor(order, device=device)] = vectors  # back to the callers' order
        return out

    def _groups(self, lengths: list[int], device: torch.device) -> list[_Group]:
        groups: list[_Group] = []
        first = t0 = 0
        for end in group_by_length(lengths):
            sizes = lengths[first:end]
            count, length, t1 = end - first, sizes[-1], t0 + sum(sizes)
            if sizes[0] == length:  # no padding: the grid is a view of the packed rows
                groups.append(_Group(t0, t1, count, length, None, None))
            else:
                rows = [s * length + p for s, n in enumerate(sizes) for p in range(n)]
                real = torch.arange(length) < torch.tensor(sizes)[:, None]  # (count, length)
                groups.append(
                    _Group(
                        t0,
                        t1,
                        count,
                        length,
                        torch.tensor(rows, device=device),
                        real[:, None, None, :].to(device),  # broadcast over heads, queries
                    )
                )
            first, t0 = end, t1
        return groups

    def _attend(self, qkv: torch.Tensor, g: _Group) -> torch.Tensor:
        """qkv: (t1-t0, 3*hidden) of one group -> attention output (t1-t0, hidden)."""
        heads, dim = self.heads, self.hidden // self.heads
        if g.rows is None:
            grid = qkv
        else:
            # Padded query rows attend too and are dropped below; padded keys are masked.
            grid = qkv.new_zeros(g.count * g.length, qkv.shape[1])
            grid[g.rows] = qkv
        q, k, v = grid.view(g.count, g.length, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask)  # (count, H, L, D)
        out = out.transpose(1, 2).reshape(g.count * g.length, self.hidden)  # (count*L, hidden)
        return out if g.rows is None else out[g.rows]
