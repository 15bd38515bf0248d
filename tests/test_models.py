"""Transformer layers, models and decoding (heat.layers, heat.models, heat.decoding).

Tiny models on CPU: the whole file runs in seconds. Decoding tests use copy-task models trained
for a few dozen steps, once per variant: an untrained model repeats one token forever, which would
hide cache and beam bugs, while a half-trained one gives source-dependent outputs on which beam
search and greedy decoding often disagree.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch

from heat.attention import (
    REGISTRY,
    HadamardSpec,
    HeatSpec,
    LinformerSpec,
    NystromSpec,
    SoftmaxSpec,
    TaylorSpec,
    spec_to_dict,
)
from heat.decoding import beam_search, greedy_decode
from heat.models import (
    AttentionSites,
    ClassifierConfig,
    EncoderClassifier,
    Seq2SeqConfig,
    Seq2SeqTransformer,
)

PAD, BOS, EOS = 0, 1, 2
VOCAB = 12  # ids 3 .. 11 are content tokens

# Small chunk sizes make the causal prefix sums cross chunk boundaries even at these lengths.
CAUSAL_SPECS = [
    pytest.param(SoftmaxSpec(), id="softmax"),
    pytest.param(HadamardSpec(chunk_size=3), id="hadamard"),
    pytest.param(HeatSpec(rank=8, basis="svd", chunk_size=2), id="heat-svd"),
    pytest.param(HeatSpec(rank=6, basis="taylor", chunk_size=2), id="heat-taylor"),
    pytest.param(TaylorSpec(order=2, chunk_size=2), id="taylor"),
]
NON_CAUSAL_SPECS = [
    pytest.param(LinformerSpec(rank=4, max_length=16), id="linformer"),
    pytest.param(NystromSpec(landmarks=2), id="nystrom"),
]


def tiny_config(**overrides) -> Seq2SeqConfig:
    fields = dict(
        vocab_size=VOCAB, d_model=32, num_heads=2, num_encoder_layers=2, num_decoder_layers=2,
        ffn_dim=64, dropout=0.0, norm_first=True, max_length=16, pad_id=PAD, bos_id=BOS,
        eos_id=EOS, label_smoothing=0.0,
    )
    return Seq2SeqConfig(**{**fields, **overrides})


def same_sites(spec) -> AttentionSites:
    return AttentionSites(encoder_self=spec, decoder_self=spec, cross=spec)


def copy_batch(gen: torch.Generator, n: int, min_len: int = 3, max_len: int = 5):
    """Random content sequences of varied length: src, tgt_in (bos + src), tgt_out (src + eos)."""
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=gen)  # (n,)
    body = torch.randint(3, VOCAB, (n, max_len), generator=gen)  # (n, max_len)
    body = body.masked_fill(torch.arange(max_len)[None] >= lengths[:, None], PAD)
    tgt_in = torch.cat([torch.full((n, 1), BOS), body], dim=1)  # (n, max_len + 1)
    tgt_out = torch.cat([body, torch.full((n, 1), PAD)], dim=1)  # (n, max_len + 1)
    tgt_out[torch.arange(n), lengths] = EOS
    return body, tgt_in, tgt_out


def unpadded(src: torch.Tensor) -> list[list[int]]:
    return [[token for token in row if token != PAD] for row in src.tolist()]


def train_copy_model(spec=None, steps: int = 150, seed: int = 0) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(tiny_config(attention=same_sites(spec or SoftmaxSpec())))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        src, tgt_in, tgt_out = copy_batch(gen, 64)
        loss = model.loss(src, tgt_in, tgt_out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def copy_model() -> Seq2SeqTransformer:
    return train_copy_model()


@functools.cache
def half_trained(spec) -> Seq2SeqTransformer:
    """`spec` at every site, 40 training steps, in fp64 so that argmaxes are stable."""
    return train_copy_model(spec, steps=40).double()


def held_out_sources(n: int = 8, seed: int = 1) -> torch.Tensor:
    src, _, _ = copy_batch(torch.Generator().manual_seed(seed), n)
    return src


# ---------------------------------------------------------------------------------------------
# Incremental decoding


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
@pytest.mark.parametrize("spec", CAUSAL_SPECS)
def test_incremental_decoder_logits_equal_full_pass(spec, norm_first: bool) -> None:
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny_config(attention=same_sites(spec), norm_first=norm_first))
    model = model.double().eval()
    src = torch.randint(3, VOCAB, (3, 7))
    src[0, 4:] = PAD
    tgt_in = torch.cat([torch.full((3, 1), BOS), torch.randint(3, VOCAB, (3, 6))], dim=1)
    with torch.no_grad():
        memory, memory_mask = model.encode(src), model.padding_mask(src)
        full = model.decode(tgt_in, memory, memory_mask)  # (3, 7, V)
        cache = model.new_decoder_cache()
        # Steps of several tokens too: the new queries are the last of the cached keys.
        steps = [model.decode(part, memory, memory_mask, cache) for part in tgt_in.split(
            [3, 1, 2, 1], dim=1
        )]
    assert cache.position == tgt_in.shape[1]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spec", CAUSAL_SPECS)
def test_greedy_with_cache_matches_recomputation(spec) -> None:
    model = half_trained(spec)
    src = held_out_sources()
    cached = greedy_decode(model, src, max_length=8, use_cache=True)
    assert cached == greedy_decode(model, src, max_length=8, use_cache=False)


@pytest.mark.parametrize("spec", CAUSAL_SPECS)
def test_beam_search_with_cache_matches_recomputation(spec) -> None:
    model = half_trained(spec)
    src = held_out_sources()
    cached = beam_search(model, src, beam_size=3, length_penalty=0.6, max_length=8)
    recomputed = beam_search(
        model, src, beam_size=3, length_penalty=0.6, max_length=8, use_cache=False
    )
    assert cached == recomputed
    # Guards the test itself: with beams equal to greedy, beam reordering would go untested.
    assert cached != greedy_decode(model, src, max_length=8)


@pytest.mark.parametrize("spec", CAUSAL_SPECS)
def test_beam_size_one_equals_greedy(spec) -> None:
    model = half_trained(spec)
    src = held_out_sources()
    beam = beam_search(model, src, beam_size=1, length_penalty=1.0, max_length=8)
    assert beam == greedy_decode(model, src, max_length=8)


def test_batched_decoding_equals_one_sentence_at_a_time() -> None:
    """Padding in a batch of sources of different lengths must not change any translation."""
    model = half_trained(SoftmaxSpec())
    src = held_out_sources(n=5, seed=2)
    for search in (
        lambda s: greedy_decode(model, s, max_length=8),
        lambda s: beam_search(model, s, beam_size=3, length_penalty=0.6, max_length=8),
    ):
        alone = [search(torch.tensor([row]))[0] for row in unpadded(src)]
        assert search(src) == alone


def test_decoding_rejects_max_length_beyond_the_model(copy_model) -> None:
    with pytest.raises(ValueError, match="max_length"):
        greedy_decode(copy_model, held_out_sources(), max_length=17)


# ---------------------------------------------------------------------------------------------
# Attention sites


def test_linformer_decoder_self_attention_falls_back_to_softmax(caplog) -> None:
    spec = LinformerSpec(rank=4, max_length=16)
    with caplog.at_level(logging.WARNING, logger="heat.models"):
        model = Seq2SeqTransformer(tiny_config(attention=same_sites(spec)))
    assert caplog.messages == ["decoder self-attention: linformer cannot be causal; using softmax"]
    assert model.resolved_attention == {
        "encoder_self": spec_to_dict(spec),
        "decoder_self": spec_to_dict(SoftmaxSpec()),
        "cross": spec_to_dict(spec),
    }
    decoder_layer = model.decoder.layers[0]
    assert isinstance(model.encoder.layers[0].self_attention.kernel, REGISTRY["linformer"].kernel)
    assert isinstance(decoder_layer.cross_attention.kernel, REGISTRY["linformer"].kernel)
    assert isinstance(decoder_layer.self_attention.kernel, REGISTRY["softmax"].kernel)


def test_nystrom_serves_only_the_encoder_of_a_seq2seq_model(caplog) -> None:
    """Nystrom is neither causal nor query-independent: both decoder sites fall back."""
    spec = NystromSpec(landmarks=2)
    with caplog.at_level(logging.WARNING, logger="heat.models"):
        model = Seq2SeqTransformer(tiny_config(attention=same_sites(spec)))
    assert caplog.messages == [
        "decoder self-attention: nystrom cannot be causal; using softmax",
        "decoder cross-attention: nystrom pools over the target positions (later target tokens "
        "would leak into earlier ones); using softmax",
    ]
    assert model.resolved_attention == {
        "encoder_self": spec_to_dict(spec),
        "decoder_self": spec_to_dict(SoftmaxSpec()),
        "cross": spec_to_dict(SoftmaxSpec()),
    }
    assert isinstance(model.encoder.layers[0].self_attention.kernel, REGISTRY["nystrom"].kernel)


def test_causal_sites_are_kept_without_warning(caplog) -> None:
    spec = TaylorSpec(order=2)
    with caplog.at_level(logging.WARNING, logger="heat.models"):
        model = Seq2SeqTransformer(tiny_config(attention=same_sites(spec)))
    assert not caplog.records
    assert model.resolved_attention["decoder_self"] == spec_to_dict(spec)


CAUSALITY_CASES = CAUSAL_SPECS + NON_CAUSAL_SPECS


@pytest.mark.parametrize("spec", CAUSALITY_CASES)
def test_decoder_logits_do_not_depend_on_later_targets(spec) -> None:
    """Teacher forcing is honest only if logits at t ignore target tokens after t."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny_config(attention=same_sites(spec))).double().eval()
    src = torch.randint(3, VOCAB, (2, 8))
    tgt_in = torch.cat([torch.full((2, 1), BOS), torch.randint(3, VOCAB, (2, 7))], dim=1)
    changed = tgt_in.clone()
    changed[:, 4:] = torch.randint(3, VOCAB, (2, 4))
    with torch.no_grad():
        before, after = model(src, tgt_in), model(src, changed)
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=1e-9, atol=1e-9)


def test_each_site_kind_has_its_own_shared_parameters() -> None:
    spec = LinformerSpec(rank=4, max_length=16, sharing="layer")
    model = Seq2SeqTransformer(tiny_config(attention=same_sites(spec)))
    encoder = [layer.self_attention.kernel for layer in model.encoder.layers]
    cross = [layer.cross_attention.kernel for layer in model.decoder.layers]
    encoder_shared = {id(p) for kernel in encoder for p in kernel.parameters()}
    cross_shared = {id(p) for kernel in cross for p in kernel.parameters()}
    assert len(encoder_shared) == 1 and len(cross_shared) == 1
    assert encoder_shared != cross_shared


# ---------------------------------------------------------------------------------------------
# Configs


def test_embeddings_are_tied() -> None:
    model = Seq2SeqTransformer(tiny_config())
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(embeddings) == 1
    logits = model(torch.tensor([[3, 4]]), torch.tensor([[BOS, 3]]))
    logits.sum().backward()
    assert model.embedding.weight.grad is not None
    output_weights = [p for p in model.parameters() if p.shape == (VOCAB, 32)]
    assert len(output_weights) == 1 and output_weights[0] is model.embedding.weight


BAD_CONFIGS = [
    pytest.param(lambda: tiny_config(d_model=30, num_heads=4), "d_model", id="heads"),
    pytest.param(
        lambda: AttentionSites.from_dict({"decoder": {"name": "softmax"}}), "attention.decoder",
        id="site",
    ),
    pytest.param(
        lambda: tiny_config(
            attention=AttentionSites(encoder_self=LinformerSpec(rank=4, max_length=8))
        ),
        "attention.encoder_self.max_length", id="linformer-length",
    ),
    pytest.param(
        lambda: AttentionSites.from_dict({"cross": {"name": "heat", "rank": 0}}),
        "attention.cross", id="spec",
    ),
    pytest.param(lambda: tiny_config(dropout=1.0), "dropout", id="dropout"),
    pytest.param(lambda: tiny_config(eos_id=PAD), "eos_id", id="eos-is-pad"),
    pytest.param(lambda: tiny_config(attention={"cross": {}}), "attention", id="raw-dict"),
    pytest.param(
        lambda: ClassifierConfig(vocab_size=VOCAB, num_classes=2, pooling="max"), "pooling",
        id="pooling",
    ),
    pytest.param(
        lambda: ClassifierConfig(
            vocab_size=VOCAB, num_classes=2, max_length=64,
            attention_spec=LinformerSpec(rank=4, max_length=32),
        ),
        "attention_spec.max_length", id="classifier-linformer-length",
    ),
]


@pytest.mark.parametrize(("make", "field"), BAD_CONFIGS)
def test_bad_config_raises_value_error_naming_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make()


def test_attention_sites_from_dict_defaults_missing_sites_to_softmax() -> None:
    sites = AttentionSites.from_dict({"cross": {"name": "nystrom", "landmarks": 4}})
    assert sites.cross == NystromSpec(landmarks=4)
    assert sites.encoder_self == SoftmaxSpec() and sites.decoder_self == SoftmaxSpec()
    assert AttentionSites.from_dict(sites.to_dict()) == sites


def test_linformer_decoder_self_site_is_not_held_to_the_model_length() -> None:
    """It is replaced by softmax, so its max_length does not matter."""
    spec = LinformerSpec(rank=4, max_length=8)
    tiny_config(attention=AttentionSites(decoder_self=spec))


# ---------------------------------------------------------------------------------------------
# Training


def test_loss_sum_is_mean_times_tokens() -> None:
    model = Seq2SeqTransformer(tiny_config(label_smoothing=0.1))
    src, tgt_in, tgt_out = copy_batch(torch.Generator().manual_seed(0), 4)
    tokens = (tgt_out != PAD).sum()
    mean, total = model.loss(src, tgt_in, tgt_out), model.loss(src, tgt_in, tgt_out, "sum")
    torch.testing.assert_close(total, mean * tokens)


def test_tiny_model_learns_to_copy(copy_model) -> None:
    src = held_out_sources(n=100, seed=3)
    hypotheses = greedy_decode(copy_model, src, max_length=8)
    references = unpadded(src)
    correct = sum(h == r for hyp, ref in zip(hypotheses, references) for h, r in zip(hyp, ref))
    token_accuracy = correct / sum(len(ref) for ref in references)
    exact = sum(hyp == ref for hyp, ref in zip(hypotheses, references)) / len(references)
    assert token_accuracy > 0.9 and exact > 0.8, (token_accuracy, exact)


def test_gradient_reaches_every_parameter() -> None:
    sites = AttentionSites(
        encoder_self=LinformerSpec(rank=4, max_length=16, sharing="none"),
        decoder_self=TaylorSpec(order=2, feature_dim=4),
        cross=NystromSpec(landmarks=2, conv_kernel=0),
    )
    torch.manual_seed(0)
    model = Seq2SeqTransformer(tiny_config(attention=sites, dropout=0.1))
    src, tgt_in, tgt_out = copy_batch(torch.Generator().manual_seed(0), 8)
    model.loss(src, tgt_in, tgt_out).backward()
    assert_every_parameter_has_gradient(model)


def assert_every_parameter_has_gradient(model: torch.nn.Module) -> None:
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient: {missing}"
    zero = [name for name, p in model.named_parameters() if not p.grad.abs().sum() > 0]
    assert not zero, f"zero gradient: {zero}"
    assert all(p.grad.isfinite().all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Classifier


def tiny_classifier(pooling: str = "mean", spec=None) -> EncoderClassifier:
    torch.manual_seed(0)
    config = ClassifierConfig(
        vocab_size=VOCAB, num_classes=3, d_model=32, num_heads=2, num_encoder_layers=2, ffn_dim=64,
        dropout=0.1, max_length=16, pad_id=PAD, pooling=pooling,
        attention_spec=spec or SoftmaxSpec(),
    )
    return EncoderClassifier(config)


@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_classifier_logits_shape_and_segments(pooling: str) -> None:
    model = tiny_classifier(pooling).eval()
    input_ids = torch.randint(3, VOCAB, (4, 7))
    segment_ids = (torch.arange(7) >= 4).long().expand(4, 7)
    with torch.no_grad():
        plain, with_segments = model(input_ids), model(input_ids, segment_ids)
    assert plain.shape == (4, 3)
    assert not torch.allclose(plain, with_segments)
    torch.testing.assert_close(plain, model(input_ids, torch.zeros_like(input_ids)))


@pytest.mark.parametrize("pooling", ["mean", "first"])
@pytest.mark.parametrize(
    "spec", [SoftmaxSpec(), NystromSpec(landmarks=2), HeatSpec(rank=8)], ids=lambda s: s.name
)
def test_classifier_ignores_appended_padding(pooling: str, spec) -> None:
    model = tiny_classifier(pooling, spec).double().eval()
    input_ids = torch.randint(3, VOCAB, (3, 6))
    segment_ids = (torch.arange(6) >= 3).long().expand(3, 6)
    padded_ids = torch.cat([input_ids, torch.full((3, 4), PAD)], dim=1)  # (3, 10)
    padded_segments = torch.cat([segment_ids, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(padded_ids, padded_segments), model(input_ids, segment_ids),
            rtol=1e-9, atol=1e-9,
        )


def test_classifier_loss_reaches_every_parameter() -> None:
    model = tiny_classifier("first", TaylorSpec(order=2, feature_dim=4))
    input_ids = torch.randint(3, VOCAB, (4, 7))
    segment_ids = (torch.arange(7) >= 4).long().expand(4, 7)
    loss = model.loss(input_ids, torch.tensor([0, 1, 2, 1]), segment_ids)
    assert loss.dim() == 0
    loss.backward()
    assert_every_parameter_has_gradient(model)


def test_bf16_parameters_with_fp32_buffers_stay_bf16():
    """DeepSpeed casts parameters, not buffers: the fp32 position table must not promote."""
    model = Seq2SeqTransformer(Seq2SeqConfig(
        vocab_size=50, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
        ffn_dim=32))
    for parameter in model.parameters():
        parameter.data = parameter.data.bfloat16()
    assert model.positions.table.dtype == torch.float32
    src = torch.randint(4, 50, (2, 7))
    assert model(src, src).dtype == torch.bfloat16
