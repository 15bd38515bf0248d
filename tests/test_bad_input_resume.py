"""Resume state a user (or a kill) can damage, and the command line around `--resume`
(`pipeline.runfolder`, `pipeline.training.checkpoints`, `tests/bad_input.py`).

A driver killed in the second between the workers uploading a checkpoint and Ray Train's
controller registering it used to leave a complete checkpoint that the resumed run ignored (the
variant started again from step 0) and that was never removed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bad_input import (
    assert_rejected,
    environment,
    heat_pipeline,
    in_process,
    tiny_config,
    write_yaml,
)
from pipeline.training.checkpoints import (
    checkpoint_folders,
    is_complete,
    prune_unregistered,
    resume_from,
    write_manifest,
)

LIMIT_S = 20


# ---------------------------------------------------------------------------------------------
# Damaged run folders: one line, exit 2


def started_run(folder: Path, name: str = "first") -> Path:
    """The config and the run folder of a run that was started (and killed) before."""
    import yaml

    from pipeline.config import load_config

    config = write_yaml(folder / "tiny.yaml", tiny_config(folder))
    runs = folder / "runs" / "pipeline-runs"
    runs.mkdir(parents=True)
    resolved = load_config(str(config)).to_dict()
    (runs / name).mkdir()
    (runs / name / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    (runs / "tiny.latest").write_text(name)
    return config


def damaged_pointer(folder: Path) -> tuple[list[str], list[str]]:
    config = started_run(folder)
    (folder / "runs" / "pipeline-runs" / "tiny.latest").write_bytes(b"\x00\xff../../etc\n")
    return ["run", str(config), "--resume"], ["--resume", "tiny.latest", "--run-name"]


def pointer_to_a_missing_run(folder: Path) -> tuple[list[str], list[str]]:
    config = started_run(folder)
    (folder / "runs" / "pipeline-runs" / "tiny.latest").write_text("gone")
    return ["run", str(config), "--resume"], ["--resume", "no run 'gone'"]


def damaged_recorded_config(folder: Path) -> tuple[list[str], list[str]]:
    config = started_run(folder)
    (folder / "runs" / "pipeline-runs" / "first" / "config.yaml").write_text("name: [\n")
    return ["run", str(config), "--resume"], ["--resume", "config.yaml", "cannot read"]


def recorded_config_not_a_mapping(folder: Path) -> tuple[list[str], list[str]]:
    config = started_run(folder)
    (folder / "runs" / "pipeline-runs" / "first" / "config.yaml").write_text("- a\n- b\n")
    return ["run", str(config), "--resume"], ["--resume", "does not hold the run's config"]


def override_after_resume_that_differs(folder: Path) -> tuple[list[str], list[str]]:
    """Overrides after --resume are read as overrides (they used to be refused as unknown
    arguments): this one changes the config, so resuming refuses, naming the key."""
    config = started_run(folder)
    return (["run", str(config), "--resume", "tasks.translation.train.max_steps=9"],
            ["--resume", "tasks.translation.train.max_steps"])


def override_after_run_name(folder: Path) -> tuple[list[str], list[str]]:
    config = write_yaml(folder / "tiny.yaml", tiny_config(folder))
    return (["run", str(config), "--run-name", "x", "tasks.translation.train.max_steps=0"],
            ["tasks.translation.train.max_steps", "integer >= 1"])


def resume_an_unknown_run(folder: Path) -> tuple[list[str], list[str]]:
    config = started_run(folder)
    return ["run", str(config), "--resume", "--run-name", "nope"], ["--resume", "no run 'nope'"]


def a_very_long_run_name(folder: Path) -> tuple[list[str], list[str]]:
    config = write_yaml(folder / "tiny.yaml", tiny_config(folder))
    return ["run", str(config), "--run-name", "r" * 300], ["--run-name", "at most 100"]


def a_run_name_with_a_slash(folder: Path) -> tuple[list[str], list[str]]:
    config = write_yaml(folder / "tiny.yaml", tiny_config(folder))
    return ["run", str(config), "--run-name", "../escape"], ["--run-name", "must match"]


CASES = [damaged_pointer, pointer_to_a_missing_run, damaged_recorded_config,
         recorded_config_not_a_mapping, override_after_resume_that_differs,
         override_after_run_name, resume_an_unknown_run, a_very_long_run_name,
         a_run_name_with_a_slash]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_damaged_resume_state_is_one_line(tmp_path, case):
    args, named = case(tmp_path)
    before = sorted(p for p in tmp_path.rglob("*"))
    assert_rejected(in_process(*args, cwd=tmp_path), *named, within_s=LIMIT_S)
    assert sorted(p for p in tmp_path.rglob("*")) == before, "nothing may be written"


# ---------------------------------------------------------------------------------------------
# Which checkpoint folder a resumed run starts from (no Ray needed)


def checkpoint(run: Path, name: str, writers: int = 2, files: int = 2) -> Path:
    folder = run / f"checkpoint_2026-12-01_10-00-{name}"
    for rank in range(writers):
        (folder / "ranks").mkdir(parents=True, exist_ok=True)
        (folder / "ranks" / f"rank_{rank}.pt").write_bytes(b"x" * (100 + rank))
    (folder / "progress.json").write_text("{}")
    for rank in range(writers):
        write_manifest(folder, rank, writers)
    return folder


class Registered:
    """What Ray Train's `get_checkpoint()` hands a worker (only `.path` is read)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)


def test_a_checkpoint_is_complete_only_with_every_writer_and_every_file(tmp_path):
    whole = checkpoint(tmp_path, "01.000000")
    assert is_complete(str(whole))
    truncated = checkpoint(tmp_path, "02.000000")
    (truncated / "ranks" / "rank_1.pt").write_bytes(b"x")
    assert not is_complete(str(truncated))
    missing_rank = checkpoint(tmp_path, "03.000000")
    (missing_rank / "manifests" / "rank_1.json").unlink()
    assert not is_complete(str(missing_rank))
    no_manifest = checkpoint(tmp_path, "04.000000")
    for manifest in (no_manifest / "manifests").iterdir():
        manifest.unlink()
    assert not is_complete(str(no_manifest))


def test_resume_takes_the_newest_complete_folder_registered_or_not(tmp_path):
    older = checkpoint(tmp_path, "01.000000")
    newer = checkpoint(tmp_path, "02.000000")
    newest_but_torn = checkpoint(tmp_path, "03.000000")
    (newest_but_torn / "progress.json").write_text("")
    chosen = resume_from(Registered(older), str(tmp_path))
    assert Path(chosen.path).name == newer.name
    registered = Registered(newer)
    assert resume_from(registered, str(tmp_path)) is registered
    assert Path(resume_from(None, str(tmp_path)).path).name == newer.name
    assert resume_from(None, str(tmp_path / "no-such-run")) is None


def test_folders_ray_does_not_keep_are_removed(tmp_path):
    kept = checkpoint(tmp_path, "01.000000")
    checkpoint(tmp_path, "02.000000")
    checkpoint(tmp_path, "03.000000")
    (tmp_path / "results").mkdir()
    removed = prune_unregistered(str(tmp_path), [Registered(kept), None])
    assert [Path(uri).name for uri in removed] == [
        "checkpoint_2026-12-01_10-00-02.000000", "checkpoint_2026-12-01_10-00-03.000000"]
    assert [Path(uri).name for uri in checkpoint_folders(str(tmp_path))] == [kept.name]
    assert (tmp_path / "results").is_dir()


# ---------------------------------------------------------------------------------------------
# The real thing: killed right after its first checkpoint, before Ray Train registered it


@pytest.mark.slow
def test_a_run_killed_before_its_checkpoint_was_registered_resumes_from_it(tmp_path):
    config = tiny_config(tmp_path)
    config["tasks"]["translation"]["train"].update(max_steps=240, val_every=20,
                                                   checkpoint_every=40)
    path = write_yaml(tmp_path / "tiny.yaml", config)
    script = Path(sys.executable).parent / "heat-pipeline"
    first = subprocess.Popen([str(script), "run", str(path), "--run-name", "r"], cwd=tmp_path,
                             env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    train = tmp_path / "runs" / "train" / "r"
    while not list(train.glob("*/checkpoint_*/manifests/rank_0.json")):
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=300)
    assert first.returncode == 130
    (folder,) = train.iterdir()
    # What the kill leaves when it lands before the controller's registration.
    (folder / "checkpoint_manager_snapshot.json").unlink(missing_ok=True)
    # The kill's shutdown can take long enough (a loaded machine) for the worker to write a
    # second checkpoint, or to start one: the newest whose writer finished is the one resumed.
    # (Before the progress printer stopped waiting for a quiet queue, CI's loaded machine let
    # the worker finish all 120 steps of this test's former length during the shutdown.)
    orphans = sorted(folder.glob("checkpoint_*"))
    finished = [o for o in orphans if (o / "manifests" / "rank_0.json").is_file()]
    orphan = finished[-1]
    step = json.loads((orphan / "progress.json").read_text())["current"]["step"]

    resumed = heat_pipeline("run", str(path), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert f"resuming from {orphan.name}" in resumed.stderr
    assert not any(o.exists() for o in orphans), "the killed attempt's folders are removed"
    assert step in (40, 80, 120, 160, 200)
    done = json.loads((folder / "_SUCCESS").read_text())["result"]["softmax"]
    assert done["steps"] == 240
