"""train_and_evaluate end to end on toy tasks: real Ray Train, DeepSpeed, MLflow and sacrebleu.

Each test trains tiny models for a few hundred steps on 2 CPUs; they are slow (30-90 s each).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch
from mlflow import MlflowClient

from heat.models import AttentionSites, Seq2SeqConfig, Seq2SeqTransformer
from pipeline.batching import load_rank_rows
from pipeline.config import EvalConfig
from pipeline.job import train_and_evaluate
from pipeline.stages.evaluate import detokenize, translate, translation_scores
from toy_tasks import (
    create_mlflow_runs,
    toy_job,
    write_classification,
    write_translation,
)

pytestmark = pytest.mark.slow

TRANSLATION_ROWS = {"train": 1500, "validation": 100, "test": 100}
STEP_METRICS = ("train/loss", "lr", "train/tokens_per_s", "val/loss", "peak_mem_mb")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def untrained_bleu(job, folder: Path) -> float:
    """BLEU of the same architecture with its initial weights, on the same test rows."""
    examples = load_rank_rows([pq.read_table(folder / "data" / "test.parquet")], "translation",
                              0, 1, keep_refs=True)
    torch.manual_seed(job.train.seed)
    model = Seq2SeqTransformer(job.model_config(job.variants[0]))
    hypotheses = translate(model, examples, EvalConfig(beam_size=2), torch.device("cpu"))
    return translation_scores(detokenize(job.tokenizer_model, hypotheses), examples.refs)["bleu"]


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_translation_variants_learn_and_are_tracked(ray_cluster, tmp_path: Path):
    write_translation(tmp_path / "data", TRANSLATION_ROWS)
    run_ids = create_mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts",
                                 ["softmax", "nystrom"])
    job = toy_job(tmp_path, "translation", run_ids, max_steps=200)

    results = train_and_evaluate(job)

    baseline = untrained_bleu(job, tmp_path)
    assert baseline < 5
    client = MlflowClient(job.tracking_uri)
    for name, result in results.items():
        assert result["bleu"] > baseline + 30, (name, result["bleu"])
        assert result["chrf"] > 50
        assert result["bleu_signature"].startswith("nrefs:1|")
        assert result["steps"] == 200 and result["tokens_per_s"] > 0
        assert result["peak_mem_mb"] > 0 and result["train_wall_s"] > 0
        assert result["resolved_attention"]["encoder_self"]["name"] == name
        hypotheses = Path(result["hypotheses_uri"]).read_text().splitlines()
        assert len(hypotheses) == TRANSLATION_ROWS["test"]

        run = client.get_run(run_ids[name])
        assert run.data.metrics["test/bleu"] == pytest.approx(result["bleu"])
        for key in STEP_METRICS:
            assert metric_steps(client, run.info.run_id, key)[-1] == 200, key
        assert metric_steps(client, run.info.run_id, "val/loss") == [50, 100, 150, 200]
        assert json.loads(run.data.tags["resolved_attention"]) == result["resolved_attention"]
        assert {"hypotheses.txt", "loss_curve.png", "best_checkpoint/model.pt",
                "best_checkpoint/model_config.json"} <= artifact_paths(client, run.info.run_id)

    # The best checkpoint rebuilds the model it came from.
    folder = Path(results["nystrom"]["checkpoint_uri"])
    raw = json.loads((folder / "model_config.json").read_text())
    assert raw.pop("class") == "Seq2SeqConfig"
    config = Seq2SeqConfig(**{**raw, "attention": AttentionSites.from_dict(raw["attention"])})
    Seq2SeqTransformer(config).load_state_dict(torch.load(folder / "model.pt"))


def test_classification_on_two_workers_with_zero2_and_bf16(ray_cluster, tmp_path: Path):
    write_classification(tmp_path / "data", {"train": 1200, "validation": 101, "test": 101})
    run_ids = create_mlflow_runs(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts",
                                 ["taylor"])
    job = toy_job(tmp_path, "classification", run_ids, num_workers=2, cpus_per_worker=0.5,
                  zero_stage=2, precision="bf16", tokens_per_batch=256, max_steps=120,
                  val_every=40, checkpoint_every=60, log_every=20, warmup_steps=10)

    result = train_and_evaluate(job)["taylor"]

    assert result["accuracy"] > 0.85 and result["f1"] > 0.85
    predictions = Path(result["hypotheses_uri"]).read_text().split()
    assert len(predictions) == 101  # both ranks' shares, gathered in order
    client = MlflowClient(job.tracking_uri)
    run = client.get_run(run_ids["taylor"])
    assert run.data.tags["world_size"] == "2"
    assert run.data.metrics["test/accuracy"] == pytest.approx(result["accuracy"])
    assert metric_steps(client, run_ids["taylor"], "train/loss") == [20, 40, 60, 80, 100, 120]


def _latest_checkpoint(storage: Path) -> dict:
    """Metrics of the run's latest registered checkpoint, from Ray Train's own record of it
    (a checkpoint folder can exist half-uploaded; the snapshot names only complete ones)."""
    try:
        snapshot = json.loads((storage / "toy" / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being rewritten
        return {}
    return (snapshot.get("latest_checkpoint_result") or {}).get("metrics", {})


def _wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the training process ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint inside the second variant in time"
        time.sleep(0.5)


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path: Path):
    write_translation(tmp_path / "data", TRANSLATION_ROWS)
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_ids = create_mlflow_runs(tracking_uri, tmp_path / "artifacts", ["softmax", "nystrom"])
    train = {"max_steps": 120, "checkpoint_every": 20, "val_every": 40, "log_every": 5}
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"folder": str(tmp_path), "task": "translation",
                                "run_ids": run_ids, "train": train}))
    command = [sys.executable, str(Path(__file__).parent / "toy_tasks.py"), str(spec)]

    def in_second_variant() -> bool:
        metrics = _latest_checkpoint(tmp_path / "storage")
        return metrics.get("variant") == "nystrom" and metrics.get("step", 0) >= 40

    # Its own session, so that killing the group takes the driver's Ray processes with it.
    first = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _wait_for(in_second_variant, first, timeout=600)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    resumed_at = _latest_checkpoint(tmp_path / "storage")["step"]
    assert not (tmp_path / "results.json").exists()

    subprocess.run(command, check=True, start_new_session=True, timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    results = json.loads((tmp_path / "results.json").read_text())
    assert [results[v]["steps"] for v in ("softmax", "nystrom")] == [120, 120]
    client = MlflowClient(tracking_uri)
    # The finished variant was skipped: each of its steps was logged once.
    softmax_steps = metric_steps(client, run_ids["softmax"], "train/loss")
    assert softmax_steps == list(range(5, 121, 5))
    # The interrupted one continued after its checkpoint instead of starting over, and the
    # steps it re-ran after the kill were not logged again: every step appears once.
    nystrom_steps = metric_steps(client, run_ids["nystrom"], "train/loss")
    counts = {step: nystrom_steps.count(step) for step in set(nystrom_steps)}
    assert set(counts) == set(range(5, 121, 5))
    assert all(counts[s] == 1 for s in range(5, resumed_at + 1, 5))
    assert max(counts.values()) == 1
    # The resumed variant learned: an untrained model's loss is about ln(vocabulary) = 3.8.
    assert results["nystrom"]["best_val_loss"] < 2.5


def test_workers_holding_every_cpu_is_refused_before_the_fit(ray_cluster, tmp_path: Path):
    from heat.validation import ConfigError

    write_classification(tmp_path / "data", {"train": 8, "validation": 2, "test": 2})
    job = toy_job(tmp_path, "classification", {"softmax": "unused"}, num_workers=2,
                  cpus_per_worker=1.0, tokens_per_batch=256)
    with pytest.raises(ConfigError, match="train.cpus_per_worker: 2 workers x 1.0 CPU"):
        train_and_evaluate(job)


def test_a_missing_split_fails_before_the_fit(ray_cluster, tmp_path: Path):
    write_classification(tmp_path / "data", {"train": 8, "validation": 2})  # no test split
    job = toy_job(tmp_path, "classification", {"softmax": "unused"}, tokens_per_batch=256)
    with pytest.raises(Exception, match="test.parquet"):
        train_and_evaluate(job)


def test_progress_lines_are_all_printed_but_a_failed_block_does_not_wait_for_them(
        ray_cluster, caplog):
    from pipeline.training.progress import progress_printer

    caplog.set_level("INFO", logger="pipeline.progress")
    with progress_printer("t") as sink:
        for i in range(5):
            sink.post(f"line {i}")
    assert [r.getMessage() for r in caplog.records] == [f"t: line {i}" for i in range(5)]

    # Workers still running after the driver was stopped post without pause: the block's
    # exception must not wait for a quiet queue (10 s of join timeout before this was fixed).
    posting = True

    def worker(sink) -> None:
        while posting:
            sink.post("step")
            time.sleep(0.01)

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with progress_printer("t") as sink:
            threading.Thread(target=worker, args=(sink,), daemon=True).start()
            time.sleep(1)
            raise KeyboardInterrupt
    stopped = time.monotonic() - start
    posting = False
    assert stopped < 4, f"the interrupted block took {stopped:.1f} s to return"
