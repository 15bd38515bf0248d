"""pipeline.tracking against a real SQLite MLflow store: parent/child runs, resume, FAILED marking."""

from __future__ import annotations

import mlflow
import pytest

from pipeline.tracking import TAG_FAILURE, PipelineTracker, browse_command, flatten, task_tags


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating its tables takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def tracker(store, tmp_path, request):
    return PipelineTracker.open(
        tracking_uri=store, experiment=request.node.name, artifact_location=str(tmp_path / "art"),
        run_name="r1", config_name="smoke", resume=False,
    )


def statuses(tracker: PipelineTracker) -> dict[str, str]:
    runs = tracker.client.search_runs([tracker.experiment_id])
    return {run.info.run_name: run.info.status for run in runs}


def test_flatten_gives_dotted_string_params():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": True, "e": None}) == {
        "a.b": "1", "a.c": "[1, 2]", "d": "true", "e": "null"
    }


def test_children_nest_under_the_parent_and_artifacts_go_next_to_the_store(tracker, tmp_path):
    children = tracker.child_runs("translation", ["softmax", "heat"])
    run = tracker.client.get_run(children["heat"].run_id)
    assert run.data.tags["mlflow.parentRunId"] == tracker.parent_run_id
    assert run.info.artifact_uri.startswith(str(tmp_path / "art"))
    tracker.log_params(children["heat"].run_id, {"variant.rank": "8"})
    tracker.log_params(children["heat"].run_id, {"variant.rank": "8"})  # resumed: same value is fine
    assert tracker.client.get_run(children["heat"].run_id).data.params == {"variant.rank": "8"}


def test_a_failure_marks_parent_and_unfinished_children_failed_and_keeps_finished_ones(tracker):
    children = tracker.child_runs("translation", ["softmax", "heat"])
    tracker.finish(children["softmax"].run_id)
    with pytest.raises(KeyboardInterrupt):
        with tracker.failed_on_error():
            raise KeyboardInterrupt
    assert statuses(tracker) == {
        "r1": "FAILED", "translation/heat": "FAILED", "translation/softmax": "FINISHED"
    }
    parent = tracker.client.get_run(tracker.parent_run_id)
    assert parent.data.tags[TAG_FAILURE].startswith("KeyboardInterrupt: interrupted (Ctrl-C")
    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/failure.txt")
    assert "KeyboardInterrupt" in text


def test_resume_reopens_the_same_parent_and_children(tracker, request):
    children = tracker.child_runs("classification", ["heat"])
    with pytest.raises(RuntimeError):
        with tracker.failed_on_error():
            raise RuntimeError("worker died")
    resumed = PipelineTracker.open(
        tracking_uri=tracker.tracking_uri, experiment=request.node.name, artifact_location=None,
        run_name="r1", config_name="smoke", resume=True,
    )
    assert resumed.parent_run_id == tracker.parent_run_id
    again = resumed.child_runs("classification", ["heat", "taylor"])
    assert again["heat"].run_id == children["heat"].run_id
    assert statuses(resumed) == {
        "r1": "RUNNING", "classification/heat": "RUNNING", "classification/taylor": "RUNNING"
    }


def test_resume_without_an_earlier_parent_starts_a_new_one(tracker, request):
    other = PipelineTracker.open(
        tracking_uri=tracker.tracking_uri, experiment=request.node.name, artifact_location=None,
        run_name="r2", config_name="smoke", resume=True,
    )
    assert other.parent_run_id != tracker.parent_run_id


def test_browse_command():
    assert browse_command("sqlite:////x/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////x/mlflow.db"
    assert "http://127.0.0.1:5000" in browse_command("http://127.0.0.1:5000")


def test_trials_get_their_own_child_runs_and_reopen_them(tracker):
    plain = tracker.child_runs("translation", ["heat"])
    first = tracker.child_runs("translation", ["heat"], trial="rank4")
    second = tracker.child_runs("translation", ["heat"], trial="rank8")
    ids = {plain["heat"].run_id, first["heat"].run_id, second["heat"].run_id}
    assert len(ids) == 3  # one run per (task, variant, trial)
    run = tracker.client.get_run(second["heat"].run_id)
    assert run.info.run_name == "translation/heat/rank8"
    assert run.data.tags["heat.trial"] == "rank8"
    tracker.finish(first["heat"].run_id)
    again = tracker.child_runs("translation", ["heat"], trial="rank4")  # a resumed trial
    assert again["heat"].run_id == first["heat"].run_id
    assert tracker.client.get_run(first["heat"].run_id).info.status == "RUNNING"
    assert tracker.child_runs("translation", ["heat"])["heat"].run_id == plain["heat"].run_id


def test_extra_tags_go_on_every_child_run_beside_its_own_variant(tracker):
    tags = task_tags("translation", "builtin:toy_translation")
    children = tracker.child_runs("translation", ["softmax", "heat", "taylor"], tags=tags)
    for variant, child in children.items():
        run = tracker.client.get_run(child.run_id)
        assert run.data.tags["heat.variant"] == variant
        assert run.data.tags["heat.dataset"] == "builtin:toy_translation"
        assert run.data.tags["heat.kind"] == "translation"
    again = tracker.child_runs("translation", ["softmax", "heat", "taylor"], tags=tags)
    assert {v: c.run_id for v, c in again.items()} == {v: c.run_id for v, c in children.items()}
