"""What the bad-input suites (`tests/test_bad_input_*.py`) share: the CLI run as a user runs it,
the assertion every rejected input must pass, and a finished run that no failure may touch.

A rejected input must give exit code 2, one `heat-pipeline: ...` line on stderr that names the
key or file and says what was expected, no traceback anywhere in the output, and fail within a
time limit. A real process, not `main()` in-process: a traceback printed by a library's own
handler (Ray's, a thread's) only shows there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def error_line(self) -> str:
        """The last `heat-pipeline:` line of stderr (the CLI's own report), or ''."""
        lines = [line for line in self.stderr.splitlines() if line.startswith("heat-pipeline:")]
        return lines[-1] if lines else ""


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    return {**env, **extra}


def heat_pipeline(*args: str, cwd: Path | str = ROOT, timeout: float = 600,
                  env: dict[str, str] | None = None) -> Outcome:
    """Run `heat-pipeline ARGS` in a fresh process."""
    script = Path(sys.executable).parent / "heat-pipeline"
    command = [str(script), *args] if script.exists() else [sys.executable, "-m", "pipeline",
                                                             *args]
    start = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env or environment(), capture_output=True,
                          text=True, timeout=timeout)
    return Outcome(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def in_process(*args: str, cwd: Path | str = ROOT, env: dict[str, str] | None = None) -> Outcome:
    """`heat-pipeline ARGS` through `pipeline.cli.main` in this process, its output captured:
    for the many cases refused before any work (milliseconds instead of the seconds a fresh
    interpreter spends importing torch). Each suite also runs its cases' kind in a real process
    (`heat_pipeline`), where a traceback printed by any handler would show."""
    import contextlib
    import io
    import logging

    from pipeline.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = list(logging.getLogger().handlers)
    start = time.monotonic()
    try:
        os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit_:  # argparse's own errors
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for handler in logging.getLogger().handlers[:]:
            if handler not in handlers:  # main() configures logging onto the captured stderr
                logging.getLogger().removeHandler(handler)
    return Outcome(code, stdout.getvalue(), stderr.getvalue(), time.monotonic() - start)


def assert_rejected(outcome: Outcome, *named: str, within_s: float = 30.0) -> None:
    """Exit 2, one clear line naming every string of `named`, no traceback, in time."""
    shown = f"stdout:\n{outcome.stdout[-3000:]}\nstderr:\n{outcome.stderr[-3000:]}"
    assert outcome.returncode == 2, shown
    assert "Traceback" not in outcome.stdout + outcome.stderr, shown
    line = outcome.error_line
    assert line, shown
    for name in named:
        assert name in line, f"{name!r} not in the error line {line!r}"
    assert outcome.seconds < within_s, f"took {outcome.seconds:.1f} s (limit {within_s} s)"


# ---------------------------------------------------------------------------------------------
# A tiny real config and a finished run of it


def write_corpus(path: Path, rows: int = 60) -> Path:
    """Distinct sentence pairs (JSONL), the target the source upper-cased."""
    words = "alpha beta gamma delta epsilon zeta eta theta".split()
    lines = []
    for i in range(rows):
        source = " ".join(words[(i + j) % 8] for j in range(3)) + f" {i}"
        lines.append(json.dumps({"translation": {"en": source, "fr": source.upper()}}) + "\n")
    path.write_text("".join(lines))
    return path


def tiny_config(folder: Path, corpus: Path | None = None, **changes: Any) -> dict[str, Any]:
    """A one-task local-file translation config, cheap enough to run for real; `changes` are
    top-level sections merged over it."""
    corpus = corpus or write_corpus(folder / "train.jsonl")
    config: dict[str, Any] = {
        "name": "tiny",
        "storage": {"root": str(folder / "runs")},
        "ray": {"address": "local", "num_cpus": 2},
        "variants": {"softmax": {"name": "softmax"}},
        "tasks": {"translation": {
            "data": {"task": "translation", "source": "local", "files": {"train": str(corpus)},
                     "validation_fraction": 0.2, "test_fraction": 0.2},
            "tokenizer": {"vocab_size": 48},
            "model": {"d_model": 16, "num_heads": 2, "num_encoder_layers": 1,
                      "num_decoder_layers": 1, "ffn_dim": 32, "max_length": 16},
            "train": {"num_workers": 1, "max_steps": 4, "warmup_steps": 1, "val_every": 2,
                      "tokens_per_batch": 64, "precision": "fp32", "log_every": 1},
            "eval": {"beam_size": 1},
        }},
    }
    for key, value in changes.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class FinishedRun:
    """A finished run of `tiny_config` in `folder` (storage root `folder/runs`, MLflow in
    `folder/runs/mlflow.db`), and the config file that made it."""

    folder: Path
    config: Path

    @property
    def root(self) -> Path:
        return self.folder / "runs"

    def snapshot(self) -> dict[str, Any]:
        """Every file under the storage root but the MLflow database (size, mtime), and every
        tracked run (status, params, metrics, tags)."""
        import mlflow

        files = {str(p.relative_to(self.root)): (p.stat().st_size, p.stat().st_mtime_ns)
                 for p in self.root.rglob("*") if p.is_file() and p.name != "mlflow.db"}
        client = mlflow.MlflowClient(f"sqlite:///{self.root}/mlflow.db")
        runs = {}
        for experiment in client.search_experiments():
            for run in client.search_runs([experiment.experiment_id]):
                runs[run.info.run_id] = (run.info.status, run.data.params, run.data.metrics,
                                         run.data.tags)
        return {"files": files, "runs": runs}

    def assert_untouched(self, before: dict[str, Any]) -> None:
        """Nothing the finished run wrote has changed (new files and runs may exist)."""
        after = self.snapshot()
        changed = [f for f, stat in before["files"].items() if after["files"].get(f) != stat]
        assert not changed, f"files of the finished run changed: {changed[:10]}"
        runs = [r for r, state in before["runs"].items() if after["runs"].get(r) != state]
        assert not runs, f"tracked runs changed: {runs}"


def finish_a_run(folder: Path) -> FinishedRun:
    folder.mkdir(parents=True, exist_ok=True)
    config = write_yaml(folder / "tiny.yaml", tiny_config(folder))
    outcome = heat_pipeline("run", str(config), "--run-name", "finished", cwd=folder)
    assert outcome.returncode == 0, outcome.stderr[-5000:]
    return FinishedRun(folder, config)
