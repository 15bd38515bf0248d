"""`heat-pipeline run` / `smoke` on bad input: one clear line on stderr, exit code 2, no traceback.

Errors caught while the config loads run in-process (milliseconds each). Errors that only show
once work has started (a vocabulary the corpus cannot fill, a corpus that cleaning empties) run
the real pipeline on a shared local Ray instance and must leave the MLflow parent run FAILED with
the reason.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import ray

import pipeline.run  # noqa: F401  (see below)
from bad_input import tiny_config, write_yaml
from pipeline.cli import main

# Ray (re)configures its log handlers as its modules are imported, binding them to the sys.stderr
# of that moment. Importing everything `main` imports here, before any test's capsys, keeps them
# off a capsys stream that is closed by the time a later test logs through them.
from pipeline.tracking import TAG_FAILURE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(autouse=True)
def fresh_logging():
    """main() configures logging onto the stderr of its first call; capsys swaps stderr per
    test, so drop the handlers main() added once the test is over."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)


def write_corpus(path: Path, rows: int = 60, length: int = 3) -> Path:
    """Distinct sentence pairs: `length` words and the row number, the target upper-cased."""
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    lines = []
    for i in range(rows):
        source = " ".join(words[(i + j) % 8] for j in range(length)) + f" {i}"
        lines.append(f'{{"translation": {{"en": "{source}", "fr": "{source.upper()}"}}}}\n')
    path.write_text("".join(lines))
    return path


def write_config(tmp_path: Path, corpus: Path | None = None) -> Path:
    """A one-task local-file config (`bad_input.tiny_config` with a heat variant too), cheap
    enough to run for real."""
    corpus = corpus or write_corpus(tmp_path / "train.jsonl")
    config = tiny_config(tmp_path, corpus, variants={"heat": {"name": "heat", "rank": 4}})
    return write_yaml(tmp_path / "tiny.yaml", config)


def config_error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("heat-pipeline:")]
    assert len(lines) == 1, captured.err
    return lines[0].removeprefix("heat-pipeline: config error: ")


@pytest.mark.parametrize(("overrides", "expected"), [
    (["tasks.translation.train.max_stpes=3"],
     "tasks.translation.train.max_stpes: unknown key; allowed keys: num_workers, use_gpu"),
    (["tasks.translation.train.max_steps=many"],
     "tasks.translation.train.max_steps: must be an integer, got 'many'"),
    (["tasks.translation.model.dropout=1.5"],
     "tasks.translation.model.dropout: must be a number in [0, 1), got 1.5"),
    (["variants.heat.name=heet"],
     "variants.heat.name: unknown variant 'heet'; allowed: hadamard, heat, linformer"),
    (["tasks.translation.train.max_steps"],
     "overrides: expected KEY.PATH=VALUE (for example train.max_steps=200), got "
     "'tasks.translation.train.max_steps'"),
    (["tasks.translation.data.files.train=/no/such/corpus.jsonl"],
     "tasks.translation.data.files.train: file not found: /no/such/corpus.jsonl"),
    (["tasks.translation.tokenizer=no_such_vocabulary"],
     "tasks.translation.tokenizer: no tokenizer spec 'no_such_vocabulary'"),
    (["tasks.translation.variants=[softmax, performer]"],
     "tasks.translation.variants: unknown variant 'performer'; defined in variants: softmax, heat"),
    (["tasks.translation.train.num_workers=4"],
     "tasks.translation.train.cpus_per_worker: 4 workers x cpus_per_worker=1.0 need 4 CPUs"),
])
def test_bad_config_values_exit_2_with_the_key(tmp_path, capsys, overrides, expected):
    assert config_error(capsys, "run", str(write_config(tmp_path)), *overrides).startswith(expected)


@pytest.mark.parametrize(("content", "expected"), [
    ("", "tasks.translation.data.files.train: {path} is empty: no rows to read"),
    ("{not json\nnor this\n", "tasks.translation.data.files.train: {path}: none of the first 2 "
                              "rows matches the translation schema"),
    ('{"text": "great film", "label": 1}\n',
     "tasks.translation.data.files.train: {path}: none of the first 1 rows matches the "
     "translation schema; expected {{\"translation\": {{\"en\": <text>, \"fr\": <text>}}}}"),
])
def test_empty_malformed_and_wrong_schema_corpora_exit_2(tmp_path, capsys, content, expected):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(content)
    message = config_error(capsys, "run", str(write_config(tmp_path, corpus)))
    assert message.startswith(expected.format(path=corpus))


def test_missing_config_file_exits_2(capsys):
    assert config_error(capsys, "run", "/no/such/config.yaml") == (
        "config: file not found: /no/such/config.yaml")


def test_resume_without_an_earlier_run_exits_2(tmp_path, capsys):
    message = config_error(capsys, "run", str(write_config(tmp_path)), "--resume")
    assert message.startswith("--resume: no earlier run of config 'tiny'")


def test_smoke_rejects_bad_overrides_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert config_error(capsys, "smoke", "defaults.train.lr=0").startswith(
        "tasks.translation.train.lr: must be a number in (0.0, 1.0], got 0")


def test_exit_code_2_and_no_traceback_from_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(write_config(tmp_path)),
         "variants.heat.rank=0"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "heat-pipeline: config error: variants.heat.rank: must be an integer in [1, 16], got 0")
    assert "Traceback" not in result.stderr


def test_cli_module_imports_no_orchestration_library():
    """demo-attention and bench must start fast: ray, mlflow and deepspeed load on demand."""
    code = ("import sys, pipeline.cli\n"
            "print(sorted(m for m in ('ray', 'mlflow', 'deepspeed') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# Errors after work started: the MLflow parent run ends FAILED with the reason


@pytest.fixture(scope="module")
def shared_ray():
    """One local Ray for the runs below; the pipeline uses an initialised Ray as it is."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def parent_run(root: Path, experiment: str = "tiny"):
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlflow.db")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id], "tags.`heat.config` = 'tiny'")
    assert len(runs) == 1
    return runs[0]


@pytest.mark.slow
def test_vocabulary_larger_than_the_corpus_allows_fails_in_tokenize(tmp_path, capsys, shared_ray):
    message = config_error(capsys, "run", str(write_config(tmp_path)),
                           "tasks.translation.tokenizer={vocab_size: 5000}")
    assert message.startswith("tasks.translation.tokenizer.vocab_size: 5000 is more than this "
                              "corpus allows")
    assert "set tokenizer.vocab_size <= " in message
    run = parent_run(tmp_path / "runs")
    assert run.info.status == "FAILED"
    assert run.data.tags[TAG_FAILURE] == f"ConfigError: {message}"
    prepared = list((tmp_path / "runs" / "prepare").glob("*/_SUCCESS"))
    assert len(prepared) == 1  # the finished stage's output is kept


@pytest.mark.slow
def test_corpus_emptied_by_cleaning_fails_in_prepare(tmp_path, capsys, shared_ray):
    corpus = write_corpus(tmp_path / "long.jsonl", length=40)
    message = config_error(capsys, "run", str(write_config(tmp_path, corpus)),
                           "tasks.translation.data.max_chars=20")
    assert message.startswith("tasks.translation.data.files.train: empty corpus: no train rows "
                              "left after cleaning")
    run = parent_run(tmp_path / "runs")
    assert run.info.status == "FAILED"
    assert "empty corpus" in run.data.tags[TAG_FAILURE]


@pytest.mark.slow
def test_resume_reuses_the_parent_run_and_finished_stages_and_checks_the_config(
        tmp_path, capsys, shared_ray, caplog):
    config = str(write_config(tmp_path))
    too_large = "tasks.translation.tokenizer={vocab_size: 5000}"
    config_error(capsys, "run", config, too_large, "--run-name", "first")
    failed = parent_run(tmp_path / "runs")

    assert config_error(capsys, "run", config, too_large, "--run-name", "first") == (
        f"--run-name: run 'first' already exists under {tmp_path}/runs: continue it with "
        f"--resume, or choose another name")
    assert config_error(capsys, "run", config, "--resume").startswith(
        "--resume: the config differs from run 'first''s at tasks.translation.tokenizer.vocab_size")

    with caplog.at_level(logging.INFO, logger="pipeline.run"):
        config_error(capsys, "run", config, too_large, "--resume")  # the latest run: 'first'
    assert "translation: prepare: skipped, finished earlier" in caplog.text
    resumed = parent_run(tmp_path / "runs")
    assert resumed.info.run_id == failed.info.run_id and resumed.info.status == "FAILED"


def registered_checkpoint(train: Path) -> bool:
    """Whether Ray Train has registered a checkpoint (a checkpoint folder alone may still be
    uploading; only the run's snapshot names the ones a resumed run will see)."""
    for snapshot in train.glob("*/*/checkpoint_manager_snapshot.json"):
        try:
            if json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except json.JSONDecodeError:  # being rewritten
            pass
    return False


@pytest.mark.slow
def test_sigterm_during_training_fails_the_runs_and_resume_finishes_them(tmp_path):
    """`ray job stop` sends SIGTERM: the MLflow runs must end FAILED with the reason, and
    `--resume` must finish the same runs from the checkpoint instead of starting over."""
    config = str(write_config(tmp_path))
    longer = ["tasks.translation.train.max_steps=60", "tasks.translation.train.val_every=30",
              "tasks.translation.train.checkpoint_every=10", "tasks.translation.variants=[heat]"]
    command = [sys.executable, "-m", "pipeline", "run", config, *longer]
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        deadline = time.monotonic() + 300
        while not registered_checkpoint(tmp_path / "runs" / "train"):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiment = client.get_experiment_by_name("tiny").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert {name: run.info.status for name, run in runs.items() if name.startswith("translation")} \
        == {"translation/heat": "FAILED"}
    parent = next(run for name, run in runs.items() if name.startswith("tiny-"))
    assert parent.info.status == "FAILED"
    assert parent.data.tags[TAG_FAILURE].startswith("KeyboardInterrupt")

    result = subprocess.run([*command, "--resume"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "translation: prepare: skipped, finished earlier" in result.stderr
    runs = {r.info.run_name: r for r in client.search_runs([experiment])}
    assert {name: run.info.status for name, run in runs.items()} == {
        parent.info.run_name: "FINISHED", "translation/heat": "FINISHED"}
    steps = [m.step for m in client.get_metric_history(runs["translation/heat"].info.run_id,
                                                       "train/loss")]
    assert max(steps) == 60
    assert steps.count(1) == 1  # continued from the checkpoint, not trained again from step 1
