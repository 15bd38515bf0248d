"""Tiny learnable tasks written in the tokenize stage's Parquet format, for the train tests.

Translation: a word-for-word cipher (each source word has one target word, order kept), so a
small model learns it in a few hundred steps and BLEU separates trained from untrained models.
Classification: does the sentence contain the word "needle"? Both use a real SentencePiece model
(word pieces, pad 0 / bos 1 / eos 2 / unk 3 as the pipeline's tokenizers).
"""

from __future__ import annotations

import io
import json
import random
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sentencepiece as spm

SOURCE_WORDS = ("red green blue small big old new cat dog bird fish tree house car road "
                "sun moon star runs sees eats").split()
TARGET_WORDS = ("rouge vert bleu petit grand vieux neuf chat chien oiseau poisson arbre maison "
                "voiture route soleil lune etoile court voit mange").split()
CIPHER = dict(zip(SOURCE_WORDS, TARGET_WORDS))
NEEDLE = "needle"


def _sentence(rng: random.Random, low: int = 3, high: int = 8) -> list[str]:
    return [rng.choice(SOURCE_WORDS) for _ in range(rng.randint(low, high))]


def train_sentencepiece(sentences: list[str], vocab_size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
        model_type="word", pad_id=0, bos_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


def _ids(column: list[list[int]]) -> pa.Array:
    return pa.array(column, pa.list_(pa.int32()))


def write_translation(folder: Path, rows: dict[str, int], seed: int = 0) -> bytes:
    """folder/{split}.parquet with src_ids, tgt_ids (pieces + eos), ref, and folder/spm.model;
    returns the SentencePiece model."""
    rng = random.Random(seed)
    pairs = {split: [] for split in rows}
    for split, count in rows.items():
        for _ in range(count):
            words = _sentence(rng)
            pairs[split].append((" ".join(words), " ".join(CIPHER[w] for w in words)))
    proto = train_sentencepiece(
        [" ".join(SOURCE_WORDS), " ".join(TARGET_WORDS)] * 4, vocab_size=4 + 2 * len(SOURCE_WORDS)
    )
    processor = spm.SentencePieceProcessor(model_proto=proto)
    eos = processor.eos_id()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(proto)
    for split, split_pairs in pairs.items():
        src = [processor.encode(s) + [eos] for s, _ in split_pairs]
        tgt = [processor.encode(t) + [eos] for _, t in split_pairs]
        table = pa.table({"src_ids": _ids(src), "tgt_ids": _ids(tgt),
                          "ref": pa.array([t for _, t in split_pairs], pa.string())})
        pq.write_table(table, folder / f"{split}.parquet")
    return proto


def write_classification(folder: Path, rows: dict[str, int], seed: int = 0) -> bytes:
    """folder/{split}.parquet/part-{0,1}.parquet with input_ids (text + eos), segment_ids,
    label (needle or not), and folder/spm.model; returns the SentencePiece model."""
    rng = random.Random(seed)
    proto = train_sentencepiece([" ".join(SOURCE_WORDS + [NEEDLE])] * 4, 5 + len(SOURCE_WORDS))
    processor = spm.SentencePieceProcessor(model_proto=proto)
    eos = processor.eos_id()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(proto)
    for split, count in rows.items():
        inputs, labels = [], []
        for i in range(count):
            words, label = _sentence(rng), i % 2
            if label:
                words[rng.randrange(len(words))] = NEEDLE
            inputs.append(processor.encode(" ".join(words)) + [eos])
            labels.append(label)
        table = pa.table({"input_ids": _ids(inputs),
                          "segment_ids": _ids([[0] * len(ids) for ids in inputs]),
                          "label": pa.array(labels, pa.int64())})
        # Folders of part files, as Ray Data's write_parquet leaves the tokenize output.
        (folder / f"{split}.parquet").mkdir()
        half = table.num_rows // 2
        pq.write_table(table.slice(0, half), folder / f"{split}.parquet" / "part-0.parquet")
        pq.write_table(table.slice(half), folder / f"{split}.parquet" / "part-1.parquet")
    return proto


# ---------------------------------------------------------------------------------------------
# Jobs on the toy data, as the orchestrator would build them

TOY_SPECS: dict[str, dict[str, Any]] = {
    "softmax": {"name": "softmax"},
    "linformer": {"name": "linformer", "rank": 8, "max_length": 32},
    "nystrom": {"name": "nystrom", "landmarks": 4},
    "hadamard": {"name": "hadamard"},
    "heat": {"name": "heat", "rank": 8},
    "taylor": {"name": "taylor", "order": 2, "feature_dim": 4},
}
TOY_MODEL = {"d_model": 64, "num_heads": 4, "num_encoder_layers": 2, "num_decoder_layers": 2,
             "ffn_dim": 128, "dropout": 0.0, "max_length": 32, "label_smoothing": 0.0}
TOY_TRAIN = {"precision": "fp32", "lr": 3e-3, "warmup_steps": 20, "schedule": "linear",
             "max_steps": 200, "tokens_per_batch": 1024, "val_every": 50, "checkpoint_every": 100,
             "log_every": 10}


def create_mlflow_runs(tracking_uri: str, artifacts: Path, names: list[str]) -> dict[str, str]:
    """One run per variant in a fresh experiment, as the orchestrator creates them."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(f"toy-{random.random():.12f}",
                                          artifact_location=artifacts.as_uri())
    return {name: client.create_run(experiment, run_name=name).info.run_id for name in names}


def toy_job(folder: Path, task: str, run_ids: dict[str, str], run_name: str = "toy",
            eval_config: dict[str, Any] | None = None, **train: Any):
    """A TrainJob on folder/data (written by write_translation / write_classification)."""
    from pipeline.config import EvalConfig, ModelConfig, TrainConfig, Variant
    from pipeline.job import TrainJob

    def attention(name: str) -> dict[str, Any]:
        spec = TOY_SPECS[name]
        if task == "classification":
            return spec
        return {"encoder_self": spec, "decoder_self": spec, "cross": spec}

    return TrainJob(
        task=task,
        variants=[Variant.parse(name, attention(name), task) for name in run_ids],
        model=ModelConfig(**TOY_MODEL),
        train=TrainConfig(**{**TOY_TRAIN, **train}),
        eval=EvalConfig(**{"beam_size": 2, **(eval_config or {})}),
        data_uri=str(folder / "data"),
        tokenizer_model=(folder / "data" / "spm.model").read_bytes(),
        storage_uri=str(folder / "storage"),
        run_name=run_name,
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        mlflow_run_ids=run_ids,
        num_labels=2 if task == "classification" else None,
    )


def main(spec_file: str) -> None:
    """Run a toy job in its own process and Ray cluster (the resume test kills it):
    spec = {"folder", "task", "run_ids", "train"}; writes folder/results.json."""
    import logging

    import ray

    from pipeline.job import train_and_evaluate

    logging.basicConfig(level=logging.INFO)
    spec = json.loads(Path(spec_file).read_text())
    folder = Path(spec["folder"])
    job = toy_job(folder, spec["task"], spec["run_ids"], **spec["train"])
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        results = train_and_evaluate(job)
    finally:
        ray.shutdown()
    (folder / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
