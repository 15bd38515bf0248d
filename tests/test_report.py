"""`heat-pipeline report` on a real MLflow SQLite store built here: runs with the pipeline's
tags, params, metrics and hypotheses/references artifacts; the tables, claims, plots and the
report run it logs; its statistics against hand-computed cases and sacrebleu itself."""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import mlflow
import numpy as np
import pytest
import sacrebleu
from mlflow.entities import Metric, Param

from pipeline.report.cli import add_arguments, run
from pipeline.report.analysis import best_shots
from pipeline.report.collect import RunRecord, configuration, read_lines
from pipeline.report.plots import pareto_front
from pipeline.report.stats import (
    FAILS,
    HOLDS,
    UNRESOLVED,
    AccuracyScores,
    BleuScores,
    beats_verdict,
    example_bootstrap,
    matches_verdict,
    percentile_interval,
    seed_bootstrap,
    seed_estimate,
)

WORDS = ("the cat sat on a mat while dogs ran over green hills under blue skies and birds sang "
         "songs of quiet rivers near old stone bridges where children played games all day long "
         "until night fell softly").split()
WMT, IWSLT, IMDB, TOY = ("wmt/wmt14:fr-en", "IWSLT/mt_eng_vietnamese:iwslt2015-en-vi",
                         "stanfordnlp/imdb", "builtin:toy_sentiment")


# ---------------------------------------------------------------------------------------------
# Building the store


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) for _ in range(n)]


def noisy(references: list[str], p: float, seed: int) -> list[str]:
    """Each word replaced by a random one with probability p: a worse system for larger p."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) if rng.random() < p else w for w in ref.split())
            for ref in references]


def predictions(labels: list[int], accuracy: float, seed: int) -> list[int]:
    """Predicted labels with exactly this accuracy (wrong ones at random positions)."""
    wrong = set(random.Random(seed).sample(range(len(labels)), round((1 - accuracy) * len(labels))))
    return [1 - y if i in wrong else y for i, y in enumerate(labels)]


class Store:
    def __init__(self, root: Path) -> None:
        self.uri = f"sqlite:///{root}/mlflow.db"
        self.client = mlflow.MlflowClient(self.uri)
        self.root = root

    def experiment(self, name: str) -> tuple[str, str]:
        experiment_id = self.client.create_experiment(
            name, artifact_location=str(self.root / "artifacts" / name))
        parent = self.client.create_run(experiment_id, tags={"heat.run_name": name}).info.run_id
        self.client.set_terminated(parent, "FINISHED")
        return experiment_id, parent

    def child(self, where: tuple[str, str], *, dataset: str, variant: str, kind: str,
              hyps: list[str], refs: list[str], params: dict[str, str] | None = None,
              metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None,
              status: str = "FINISHED", skip: tuple[str, ...] = ()) -> str:
        experiment_id, parent = where
        base = {"mlflow.parentRunId": parent, "heat.run_name": "r", "heat.task": kind,
                "heat.variant": variant, "heat.kind": kind, "heat.dataset": dataset}
        run_id = self.client.create_run(experiment_id, tags={**base, **(tags or {})}).info.run_id
        params = {"attention.name": variant, "train.seed": "0", "train.lr": "0.001",
                  **(params or {})}
        if kind == "translation":
            scores = {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
                      "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}
        else:
            scores = {"accuracy": float(np.mean([h == r for h, r in zip(hyps, refs)])), "f1": 0.8}
        values = {**scores, "best_val_loss": 1.0, "tokens_per_s": 1000.0, "train_wall_s": 10.0,
                  "peak_mem_mb": 100.0, **(metrics or {})}
        self.client.log_batch(
            run_id, metrics=[Metric(k, v, 0, 0) for k, v in values.items() if k not in skip],
            params=[Param(k, v) for k, v in params.items()])
        for name, lines in (("hypotheses.txt", hyps), ("references.txt", refs)):
            if name not in skip:
                self.client.log_text(run_id, "".join(f"{line}\n" for line in lines), name)
        self.client.set_terminated(run_id, status)
        return run_id


TRANSLATION_NOISE = {"softmax": 0.45, "linformer": 0.42, "nystrom": 0.40, "hadamard": 0.20,
                     "heat": 0.21, "taylor": 0.50}


def paper_runs(store: Store) -> dict[str, str]:
    """WMT'14: every variant once. IMDb: softmax and heat (two configurations) over two seeds,
    no linformer/nystrom/hadamard. A built-in set. Some runs the report must skip."""
    where = store.experiment("paper")
    ids = {}
    refs = sentences(60, seed=1)
    for i, (variant, p) in enumerate(TRANSLATION_NOISE.items()):
        ids[f"wmt/{variant}"] = store.child(
            where, dataset=WMT, variant=variant, kind="translation", hyps=noisy(refs, p, i),
            refs=refs, params={"attention.rank": "8"} if variant == "heat" else None,
            metrics={"tokens_per_s": 1000.0 * (i + 1), "test_beam5/bleu": 99.0})
    labels = [random.Random(2).randint(0, 1) for _ in range(200)]
    for seed in (0, 1):
        for variant, rank, loss, acc in (("softmax", None, 0.5, 0.80), ("heat", "4", 0.30, 0.84),
                                         ("heat", "8", 0.40, 0.95)):
            params = {"train.seed": str(seed), **({"attention.rank": rank} if rank else {})}
            key = f"imdb/{variant}{rank or ''}/{seed}"
            hyps = [str(y) for y in predictions(labels, acc + seed / 100, seed)]
            ids[key] = store.child(where, dataset=IMDB, variant=variant, kind="classification",
                                   hyps=hyps, refs=[str(y) for y in labels], params=params,
                                   metrics={"best_val_loss": loss + seed / 100})
    toy = [str(y) for y in labels[:50]]
    # the last heat run repeats the one before (configuration and seed): a duplicate
    for i, (variant, acc) in enumerate((("softmax", 0.7), ("heat", 0.9), ("heat", 0.5))):
        ids[f"toy/{variant}/{i}"] = store.child(
            where, dataset=TOY, variant=variant, kind="classification", refs=toy,
            hyps=[str(y) for y in predictions(labels[:50], acc, 3)])
    store.child(where, dataset=IMDB, variant="nystrom", kind="classification", hyps=toy, refs=toy,
                status="FAILED")
    store.child(where, dataset=IMDB, variant="hadamard", kind="classification", hyps=toy,
                refs=toy, skip=("references.txt",))
    store.child(where, dataset=WMT, variant="heat", kind="translation", hyps=refs, refs=refs,
                skip=("bleu",))
    return ids


def search_runs(store: Store) -> dict[str, str]:
    """A HEAT rank search on IWSLT'15: ranks 2/4/8/16 x seeds 1, 2 (basis svd), and basis taylor
    at ranks 4 and 8; plain hadamard and softmax runs on the same data set."""
    where = store.experiment("search")
    refs = sentences(40, seed=5)
    ids = {}
    trials = [(r, "svd", s) for r in (2, 4, 8, 16) for s in (1, 2)] + [(4, "taylor", 1),
                                                                       (8, "taylor", 1)]
    for i, (rank, basis, seed) in enumerate(trials):
        params = {"attention.rank": str(rank), "attention.basis": basis, "search.rank": str(rank),
                  "search.basis": basis, "search.seed": str(seed), "train.seed": str(seed),
                  "search.name": "heat_rank"}
        ids[f"trial/{rank}/{basis}/{seed}"] = store.child(
            where, dataset=IWSLT, variant="heat", kind="translation", refs=refs,
            hyps=noisy(refs, 0.5 / rank + (0.1 if basis == "taylor" else 0), 10 + i),
            params=params, metrics={"best_val_loss": 1 / rank},
            tags={"heat.search": "heat_rank", "heat.trial": f"t{i:02d}",
                  **({"heat.best_trial": "true"} if (rank, basis, seed) == (16, "svd", 1) else {})})
    for variant, p in (("hadamard", 0.02), ("softmax", 0.3)):
        ids[f"iwslt/{variant}"] = store.child(where, dataset=IWSLT, variant=variant,
                                              kind="translation", hyps=noisy(refs, p, 99),
                                              refs=refs)
    return ids


def arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[Store, dict[str, str]]:
    store = Store(tmp_path_factory.mktemp("store"))
    return store, {**paper_runs(store), **search_runs(store)}


@pytest.fixture(scope="module")
def report(store) -> Path:
    out = store[0].root / "report1"
    assert run(arguments("--tracking-uri", store[0].uri, "--out", str(out))) == 0
    return out


def find(rows: list[dict[str, str]], **where: str) -> dict[str, str]:
    found = [r for r in rows if all(r[k] == v for k, v in where.items())]
    assert len(found) == 1, (where, found)
    return found[0]


# ---------------------------------------------------------------------------------------------
# The report on the store


def test_the_tables_show_measured_cells_beside_the_papers_figures(store, report):
    ids = store[1]
    heat_wmt = store[0].client.get_run(ids["wmt/heat"]).data.metrics["bleu"]
    table_1 = read_csv(report / "table_I.csv")
    cell = find(table_1, dataset=WMT, variant="heat")
    assert float(cell["measured"]) == pytest.approx(heat_wmt) and cell["seeds"] == "1"
    assert float(cell["paper"]) == 26.5 and cell["run_ids"] == ids["wmt/heat"]
    assert float(find(table_1, dataset=WMT, variant="taylor")["measured"]) > 0
    assert find(table_1, dataset=WMT, variant="taylor")["paper"] == ""  # no published figure
    text = (report / "report.md").read_text()
    heat_line = next(line for line in text.splitlines() if line.startswith("| heat (HEAT) | ")
                     and "26.50" in line)
    assert f"{heat_wmt:.2f} (1 seed)" in heat_line and "35.70" in heat_line

    table_2 = read_csv(report / "table_II.csv")
    heat = find(table_2, dataset=IMDB, variant="heat", metric="accuracy (%)")
    assert float(heat["measured"]) == pytest.approx(84.5) and heat["seeds"] == "2"
    assert float(heat["ci_low"]) < 84.5 < float(heat["ci_high"])
    assert "attention.rank=4" in heat["configuration"] and float(heat["paper"]) == 84.3
    linformer = find(table_2, dataset=IMDB, variant="linformer", metric="accuracy (%)")
    assert linformer["measured"] == "" and float(linformer["paper"]) == 83.7
    assert find(table_2, dataset=IMDB, variant="hadamard", metric="F1")["paper"] == ""
    assert "| linformer (Linformer) | — | 83.70 | — | 0.863 |" in text
    assert "| hadamard (Exact Hadamard) | — | — | — | — |" in text
    assert ("heat on stanfordnlp/imdb: attention.name=heat, attention.rank=4, train.lr=0.001; "
            "lowest mean validation loss (0.305) of 2 configurations; seeds 0, 1") in text

    toy = read_csv(report / "table_builtin_toy_sentiment.csv")
    assert float(find(toy, variant="heat", metric="accuracy (%)")["measured"]) == 50.0
    assert all(row["paper"] == "" for row in toy)
    for name in ("table_III.csv", "table_IV.csv"):  # nothing measured: the paper's figures only
        assert all(row["measured"] == "" for row in read_csv(report / name))


def test_the_claims_get_an_interval_and_a_verdict(report):
    claims = read_csv(report / "claims.csv")
    wmt = find(claims, dataset=WMT, claim="HEAT beats softmax")
    assert wmt["verdict"] == HOLDS and float(wmt["ci_low"]) > 0
    assert wmt["method"] == "paired bootstrap over 60 test sentences (1 vs 1 run)"
    assert find(claims, dataset=WMT, claim="HEAT matches hadamard")["margin"] == "1.0"
    imdb = find(claims, dataset=IMDB, claim="HEAT beats softmax")
    assert imdb["method"] == "bootstrap over seeds, paired by seed (n=2)"
    assert float(imdb["difference"]) == pytest.approx(4.0) and imdb["verdict"] == HOLDS
    assert find(claims, dataset=IMDB, claim="HEAT beats linformer")["verdict"] == \
        "not resolved: no linformer run"
    assert find(claims, dataset=IMDB, claim="HEAT matches hadamard")["verdict"] == \
        "not resolved: no hadamard run"
    iwslt = find(claims, dataset=IWSLT, claim="HEAT matches hadamard")
    assert iwslt["method"] == "paired bootstrap over 40 test sentences (2 vs 1 runs)"
    assert all(row["note"] == "" for row in claims)  # the artifacts reproduce the logged scores


def test_runs_used_and_skipped_are_listed_with_reasons(store, report):
    ids = store[1]
    runs = read_csv(report / "runs.csv")
    assert float(find(runs, run_id=ids["wmt/heat"])["bleu"]) < 99  # test_beam5/bleu ignored
    skipped = read_csv(report / "skipped.csv")
    reasons = sorted(row["reason"] for row in skipped)
    assert reasons == ["duplicate: a later run has the same configuration and seed",
                       "missing artifact references.txt", "missing metric bleu", "status FAILED"]
    assert len(runs) == len(ids) - 1  # every child run but the superseded duplicate
    assert "Skipped child runs: 4 (" in (report / "report.md").read_text()


def test_plots_exist_and_the_report_run_holds_every_file(store, report):
    names = {p.name for p in report.iterdir()}
    for dataset in ("wmt_wmt14_fr_en", "stanfordnlp_imdb", "builtin_toy_sentiment",
                    "iwslt_mt_eng_vietnamese_iwslt2015_en_vi"):
        assert f"cost_{dataset}.png" in names
    client = store[0].client
    experiment = client.get_experiment_by_name("heat-reports")
    runs = client.search_runs([experiment.experiment_id], "tags.`heat.report` = 'true'")
    assert runs and runs[-1].info.run_name.startswith("report-")
    assert runs[-1].info.status == "FINISHED"
    logged = {f.path for f in client.list_artifacts(runs[-1].info.run_id)}
    assert names <= logged and "report.md" in logged and "claims.csv" in logged


def test_a_search_is_plotted_and_every_trial_listed(store, report):
    ids = store[1]
    plot = report / "search_heat_rank_iwslt_mt_eng_vietnamese_iwslt2015_en_vi.png"
    assert plot.stat().st_size > 1000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert f"]({plot.name})" in (report / "report.md").read_text()
    trials = [r for r in read_csv(report / "runs.csv") if r["search"] == "heat_rank"]
    assert sorted(r["run_id"] for r in trials) == sorted(v for k, v in ids.items()
                                                         if k.startswith("trial/"))
    assert len({r["trial"] for r in trials}) == 10
    best = find(trials, best_trial="true")
    assert best["run_id"] == ids["trial/16/svd/1"]
    # the best shot is chosen by validation loss (rank 16, svd) over both its seeds
    cell = find(read_csv(report / "table_I.csv"), dataset=IWSLT, variant="heat")
    assert cell["seeds"] == "2" and "attention.rank=16" in cell["configuration"]


def test_the_same_store_gives_identical_files(store, report):
    again = store[0].root / "report2"
    assert run(arguments("--tracking-uri", store[0].uri, "--out", str(again))) == 0
    for path in sorted(report.glob("*.csv")) + [report / "report.md"]:
        assert (again / path.name).read_text() == path.read_text(), path.name


def test_an_unknown_experiment_is_exit_2_naming_it(store, tmp_path, capsys):
    code = run(arguments("--tracking-uri", store[0].uri, "--experiment", "nope",
                         "--out", str(tmp_path / "r")))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no experiment named 'nope'" in err and "paper, search" in err


def test_an_empty_or_missing_store_is_exit_2_naming_it(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path}/absent/mlflow.db"
    assert run(arguments("--tracking-uri", missing, "--out", str(tmp_path / "a"))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and missing in err
    assert not (tmp_path / "absent").exists()  # asking for a report creates no store
    empty = Store(tmp_path)
    empty.experiment("nothing")
    capsys.readouterr()  # MLflow's own log lines while the test created the store
    assert run(arguments("--tracking-uri", empty.uri, "--out", str(tmp_path / "b"))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no usable finished child runs" in err
    assert empty.uri in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# The statistics


def test_the_paired_bootstrap_matches_a_hand_computed_case():
    a = AccuracyScores(["1", "1", "0", "1"], ["1"] * 4)  # correct: 1 1 0 1
    b = AccuracyScores(["1", "0", "0", "0"], ["1"] * 4)  # correct: 1 0 0 0
    indices = np.array([[0, 1, 2, 3], [2, 2, 2, 2], [0, 1, 1, 3]])
    observed, diffs = example_bootstrap([a], [b], [indices])
    # a: 3/4, 0, 1; b: 1/4, 0, 1/4 -> differences 0.5, 0, 0.75
    assert observed == 0.5 and diffs.tolist() == [0.5, 0.0, 0.75]
    # percentiles of [0, 0.5, 0.75] at positions 0.05 and 1.95 (linear interpolation)
    assert percentile_interval(diffs) == pytest.approx((0.025, 0.7375))


def test_bleu_from_sufficient_statistics_is_sacrebleus_corpus_bleu():
    refs = sentences(30, seed=7)
    hyps = noisy(refs, 0.3, 8)
    scores = BleuScores(hyps, refs)
    assert scores.full() == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert scores.resampled(np.array([np.arange(30)]))[0] == scores.full()
    picks = [0, 0, 5, 29, 3]
    resampled = scores.resampled(np.array([picks + [1] * 25]))[0]
    chosen = [hyps[i] for i in picks + [1] * 25], [refs[i] for i in picks + [1] * 25]
    assert resampled == sacrebleu.corpus_bleu(chosen[0], [chosen[1]]).score


def test_the_seed_bootstrap_pairs_by_seed_when_the_seeds_agree():
    observed, samples, paired = seed_bootstrap({"0": 3.0, "1": 5.0}, {"0": 1.0, "1": 4.0}, 200, 0)
    assert paired and observed == 1.5 and set(np.round(samples, 9)) <= {1.0, 1.5, 2.0}
    observed, samples, paired = seed_bootstrap({"0": 3.0, "1": 5.0}, {"2": 1.0, "3": 4.0}, 200, 0)
    assert not paired and observed == 1.5 and samples.min() < 1.0
    estimate = seed_estimate([1.0, 3.0])  # mean 2, s = sqrt 2, t(1) = 12.706
    assert estimate.n == 2 and estimate.high - 2 == pytest.approx(12.706 * 1.0)
    assert seed_estimate([4.0]).low is None


@pytest.mark.parametrize("low, high, verdict", [
    (0.1, 2.0, HOLDS), (-2.0, -0.1, FAILS), (-1.0, 1.0, UNRESOLVED), (0.0, 1.0, UNRESOLVED)])
def test_beats_verdicts(low, high, verdict):
    assert beats_verdict(low, high) == verdict


@pytest.mark.parametrize("low, high, verdict", [
    (-0.5, 0.9, HOLDS), (-1.0, 1.0, HOLDS), (1.2, 3.0, FAILS), (-3.0, -1.5, FAILS),
    (0.5, 1.5, UNRESOLVED), (-2.0, 2.0, UNRESOLVED)])
def test_matches_verdicts_with_a_margin(low, high, verdict):
    assert matches_verdict(low, high, 1.0) == verdict


def record(variant: str, config: str, seed: str, val_loss: float, score: float) -> RunRecord:
    params = {"attention.rank": config, "train.seed": seed}
    return RunRecord(run_id=f"{config}-{seed}", experiment="e", run_name="r", task="t",
                     kind="classification", dataset="d", variant=variant, search=None,
                     trial=None, best_trial=False, seed=seed, config=configuration(params),
                     params=params, metrics={"accuracy": score, "best_val_loss": val_loss},
                     hypotheses=(), references=())


def test_the_best_shot_is_chosen_by_validation_loss_not_test_score():
    runs = [record("heat", "4", "0", 0.30, 0.70), record("heat", "4", "1", 0.34, 0.72),
            record("heat", "8", "0", 0.20, 0.60), record("heat", "8", "1", 0.50, 0.99),
            record("heat", "16", "0", 0.33, 0.95)]
    cell = best_shots(runs)[("d", "heat")]
    assert cell.config == (("attention.rank", "4"),) and cell.configurations == 3
    assert cell.estimate("accuracy").mean == pytest.approx(0.71) and cell.seeds == ["0", "1"]


def test_the_configuration_leaves_out_the_seed_and_what_the_config_already_says():
    params = {"attention.name": "heat", "attention.rank": "8", "train.lr": "0.001",
              "train.seed": "3", "train.max_steps": "9", "search.rank": "8", "search.lr": "0.001",
              "search.seed": "3", "search.name": "heat_rank", "search.dropout": "0.1"}
    assert configuration(params) == (("attention.name", "heat"), ("attention.rank", "8"),
                                     ("search.dropout", "0.1"), ("train.lr", "0.001"))


def test_artifact_lines_split_only_on_newlines(tmp_path):
    path = tmp_path / "h.txt"
    path.write_text("a\n\nb\u2028c\n", encoding="utf-8")
    assert read_lines(path) == ("a", "", "b\u2028c")


def test_the_pareto_front():
    points = [(1.0, 5.0), (2.0, 4.0), (2.0, 3.0), (3.0, 1.0), (0.5, 4.0), (3.0, 2.0)]
    assert pareto_front(points) == [0, 1, 5]
