"""Attention diagnostics of a model (`pipeline.diagnostics`) and `heat-pipeline diagnose`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from heat.attention import HadamardSpec, HeatSpec, SoftmaxSpec
from heat.models import (AttentionSites, ClassifierConfig, EncoderClassifier, Seq2SeqConfig,
                         Seq2SeqTransformer)
from pipeline.diagnostics import (SiteDiagnostic, diagnose_model, format_diagnostics,
                                  plot_diagnostics)

VOCAB, PAD, BOS, EOS = 24, 0, 1, 2
LAYERS = 2
HEAT = HeatSpec(rank=8, implementation="folded", chunk_size=4)
SIZES = dict(vocab_size=VOCAB, d_model=32, num_heads=2, num_encoder_layers=LAYERS, ffn_dim=64,
             dropout=0.0, max_length=16, pad_id=PAD)


def seq2seq(spec) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    sites = AttentionSites(encoder_self=spec, decoder_self=spec, cross=spec)
    return Seq2SeqTransformer(Seq2SeqConfig(**SIZES, num_decoder_layers=LAYERS, bos_id=BOS,
                                            eos_id=EOS, attention=sites))


def classifier(spec) -> EncoderClassifier:
    torch.manual_seed(0)
    return EncoderClassifier(ClassifierConfig(**SIZES, num_classes=2, attention_spec=spec))


def padded(lengths: list[int], generator: torch.Generator) -> torch.Tensor:
    """(B, max length) random content tokens, padded with PAD after each row's length."""
    tokens = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=generator)
    return tokens.masked_fill(torch.arange(max(lengths))[None] >= torch.tensor(lengths)[:, None],
                              PAD)


def translation_batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batches = []
    for src_lengths, tgt_lengths in (([7, 4, 2], [5, 6, 3]), ([9, 9, 5, 3], [8, 2, 4, 6])):
        src, tgt = padded(src_lengths, generator), padded(tgt_lengths, generator)
        tgt_in = torch.cat([torch.full((len(tgt), 1), BOS), tgt[:, :-1]], dim=1)
        batches.append({"src": src, "tgt_in": tgt_in.masked_fill(tgt.eq(PAD), PAD),
                        "tgt_out": tgt})
    return batches


def classification_batches() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    batches = []
    for lengths in ([8, 3, 5], [10, 10, 2, 6]):
        ids = padded(lengths, generator)
        batches.append({"input_ids": ids, "segment_ids": torch.zeros_like(ids),
                        "labels": torch.zeros(len(lengths), dtype=torch.long)})
    return batches


def scale_queries(model: torch.nn.Module, factor: float) -> None:
    """Every attention's q projection (weights and bias) times `factor`."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("_attention"):
                module.q_proj.weight.mul_(factor)
                module.q_proj.bias.mul_(factor)


def check_rows(rows: list[SiteDiagnostic], sites: list[str]) -> None:
    assert [(r.site, r.layer) for r in rows] == [(s, i) for s in sites for i in range(LAYERS)]
    for row in rows:
        assert math.isfinite(row.rel_error) and math.isfinite(row.rel_error_gaussian)
        for stats in (row.q, row.k):
            assert stats is not None and len(stats.std) == 2  # one value per head
            assert all(math.isfinite(s) and s > 0 for s in stats.std)
            for values in (stats.beyond_2sigma, stats.clipped):
                assert all(0.0 <= v <= 1.0 for v in values)
        json.dumps(row.to_dict())


SEQ2SEQ_SITES = ["encoder_self", "decoder_self", "decoder_cross"]


def test_hadamard_against_itself_is_exactly_zero():
    rows = diagnose_model(seq2seq(HadamardSpec(chunk_size=3)), translation_batches())
    check_rows(rows, SEQ2SEQ_SITES)
    for row in rows:
        assert (row.attention, row.exact) == ("hadamard", "hadamard")
        assert row.rel_error == 0.0 and row.rel_error_gaussian == 0.0 and row.ratio is None


def test_heat_has_an_error_against_hadamard_on_trained_and_gaussian_inputs():
    model = seq2seq(HEAT)
    rows = diagnose_model(model, translation_batches())
    check_rows(rows, SEQ2SEQ_SITES)
    for row in rows:
        assert (row.variant, row.exact) == ("heat", "hadamard")
        assert row.rel_error > 0 and 0 < row.rel_error_gaussian < 0.05
        assert row.ratio == pytest.approx(row.rel_error / row.rel_error_gaussian)
    table = format_diagnostics(rows)
    assert len(table.splitlines()) == 2 + len(rows) and "decoder_cross" in table


def test_larger_queries_are_clipped_more_and_approximated_worse():
    model = seq2seq(HEAT)
    before = diagnose_model(model, translation_batches())
    scale_queries(model, 5.0)
    after = diagnose_model(model, translation_batches())
    for old, new in zip(before, after):
        assert new.q.max("clipped") > old.q.max("clipped") + 0.1
        assert new.q.max("std") > 3 * old.q.max("std")
        if (new.site, new.layer) in (("encoder_self", 0), ("decoder_self", 0)):
            assert new.k == old.k  # the first layers' keys come from the embeddings alone
    assert sum(r.rel_error for r in after) > sum(r.rel_error for r in before)


def test_padded_positions_do_not_count():
    model = seq2seq(HEAT)
    batch = translation_batches()[0]
    wider = {name: torch.nn.functional.pad(t, (0, 3), value=PAD) if t.dim() == 2 else t
             for name, t in batch.items()}
    narrow, wide = diagnose_model(model, [batch]), diagnose_model(model, [wider])
    for a, b in zip(narrow, wide):
        assert b.q.std == pytest.approx(a.q.std) and b.k.clipped == pytest.approx(a.k.clipped)
        assert b.rel_error == pytest.approx(a.rel_error, rel=1e-2)  # fp32 noise of a 5e-4 error


def test_max_rows_keeps_the_first_rows_of_each_batch():
    model = seq2seq(HEAT)
    batches = translation_batches()
    first = [{name: t[:2] for name, t in batch.items()} for batch in batches]
    assert diagnose_model(model, batches, max_rows=2) == diagnose_model(model, first)


def test_classifier_has_encoder_sites_only():
    rows = diagnose_model(classifier(HEAT), classification_batches())
    check_rows(rows, ["encoder_self"])
    assert all(r.rel_error > 0 for r in rows)
    exact = diagnose_model(classifier(HadamardSpec()), classification_batches())
    assert all(r.rel_error == 0.0 for r in exact)
    model = classifier(HEAT)
    scale_queries(model, 5.0)
    scaled = diagnose_model(model, classification_batches())
    assert all(new.q.max("clipped") > old.q.max("clipped") for old, new in zip(rows, scaled))


def test_softmax_sites_have_no_input_figures_and_a_plot(tmp_path):
    rows = diagnose_model(classifier(SoftmaxSpec()), classification_batches())
    assert all(r.rel_error == 0.0 and r.q is None and r.k is None for r in rows)
    assert set(rows[0].figures()) == {"rel_error", "rel_error_gaussian"}
    mixed = rows + diagnose_model(classifier(HEAT), classification_batches())
    path = plot_diagnostics(mixed, str(tmp_path / "diag.png"))
    assert (tmp_path / "diag.png").read_bytes()[:4] == b"\x89PNG" and path.endswith("diag.png")
    assert " - " in format_diagnostics(rows)


def test_diagnose_of_a_missing_run_is_one_line_and_exit_2(tmp_path):
    from smoke_run import heat_pipeline

    result = heat_pipeline("diagnose", "no-such-run", "--storage-root", str(tmp_path / "runs"),
                           cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-run" in lines[0] and "Traceback" not in result.stderr
