"""What a researcher sees after `heat-pipeline smoke` (the shared smoke run, `tests/smoke_run.py`):
a terminal of the pipeline's own lines with training progress, and MLflow runs made for
comparing: each child run's own duration, the final scores under clear names, the attention each
site ran, the summary on the parent run.

The line budget: the smoke run prints about 45 stage and data lines, 18 progress lines per
translation variant (a line per 25 of 400 steps, one at the start and one at the end) and 14 per
classification variant, 12 score lines and a 25-line summary: about 290. 320 leaves room for a
warning or two and fails when the libraries' chatter (1,059 lines before it was silenced) or a
per-step line comes back.
"""

from __future__ import annotations

import re

import mlflow
import pytest
from smoke_run import SMOKE_TIMEOUT_S, tracked_runs

# The first test to ask for the shared smoke run pays for it (its setup counts against the
# test's time limit): the run takes 7-15 minutes on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(SMOKE_TIMEOUT_S)]

LINE_BUDGET = 320
# What the libraries print when their output reaches the console (measured before the console
# was quieted: Ray Train's per-rank reports and checkpoint lines, Ray's placement-group
# warnings, Ray Data's progress, DeepSpeed's banner, MLflow's migrations, Ray's own start-up).
NOISE = re.compile(
    r"TrainingReport\(|Checkpoint successfully created|PlacementGroupCleaner|RayTrainWorker|"
    r"\(pid=|logging_progress|Total Progress|\[deepspeed\]|DeepSpeed info|ds_accelerator|"
    r"mlflow\.store\.db|alembic|Started a local Ray instance|authentication_token_setup|"
    r"Traceback|Running Dataset|Execution plan"
)
PROGRESS = re.compile(r"^\d\d:\d\d:\d\d (translation|classification): (\w+) \((\d)/6\) step "
                      r"(\d+)/(\d+)  loss \d+\.\d{3}  [\d,]+ tok/s  ETA \d+:\d\d$")


def console_lines(smoke) -> list[str]:
    return (smoke.result.stderr + smoke.result.stdout).splitlines()


def test_the_terminal_shows_the_pipelines_lines_only_within_the_budget(smoke):
    lines = console_lines(smoke)
    noisy = [line for line in lines if NOISE.search(line)]
    assert not noisy, noisy[:10]
    assert len(lines) <= LINE_BUDGET, f"{len(lines)} lines:\n" + "\n".join(lines)
    repeats = {line for line in lines if line.strip() and lines.count(line) > 1
               and not set(line) <= set("- ")}
    assert not repeats, sorted(repeats)[:10]
    assert re.search(r"resolved config \S+/config\.yaml, log \S+/pipeline\.log", smoke.result.stderr)


def test_training_progress_reaches_the_driver_from_rank_0(smoke):
    progress = [m.groups() for line in console_lines(smoke) if (m := PROGRESS.match(line))]
    for task, max_steps in (("translation", 400), ("classification", 300)):
        mine = [p for p in progress if p[0] == task]
        assert {p[1] for p in mine} == {"softmax", "linformer", "nystrom", "hadamard", "heat",
                                        "taylor"}
        assert len(mine) == 6 * max_steps // 25, task  # one per log_every, from one rank only
        assert {int(p[4]) for p in mine} == {max_steps}
    assert re.search(r"translation: heat \(5/6\): 400 steps in [\d.]+ s, best val loss",
                     smoke.result.stderr)


def test_the_libraries_output_is_kept_in_the_run_folders_log(smoke):
    log = smoke.cwd / "runs" / "pipeline-runs" / smoke.run_name / "pipeline.log"
    text = log.read_text()
    # the quieted lines are not lost: Ray's start-up, Ray Data's executor, MLflow's migrations
    for line in ("Started a local Ray instance", "Execution plan of Dataset",
                 "Creating initial MLflow database tables"):
        assert line in text, line
    assert "translation: train: finished in" in text


def test_child_runs_are_made_for_comparison(smoke):
    runs = tracked_runs(smoke.tracking_uri, smoke.run_name)
    parent = runs.pop(smoke.run_name)
    durations = {name: run.info.end_time - run.info.start_time for name, run in runs.items()}
    assert len(set(durations.values())) == len(durations), durations  # each its own
    for name, run in runs.items():
        task, variant = name.split("/")
        scores = ("bleu", "chrf") if task == "translation" else ("accuracy", "f1")
        metrics = run.data.metrics
        assert {f"test/{s}" for s in scores} <= set(metrics), (name, sorted(metrics))
        assert {"tokens_per_s", "peak_mem_mb", "train_wall_s"} <= set(metrics)
        # the summary's mean throughput, not the last interval's
        assert metrics["tokens_per_s"] == pytest.approx(
            float(parent.data.metrics[f"{task}/{variant}/tokens_per_s"]))
        assert run.data.tags["heat.task"] == task and run.data.tags["heat.variant"] == variant
        for score in scores:
            assert parent.data.metrics[f"{task}/{variant}/test/{score}"] == metrics[f"test/{score}"]
    params = runs["translation/nystrom"].data.params
    assert params["attention_ran.encoder_self"].startswith("nystrom landmarks=8")
    assert params["attention_ran.decoder_self"] == "softmax (fallback from nystrom)"
    assert params["attention_ran.cross"] == "softmax (fallback from nystrom)"
    assert runs["translation/linformer"].data.params["attention_ran.decoder_self"] == "softmax"
    assert set(runs["classification/heat"].data.params) >= {"attention_ran.encoder_self"}


def test_hypotheses_sit_beside_their_sources_and_references(smoke):
    runs = tracked_runs(smoke.tracking_uri, smoke.run_name)
    client = mlflow.MlflowClient(smoke.tracking_uri)
    run_id = runs["translation/softmax"].info.run_id
    target = smoke.cwd / "downloads"
    table, hypotheses = (client.download_artifacts(run_id, name, str(target))
                         for name in ("hypotheses.tsv", "hypotheses.txt"))
    with open(table, encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    assert rows[0] == ["source", "reference", "hypothesis"]
    with open(hypotheses, encoding="utf-8") as handle:
        outputs = handle.read().splitlines()
    assert len(rows) - 1 == len(outputs) > 100  # the test split's rows (at most 200 scored)
    assert all(len(row) == 3 and row[0] and row[1] for row in rows[1:])
    assert [row[2] for row in rows[1:]] == outputs
    parent = runs[smoke.run_name]
    assert "summary.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
