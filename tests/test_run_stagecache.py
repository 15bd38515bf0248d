"""pipeline.stagecache: stage folders keyed by their inputs, the _SUCCESS marker, skip and retry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import stagecache


def test_content_key_is_stable_and_order_independent():
    assert stagecache.content_key({"a": 1, "b": [1, 2]}) == stagecache.content_key({"b": [1, 2], "a": 1})
    assert stagecache.content_key({"a": 1}) != stagecache.content_key({"a": 2})


def test_run_cached_computes_once_then_skips_with_the_stored_result(tmp_path):
    calls = []

    def compute(out: str) -> dict:
        calls.append(out)
        Path(out.removeprefix("file://"), "data.txt").write_text("payload")
        return {"rows": 3}

    out = f"file://{tmp_path}/prepare/key1"  # any pyarrow URI; a plain path works the same
    first = stagecache.run_cached(out, {"cfg": 1}, compute)
    second = stagecache.run_cached(out, {"cfg": 1}, compute)
    assert (first.skipped, second.skipped) == (False, True)
    assert first.result == second.result == {"rows": 3}
    assert len(calls) == 1
    assert json.loads(Path(tmp_path, "prepare", "key1", stagecache.INPUTS).read_text()) == {"cfg": 1}


def test_an_interrupted_attempt_is_cleared_and_rerun(tmp_path):
    out = tmp_path / "tokenize" / "key"
    out.mkdir(parents=True)
    (out / "half-written.parquet").write_text("junk")

    def crash(out_uri: str) -> dict:
        Path(out_uri, "part").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        stagecache.run_cached(str(out), {}, crash)
    assert not (out / stagecache.MARKER).exists()
    outcome = stagecache.run_cached(str(out), {}, lambda o: {"ok": True})
    assert not outcome.skipped and outcome.result == {"ok": True}
    assert not (out / "half-written.parquet").exists() and not (out / "part").exists()


def test_clear_partial_false_keeps_checkpoints_of_an_interrupted_attempt(tmp_path):
    out = tmp_path / "train" / "run"
    out.mkdir(parents=True)
    (out / "checkpoint_000001").mkdir()
    stagecache.run_cached(str(out), {}, lambda o: {}, clear_partial=False)
    assert (out / "checkpoint_000001").is_dir()


def test_source_fingerprint_changes_with_the_code(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text("x = 1\n")
    before = stagecache.source_fingerprint([source])
    source.write_text("x = 2\n")
    assert stagecache.source_fingerprint([source]) != before


def test_file_fingerprint_changes_when_a_corpus_is_edited(tmp_path):
    corpus = tmp_path / "train.jsonl"
    corpus.write_text('{"text": "a", "label": 0}\n')
    before = stagecache.file_fingerprint(str(corpus))
    corpus.write_text('{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert stagecache.file_fingerprint(str(corpus)) != before
