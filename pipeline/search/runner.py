"""`heat-pipeline tune`: every search of a search config on Ray Tune, each trial its own Ray Train
+ DeepSpeed run, all tracked under one MLflow parent run.

Reads as: resolve the run name (or the run to resume), record the config, open the parent run;
in one Ray session run the shared stages (prepare, tokenize: cached, so every trial and every
later search reuses them), then each search's `Tuner`; tag each search's best trial; write the
summary. Storage under `storage.root`:

    tune/<run>/<search>/                  Ray Tune's experiment (its state: what --resume reads)
    tune/<run>/<search>/trials/<trial>/   one trial's Ray Train run: checkpoints, best weights
    pipeline-runs/<run>/                  the resolved config and summary.txt

`--resume` restores each search with `Tuner.restore`: finished trials are neither rerun nor
tracked twice, an interrupted trial continues from its Ray Train checkpoint in the same MLflow
child run, and a search that never started starts.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from pipeline import console, storage
from pipeline.config.tune import TuneConfig
from pipeline.run import (
    RunResult,
    open_tracker,
    ray_session,
    run_shared_stages,
)
from pipeline.runfolder import (
    record_run,
    resolve_run_name,
    run_path,
    sigterm_as_interrupt,
    traceback_kept,
)
from pipeline.search import slots, space
from pipeline.services import probe_services
from pipeline.search.trial import TrialSetup, run_trial, trial_label
from pipeline.stages import StageContext
from pipeline.tracking import TAG_BEST_TRIAL, TAG_PARENT, TAG_TRIAL, PipelineTracker, flatten

logger = logging.getLogger(__name__)

TUNE_FOLDER = "tune"
TRIAL_MEMORY = 64 * 2**20
"""Bytes of Ray memory each trial's own process reserves."""


@dataclass
class TrialOutcome:
    trial_id: str
    label: str
    status: str
    """finished, stopped early, or failed."""
    metrics: dict[str, float]


@dataclass
class SearchResult(RunResult):
    """What a search did: each search's trials, its best one."""

    searches: dict[str, list[TrialOutcome]] = field(default_factory=dict)
    best: dict[str, str] = field(default_factory=dict)
    """Search -> its best trial id (lowest best validation loss among finished trials)."""
    kinds: dict[str, str] = field(default_factory=dict)
    """Search -> its task's kind."""


def run_searches(config: TuneConfig, *, run_name: str | None = None,
                 resume: bool = False) -> SearchResult:
    """Run (or with `resume` continue) every search; the trials' outcomes and the best ones.

    A failure or an interrupt marks the parent run and its unfinished trials FAILED and
    re-raises; Tune's state and every trial's checkpoints stay for `--resume`."""
    probe_services(config.pipeline)
    run_name = resolve_run_name(config, run_name, resume)
    record_run(config, run_name)
    with console.log_file(run_path(config, run_name)) as log:
        logger.info("search %s: resolved config %s, log %s", run_name,
                    run_path(config, run_name, "config.yaml"), log)
        return _search(config, run_name, resume)


def _search(config: TuneConfig, run_name: str, resume: bool) -> SearchResult:
    tracker = open_tracker(config, run_name, resume=resume)
    start = time.perf_counter()
    with traceback_kept(config, run_name), sigterm_as_interrupt(), tracker.failed_on_error():
        resolved = config.to_dict()
        tracker.log_params(tracker.parent_run_id, flatten({
            **{k: v for k, v in resolved.items() if k != "tasks"},
            "tasks": ", ".join(t.name for t in config.tasks_searched()), "run_name": run_name}))
        tracker.log_text(tracker.parent_run_id, yaml.safe_dump(resolved, sort_keys=False),
                         "config.yaml")
        result = SearchResult.started(config, run_name, tracker)
        with ray_session(config.pipeline.ray) as cpus, sigterm_as_interrupt():
            contexts = {}
            for task in config.tasks_searched():
                context = StageContext(config.pipeline, task, run_name, tracker, cpus)
                run_shared_stages(context, result.stages)
                contexts[task.name] = context
            for name, search in config.tune.searches.items():
                result.kinds[name] = config.task_of(name).kind
                result.searches[name] = _run_search(config, name, contexts[search.task],
                                                    resume)
                result.best[name] = _tag_best(tracker, name, result.searches[name])
        result.wall_s = time.perf_counter() - start
        summary = format_search_summary(result)
        storage.write_bytes(storage.join(config.storage.root, "pipeline-runs", run_name,
                                         "summary.txt"), summary.encode())
        tracker.log_text(tracker.parent_run_id, summary, "summary.txt")
        tracker.finish(tracker.parent_run_id)
    return result


def _run_search(config: TuneConfig, name: str, context: StageContext,
                resume: bool) -> list[TrialOutcome]:
    """One search's Tuner (restored when resuming and it exists); each trial's outcome."""
    import ray
    from ray import tune

    from pipeline.search.callbacks import TrialRuns

    search, task, tracker = config.tune.searches[name], context.task, context.tracker
    tokenized = context.outcomes["tokenize"]
    experiments = storage.join(config.storage.root, TUNE_FOLDER, context.run_name)
    setup = TrialSetup(
        search_name=name, search=search, task=task, data_uri=tokenized.uri,
        tokenizer_model=storage.read_bytes(storage.join(tokenized.uri, "spm.model")),
        trials_uri=storage.join(experiments, name, "trials"),
        tracking_uri=tracker.tracking_uri, experiment_id=tracker.experiment_id,
        parent_run_id=tracker.parent_run_id, run_name=context.run_name,
        stats={"data_rows": context.outcomes["prepare"].result["rows"],
               "tokenizer_pieces": tokenized.result["vocab_size"]},
        slots=f"heat-slots-{context.run_name}-{name}",
    )
    # A trial's own process only waits for its Ray Train run; Ray refuses an all-zero request,
    # so it holds a little memory (and trial_cpus, default 0) instead of a CPU Ray Data needs.
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup),
                                    {"cpu": config.tune.trial_cpus, "memory": TRIAL_MEMORY})
    total = space.trial_count(search)
    concurrent = space.concurrency(config.tune, task, ray.cluster_resources())
    logger.info("search %s: %d trials of %s/%s, %d at a time", name, total, task.name,
                search.variant, concurrent)
    callbacks = [TrialRuns(search_name=name, tracking_uri=tracker.tracking_uri,
                           experiment_id=tracker.experiment_id,
                           parent_run_id=tracker.parent_run_id, total=total, slots=setup.slots)]
    experiment = storage.join(experiments, name)
    if resume and tune.Tuner.can_restore(experiment):
        logger.info("search %s: resuming %s", name, experiment)
        tuner = tune.Tuner.restore(experiment, trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space.param_space(search),
            tune_config=tune.TuneConfig(
                scheduler=space.scheduler(config.tune, search, task),
                search_alg=space.search_algorithm(search, task.train.seed),
                num_samples=search.num_samples, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, storage_path=experiments, verbose=0,
                                      callbacks=callbacks),
        )
    keeper = slots.create(setup.slots, concurrent)  # lives while this handle does
    try:
        with _stop_signals_to_tune() as stopped:
            grid = tuner.fit()
    finally:
        slots.remove(setup.slots)
        del keeper
    if stopped:  # Tune stopped gracefully and returned, its state saved
        raise KeyboardInterrupt(f"search {name} interrupted ({stopped[0]}); its state is saved "
                                f"for --resume")
    return [_outcome(setup, result) for result in grid]


@contextmanager
def _stop_signals_to_tune() -> Iterator[list[str]]:
    """Ctrl-C and SIGTERM (`ray job stop`, a scheduler) during `Tuner.fit` stop the search
    the way Tune stops on its own signal (SIGUSR1): it saves the search's state and ends its
    trials instead of dying mid-write, then returns. The list yielded names the signal that
    stopped it (empty: none did), so the caller can tell an interrupted search from a finished
    one. Tune's own SIGINT handler is turned off so that Ctrl-C comes here first."""
    stopped: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield stopped
        return

    def not_yet(signum: int, frame: Any) -> None:
        """SIGUSR1 before Tune has taken it over."""

    def stop(signum: int, frame: Any) -> None:
        stopped.append(signal.Signals(signum).name)
        if signal.getsignal(signal.SIGUSR1) is not_yet:  # Tune is not running yet, or done
            raise KeyboardInterrupt(f"signal {stopped[-1]}")
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {sig: signal.signal(sig, handler) for sig, handler in (
        (signal.SIGINT, stop), (signal.SIGTERM, stop), (signal.SIGUSR1, not_yet))}
    disabled = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield stopped
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if disabled is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = disabled


def _outcome(setup: TrialSetup, result: Any) -> TrialOutcome:
    metrics = {k: float(v) for k, v in (result.metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    params = (result.config or {})
    trial_id = (result.metrics or {}).get("trial_id", "?")  # Tune adds it to every result
    if result.error is not None:
        status = "failed"
    elif any(k in metrics for k in ("bleu", "accuracy")):
        status = "finished"
    else:
        status = f"stopped early at step {int(metrics.get('step', 0))}"
    return TrialOutcome(str(trial_id), trial_label(setup, params), status, metrics)


def _tag_best(tracker: PipelineTracker, search: str, outcomes: list[TrialOutcome]) -> str:
    """Tag the finished trial with the lowest best validation loss (selection never looks at
    the test scores); log its figures to the parent run. '' when no trial finished."""
    finished = [o for o in outcomes if o.status == "finished" and "best_val_loss" in o.metrics]
    if not finished:
        logger.warning("search %s: no trial finished; no best trial", search)
        return ""
    best = min(finished, key=lambda o: o.metrics["best_val_loss"])
    query = (f"tags.`{TAG_PARENT}` = '{tracker.parent_run_id}' and "
             f"tags.`{TAG_TRIAL}` = '{best.trial_id}'")
    for run in tracker.client.search_runs([tracker.experiment_id], query):
        tracker.client.set_tag(run.info.run_id, TAG_BEST_TRIAL, "true")
    tracker.client.set_tag(tracker.parent_run_id, f"heat.best.{search}",
                           f"{best.trial_id} ({best.label})")
    for key in ("best_val_loss", "bleu", "chrf", "accuracy", "f1"):
        if key in best.metrics:
            tracker.client.log_metric(tracker.parent_run_id, f"{search}/best/{key}",
                                      best.metrics[key])
    return best.trial_id


def format_search_summary(result: SearchResult) -> str:
    """Per search: every trial's parameters, status, validation loss and scores; the best."""
    from pipeline.summary import number, text_table
    from pipeline.tracking import browse_command

    lines = [f"search run {result.run_name} of config {result.name}: {result.wall_s:.0f} s", ""]
    for name, outcomes in result.searches.items():
        score = "bleu" if result.kinds[name] == "translation" else "accuracy"
        header = ["trial", "parameters", "status", "best val loss", score, "tokens/s"]
        rows = [[("* " if o.trial_id == result.best.get(name) else "  ") + o.trial_id, o.label,
                 o.status, number(o.metrics.get("best_val_loss"), 4),
                 number(o.metrics.get(score)), number(o.metrics.get("tokens_per_s"), 0)]
                for o in outcomes]
        lines += [f"{name} ({len(outcomes)} trials; * best by validation loss)",
                  *text_table(header, rows), ""]
    lines += [f"outputs: {result.storage_root}",
              f"MLflow: {result.tracking_uri}, experiment {result.experiment!r}, parent run "
              f"{result.parent_run_id}",
              f"browse: {browse_command(result.tracking_uri, result.experiment_id)}",
              "compare: heat-pipeline report --experiment " + result.experiment]
    return "\n".join(lines)
