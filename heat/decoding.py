"""Greedy decoding and beam search for `heat.models.Seq2SeqTransformer`.

Both return one list of token ids per source sentence, without bos, eos or padding. Both run
under `torch.no_grad()`; put the model in eval mode first (dropout would make search random).
With `use_cache=True` each step feeds only the newest token through the decoder and reuses the
per-layer key/value cache (causal-capable variants make this exact); with `use_cache=False` each
step recomputes the decoder over the whole prefix, the reference the cache is tested against.

Shape convention: B batch, K beam size, S source length, t decoded length so far, V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from heat.models import Seq2SeqTransformer


class _Decoder:
    """Next-token log-probabilities for a growing batch of prefixes, cached or recomputed."""

    def __init__(
        self,
        model: Seq2SeqTransformer,
        memory: Tensor,
        memory_padding_mask: Tensor,
        use_cache: bool,
    ) -> None:
        self.model = model
        self.memory = memory  # (B', S, D)
        self.memory_padding_mask = memory_padding_mask  # (B', S)
        self.cache = model.new_decoder_cache() if use_cache else None

    def log_probs(self, prefix: Tensor) -> Tensor:
        """prefix: (B', t) tokens decoded so far (bos first) -> (B', V) for position t."""
        tokens = prefix if self.cache is None else prefix[:, self.cache.position :]
        logits = self.model.decode(tokens, self.memory, self.memory_padding_mask, self.cache)
        logits = logits[:, -1].to(_score_dtype(logits))  # (B', V)
        # pad is never a valid output (the loss ignores it, so its logit is untrained), nor is
        # bos unless it doubles as eos (fairseq starts the decoder with eos).
        config = self.model.config
        logits[:, config.pad_id] = float("-inf")
        if config.bos_id != config.eos_id:
            logits[:, config.bos_id] = float("-inf")
        return torch.log_softmax(logits, dim=-1)

    def reorder(self, index: Tensor) -> None:
        """Row i continues hypothesis index[i]. The memory is identical across the beams of a
        sentence and index never crosses sentences, so only the cache needs reordering."""
        if self.cache is not None:
            self.cache.reorder(index)


def _score_dtype(x: Tensor) -> torch.dtype:
    # Sum log-probabilities in at least fp32 even for a half-precision model.
    return torch.promote_types(x.dtype, torch.float32)


def _check_max_length(model: Seq2SeqTransformer, max_length: int) -> None:
    # The decoder input at the last step is bos + max_length - 1 tokens.
    limit = model.config.max_length
    if not 1 <= max_length <= limit:
        raise ValueError(f"max_length must be in [1, {limit}] (the model's), got {max_length}")


def _strip(tokens: list[int], eos_id: int, pad_id: int) -> list[int]:
    """Cut at the first eos and drop padding."""
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    return [token for token in tokens if token != pad_id]


def _encode(model: Seq2SeqTransformer, src: Tensor) -> tuple[Tensor, Tensor]:
    src_padding_mask = model.padding_mask(src)  # (B, S)
    return model.encode(src, src_padding_mask), src_padding_mask


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqTransformer, src: Tensor, max_length: int, use_cache: bool = True
) -> list[list[int]]:
    """Pick the most probable token at each step, for at most max_length tokens (eos included).

    src: (B, S) token ids padded with pad_id. Returns B token lists without bos/eos/pad.
    """
    _check_max_length(model, max_length)
    config = model.config
    memory, memory_padding_mask = _encode(model, src)
    decoder = _Decoder(model, memory, memory_padding_mask, use_cache)
    prefix = src.new_full((src.shape[0], 1), config.bos_id)  # (B, 1)
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)  # (B,)
    for _ in range(max_length):
        next_token = decoder.log_probs(prefix).argmax(dim=-1)  # (B,)
        next_token = next_token.masked_fill(finished, config.pad_id)
        prefix = torch.cat([prefix, next_token[:, None]], dim=1)  # (B, t + 1)
        finished |= next_token.eq(config.eos_id)
        if finished.all():
            break
    return [_strip(row, config.eos_id, config.pad_id) for row in prefix[:, 1:].tolist()]


def _length_penalty(length: int, alpha: float) -> float:
    """GNMT (Wu et al., 2016): ((5 + |Y|) / 6) ** alpha; scores are log-probs divided by it."""
    return ((5.0 + length) / 6.0) ** alpha


class _Hypotheses:
    """Finished hypotheses of one sentence: (normalised score, tokens without bos/eos)."""

    def __init__(self) -> None:
        self.items: list[tuple[float, list[int]]] = []

    def add(self, score: float, tokens: list[int], length: int, alpha: float) -> None:
        """length: |Y|, the generated tokens, eos included when there is one."""
        self.items.append((score / _length_penalty(length, alpha), tokens))

    def best(self) -> list[int]:
        return max(self.items, key=lambda item: item[0])[1]


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    src: Tensor,
    beam_size: int,
    length_penalty: float,
    max_length: int,
    use_cache: bool = True,
) -> list[list[int]]:
    """Beam search with the GNMT length penalty ((5 + len) / 6) ** length_penalty.

    Each step expands the K live beams of every sentence to the 2K best (beam, token)
    candidates; candidates ending in eos among the top K are finished, the K best others live
    on. A sentence is done once it holds K finished hypotheses (fairseq's rule); after
    max_length steps the live beams are finished as they stand. The result per sentence is the
    finished hypothesis with the best length-normalised log-probability; beam_size=1 is greedy.

    src: (B, S) token ids padded with pad_id. Returns B token lists without bos/eos/pad.
    """
    _check_max_length(model, max_length)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    config, batch, k = model.config, src.shape[0], beam_size
    memory, memory_padding_mask = _encode(model, src)
    memory = memory.repeat_interleave(k, dim=0)  # (B * K, S, D)
    memory_padding_mask = memory_padding_mask.repeat_interleave(k, dim=0)  # (B * K, S)
    decoder = _Decoder(model, memory, memory_padding_mask, use_cache)
    prefix = src.new_full((batch * k, 1), config.bos_id)  # (B * K, 1)
    # Every beam starts as the same bare bos: only beam 0 may expand at the first step.
    scores = torch.full(
        (batch, k), float("-inf"), dtype=_score_dtype(memory), device=src.device
    )  # (B, K)
    scores[:, 0] = 0.0
    finished = [_Hypotheses() for _ in range(batch)]
    for step in range(max_length):
        log_probs = decoder.log_probs(prefix).view(batch, k, -1)  # (B, K, V)
        candidates = (scores[:, :, None] + log_probs).flatten(1)  # (B, K * V)
        top_scores, top_index = candidates.topk(min(2 * k, candidates.shape[1]), dim=1)  # (B, 2K)
        vocab = log_probs.shape[-1]
        beam, token = top_index // vocab, top_index % vocab  # (B, 2K) each
        is_eos = token.eq(config.eos_id)
        _finish_eos(finished, prefix, top_scores, beam, is_eos, k, length_penalty)
        if all(len(hypotheses.items) >= k for hypotheses in finished):
            return [_strip(h.best(), config.eos_id, config.pad_id) for h in finished]
        # The K best candidates not ending in eos live on (2K candidates hold at least K).
        live_scores, live = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # (B, K)
        origin = beam.gather(1, live) + torch.arange(batch, device=src.device)[:, None] * k
        origin = origin.flatten()  # (B * K,) row of prefix each new beam extends
        prefix = torch.cat([prefix[origin], token.gather(1, live).flatten()[:, None]], dim=1)
        scores = live_scores
        decoder.reorder(origin)
    _finish_live(finished, prefix, scores, length_penalty)
    return [_strip(h.best(), config.eos_id, config.pad_id) for h in finished]


def _finish_eos(
    finished: list[_Hypotheses],
    prefix: Tensor,
    top_scores: Tensor,
    beam: Tensor,
    is_eos: Tensor,
    k: int,
    alpha: float,
) -> None:
    """Record candidates ending in eos among the top K of sentences not yet done."""
    rows = is_eos[:, :k] & top_scores[:, :k].isfinite()  # (B, K)
    for b, rank in rows.nonzero().tolist():
        if len(finished[b].items) >= k:
            continue  # done: its beams still run with the batch but no longer count
        tokens = prefix[b * k + beam[b, rank].item(), 1:].tolist()
        finished[b].add(top_scores[b, rank].item(), tokens, len(tokens) + 1, alpha)


def _finish_live(
    finished: list[_Hypotheses], prefix: Tensor, scores: Tensor, alpha: float
) -> None:
    """At max_length, the live beams of sentences still short of K hypotheses end as they are."""
    k = scores.shape[1]
    for b, hypotheses in enumerate(finished):
        if len(hypotheses.items) >= k:
            continue
        for rank in range(k):
            if scores[b, rank].isfinite():
                tokens = prefix[b * k + rank, 1:].tolist()
                hypotheses.add(scores[b, rank].item(), tokens, len(tokens), alpha)
