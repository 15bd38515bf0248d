"""A finished variant's files: best weights with their config, hypotheses, copied to storage.

The weights go to `TrainJob.checkpoint_uri(variant)` (any pyarrow filesystem URI) and, by rank 0,
into the variant's MLflow run; `model_config.json` holds enough to rebuild the model with
`heat.models`, which `load_model` does (the evaluate stage reads them back from storage).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow.fs
import torch

from heat.attention import spec_from_dict, spec_to_dict
from heat.models import (
    AttentionSites,
    ClassifierConfig,
    EncoderClassifier,
    Seq2SeqConfig,
    Seq2SeqTransformer,
)
from pipeline import storage

HYPOTHESES_FILE = "hypotheses.txt"
REFERENCES_FILE = "references.txt"
"""Beside the hypotheses, line for line: the reference translations, or the true class ids
(what a paired bootstrap over test examples resamples, `heat-pipeline report`)."""
BEST_CHECKPOINT_DIR = "best_checkpoint"
TABLE_FILE = "hypotheses.tsv"
"""The same rows side by side for a person: source, reference, hypothesis (tab-separated)."""


def write_hypotheses(folder: Path, lines: Sequence[str],
                     references: Sequence[str] | None = None) -> Path:
    """One output per evaluation example, in the split's order (text, or a class id), and with
    `references` their truths in the same order; the hypotheses' path."""
    path = folder / HYPOTHESES_FILE
    path.write_text("".join(f"{_one_line(line)}\n" for line in lines), encoding="utf-8")
    if references is not None:
        (folder / REFERENCES_FILE).write_text(
            "".join(f"{_one_line(line)}\n" for line in references), encoding="utf-8")
    return path


def write_table(folder: Path, sources: Sequence[str], references: Sequence[str],
                hypotheses: Sequence[str]) -> Path:
    """`hypotheses.tsv`: a header and one row per evaluation example (tabs in a text become
    spaces), for reading outputs beside their inputs in MLflow's artifact view."""
    path = folder / TABLE_FILE
    rows = zip(sources, references, hypotheses, strict=True)
    path.write_text("source\treference\thypothesis\n" + "".join(
        "\t".join(_one_line(text).replace("\t", " ") for text in row) + "\n" for row in rows),
        encoding="utf-8")
    return path


def _one_line(text: str) -> str:
    """A line break inside a text would shift every later line against its reference."""
    return " ".join(str(text).splitlines())


def save_model(
    folder: Path, model: torch.nn.Module, config: Seq2SeqConfig | ClassifierConfig
) -> Path:
    """folder/best_checkpoint/{model.pt (fp32 state dict), model_config.json}."""
    target = folder / BEST_CHECKPOINT_DIR
    target.mkdir(parents=True)
    torch.save(model.state_dict(), target / "model.pt")
    raw = dataclasses.asdict(config)
    if isinstance(config, Seq2SeqConfig):
        raw["attention"] = config.attention.to_dict()
    else:
        raw["attention_spec"] = spec_to_dict(config.attention_spec)
    raw["class"] = type(config).__name__
    (target / "model_config.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return target


def load_model(uri: str) -> Seq2SeqTransformer | EncoderClassifier:
    """The model `save_model` wrote to `uri` (a local folder or any storage URI), in eval mode.

    The weights load with `weights_only=True`: a checkpoint is data, never code."""
    raw = storage.read_json(storage.join(uri, "model_config.json"))
    cls = raw.pop("class")
    if cls == "Seq2SeqConfig":
        model: torch.nn.Module = Seq2SeqTransformer(
            Seq2SeqConfig(**{**raw, "attention": AttentionSites.from_dict(raw["attention"])}))
    else:
        model = EncoderClassifier(ClassifierConfig(
            **{**raw, "attention_spec": spec_from_dict(raw["attention_spec"])}))
    weights = io.BytesIO(storage.read_bytes(storage.join(uri, "model.pt")))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def copy_to_storage(folder: Path, uri: str) -> None:
    """Copy a local folder's contents to a storage URI (local path, file://, s3://, gs://...)."""
    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(folder), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=filesystem)
