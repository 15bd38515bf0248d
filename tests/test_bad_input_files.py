"""Ordinary data folders and damaged files, as a family.

A folder as Spark, Hadoop or a Mac leaves it (`_SUCCESS`, `.crc`, empty `part-*` files,
`.DS_Store`) reads as its data files. A damaged file (fake or truncated compression, corrupt
Parquet, unreadable) is a `ConfigError` keyed `data.files.<split>` whose message starts with the
file's path: raised on the driver before Ray starts where a cheap check finds it, else inside
the Ray Data read task, and in both cases one `heat-pipeline: config error:` line, exit code 2.
The bulk are unit tests of the checks and readers (no Ray); then the real CLI in a subprocess."""

from __future__ import annotations

import base64
import bz2
import gzip
import json
import pickle
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_input import Outcome, assert_rejected, heat_pipeline, tiny_config, write_corpus, write_yaml
from heat.validation import ConfigError
from pipeline import storage
from pipeline.config import DataConfig
from pipeline.data import files as files_module
from pipeline.data.damage import DataFileError, file_rows
from pipeline.data.files import resolve_files
from pipeline.data.schema import TranslationSchema
from pipeline.data.sources import check_source, local_sources

EN_FR = TranslationSchema("en", "fr")
KEY = "data.files.train"


def lines(n: int, prefix: str = "Hello") -> bytes:
    return "".join(json.dumps({"translation": {"en": f"{prefix} {i}.", "fr": f"Salut {i}."}})
                   + "\n" for i in range(n)).encode()


def noisy_lines(n: int) -> bytes:
    """Lines that compress badly: a gzip of them is about as long as they are."""
    rng = random.Random(0)
    return b"".join(json.dumps({"translation": {
        "en": base64.b64encode(rng.randbytes(600)).decode(), "fr": f"x {i}"}}).encode() + b"\n"
        for i in range(n))


def config(train: Path, **fields) -> DataConfig:
    return DataConfig(task="translation", source="local", files={"train": str(train)}, **fields)


def read_all(local, split: str = "train") -> pa.Table:
    """What the Ray read tasks would produce, without Ray: `file_rows` on each file."""
    tables = [t for path in local.files
              for t in file_rows(pa.table({"path": [path]}), local.format, EN_FR, split)]
    return pa.concat_tables(tables)


def spark_folder(folder: Path, compress: bool = False) -> Path:
    """What `df.write.json(folder)` leaves, plus a Mac's .DS_Store and a stray work folder."""
    folder.mkdir(parents=True)
    data = lines(3)
    name = "part-00000-5f3a-c000.json" + (".gz" if compress else "")
    (folder / name).write_bytes(gzip.compress(data) if compress else data)
    (folder / f".{name}.crc").write_bytes(b"crc\x00\x01")
    (folder / "part-00001-5f3a-c000.json").write_bytes(b"")  # an empty partition
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / "._SUCCESS.crc").write_bytes(b"\x00")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00\xff")
    (folder / "_temporary" / "0").mkdir(parents=True)
    (folder / "_temporary" / "0" / "part-00002.json").write_bytes(b"half written")
    return folder


# ---------------------------------------------------------------------------------------------
# Folders: which files are data, and their format


def test_a_spark_output_folder_reads_as_its_part_files(tmp_path):
    folder = spark_folder(tmp_path / "train")
    local = local_sources(config(folder))["train"]
    assert local.format == "jsonl"
    assert [Path(f).name for f in local.files] == ["part-00000-5f3a-c000.json"]
    assert read_all(local)["src"].to_pylist() == ["Hello 0.", "Hello 1.", "Hello 2."]
    assert [Path(f).name for f in storage.list_files(str(folder))] == [
        "part-00000-5f3a-c000.json"]  # hidden, _-prefixed and empty files are not listed


def test_hidden_files_readmes_and_checksums_do_not_decide_the_format(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "README.md").write_text("# my corpus\n")
    (folder / "data.jsonl.gz").write_bytes(gzip.compress(lines(4)))
    (folder / "data.jsonl.gz.crc").write_bytes(b"\x00\x01")
    local = local_sources(config(folder))["train"]
    assert (local.format, [Path(f).name for f in local.files]) == ("jsonl", ["data.jsonl.gz"])
    assert len(read_all(local)) == 4
    # an explicit format reads every listed file but checksums
    explicit = resolve_files(str(folder), "jsonl", KEY)
    assert [Path(f).name for f in explicit.files] == ["README.md", "data.jsonl.gz"]


@pytest.mark.parametrize("names, message", [
    ([".DS_Store", "_SUCCESS", "empty.jsonl"], r"data\.files\.train: .* is an empty directory: "
                                               r"no data files .* skipped"),
    (["a.jsonl", "b.parquet"], r"data\.files\.train: .* holds files of several formats .*a\.jsonl"
                               r".*b\.parquet.*expected one format per split"),
    (["part-00000", "part-00001"], r"data\.format: cannot tell the format of the files in .*"
                                   r"part-00000.*set data\.format"),
], ids=["only-junk", "mixed-formats", "no-extensions"])
def test_folders_without_one_clear_format_name_the_key(tmp_path, names, message):
    folder = tmp_path / "train"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"" if name.startswith(("_", "empty")) else lines(2))
    with pytest.raises(ConfigError, match=message):
        check_source(config(folder))


# ---------------------------------------------------------------------------------------------
# Damaged files, found on the driver


@pytest.mark.parametrize("suffix, codec", [(".gz", "gzip"), (".bz2", "bzip2"), (".zst", "zstd"),
                                           (".lz4", "LZ4")])
def test_plain_text_named_as_compressed_is_rejected_before_ray(tmp_path, suffix, codec):
    fake = tmp_path / f"train.jsonl{suffix}"
    fake.write_bytes(lines(5))
    with pytest.raises(DataFileError) as error:
        check_source(config(fake))
    message = str(error.value)
    assert message.startswith(f"{KEY}: {fake}: not a {codec} file (it starts with b'{{\"tr")
    assert f"expected {codec}-compressed data" in message and f"remove {suffix}" in message


@pytest.mark.parametrize("compress, codec", [(gzip.compress, "gzip"), (bz2.compress, "bzip2")])
def test_a_truncated_small_compressed_file_is_rejected_before_ray(tmp_path, compress, codec):
    whole = compress(lines(200))
    suffix = ".gz" if codec == "gzip" else ".bz2"
    cut = tmp_path / f"train.jsonl{suffix}"
    cut.write_bytes(whole[: len(whole) - 20])
    with pytest.raises(DataFileError, match=rf"^{KEY}: {cut}: damaged {codec} file \(Truncated "
                                            rf"compressed stream\); expected a complete"):
        check_source(config(cut))


def test_corrupt_parquet_files_are_rejected_before_ray(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in lines(5).splitlines()]),
                   folder / "part-0.parquet")
    whole = (folder / "part-0.parquet").read_bytes()
    (folder / "part-1.parquet").write_bytes(whole[:-40])  # truncated: no footer
    with pytest.raises(DataFileError, match=rf"^{KEY}: {folder}/part-1\.parquet: not a readable "
                                            r"Parquet file \(.*magic bytes.*\); expected a comp"):
        check_source(config(folder))
    (folder / "part-1.parquet").write_text("id,text\n1,not parquet at all\n")
    with pytest.raises(DataFileError, match=r"part-1\.parquet: not a readable Parquet file"):
        check_source(config(folder))


def test_a_first_line_longer_than_the_probe_reads_is_not_an_empty_file(tmp_path, monkeypatch):
    long_first = json.dumps({"translation": {"en": "word " * 300_000, "fr": "x"}}).encode()
    path = tmp_path / "train.jsonl"
    path.write_bytes(long_first + b"\n" + lines(3))  # a 1.5 MB first line
    check_source(config(path))  # read whole: it fits the schema
    path.write_bytes(b"\n\n" + long_first + b"\n")  # blank lines first
    check_source(config(path))
    monkeypatch.setattr(files_module, "PROBE_MAX_BYTES", 1 << 20)
    with pytest.raises(ConfigError, match=rf"^{KEY}: {path}: no record ends in its first 1 MiB "
                                          r".*expected one record per line"):
        check_source(config(path))
    empty = tmp_path / "empty.jsonl.gz"
    empty.write_bytes(gzip.compress(b"\n\n"))
    with pytest.raises(ConfigError, match=rf"{KEY}: {empty} is empty"):
        check_source(config(empty))


# ---------------------------------------------------------------------------------------------
# Damaged files, found while reading (in the Ray task)


def test_a_gzip_truncated_near_its_end_fails_the_read_naming_the_file(tmp_path):
    whole = gzip.compress(noisy_lines(2500))
    assert len(whole) > files_module.VERIFY_FILE_BYTES  # too long to verify on the driver
    cut = tmp_path / "train.jsonl.gz"
    cut.write_bytes(whole[:-30])
    local = local_sources(config(cut))["train"]  # the driver's checks pass
    with pytest.raises(DataFileError, match=rf"^{KEY}: {cut}: damaged gzip file \(Truncated "
                                            r"compressed stream\); expected a complete gzip"):
        read_all(local)


def test_corrupt_parquet_pages_and_vanished_files_fail_the_read_naming_the_file(tmp_path):
    good = tmp_path / "good.parquet"
    rows = [json.loads(line) for line in noisy_lines(300).splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), good, compression="snappy")
    data = bytearray(good.read_bytes())
    for i in range(100, 3000):
        data[i] ^= 0x5A  # the pages; the footer stays intact
    pages = tmp_path / "pages.parquet"
    pages.write_bytes(bytes(data))
    pq.read_metadata(pages)  # the cheap check cannot see it
    with pytest.raises(DataFileError, match=rf"^{KEY}: {pages}: not a readable Parquet file"):
        list(file_rows(pa.table({"path": [str(pages)]}), "parquet", EN_FR, "train"))
    gone = tmp_path / "deleted-after-the-probe.jsonl"
    with pytest.raises(DataFileError, match=rf"^{KEY}: {gone}: cannot read the file \(.*\); "
                                            r"expected a readable JSONL file"):
        list(file_rows(pa.table({"path": [str(gone)]}), "jsonl", EN_FR, "train"))


def test_the_file_error_crosses_process_boundaries_as_itself():
    error = DataFileError(KEY, "/data/x.gz: damaged gzip file (...); expected ...")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is DataFileError and isinstance(copy, ConfigError)
    assert (copy.field, copy.message, str(copy)) == (error.field, error.message, str(error))
    nested = copy.within("tasks.translation")
    assert type(nested) is DataFileError and nested.field == f"tasks.translation.{KEY}"


# ---------------------------------------------------------------------------------------------
# The real command line


def run_on(folder: Path, corpus: Path, **changes) -> Outcome:
    path = write_yaml(folder / "bad.yaml", tiny_config(folder, corpus, **changes))
    return heat_pipeline("run", str(path), cwd=folder)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fake-gzip", "truncated-gzip", "corrupt-parquet"])
def test_the_cli_rejects_a_damaged_file_before_ray_naming_it(tmp_path, kind):
    if kind == "fake-gzip":
        corpus = write_corpus(tmp_path / "train.jsonl.gz")  # plain text
    elif kind == "truncated-gzip":
        whole = gzip.compress(write_corpus(tmp_path / "c.jsonl").read_bytes())
        corpus = tmp_path / "train.jsonl.gz"
        corpus.write_bytes(whole[: len(whole) // 2])
    else:
        corpus = tmp_path / "train.parquet"
        corpus.write_bytes(b"PAR1" + b"\x00" * 64)
    outcome = run_on(tmp_path, corpus)
    assert_rejected(outcome, "tasks.translation.data.files.train", str(corpus), "expected",
                    within_s=60)
    assert "config error" in outcome.error_line
    assert not (tmp_path / "runs" / "prepare").exists()  # nothing ran


@pytest.mark.timeout(600)
def test_a_damaged_part_in_a_spark_folder_fails_the_run_and_spares_a_finished_one(
        tmp_path, finished_run):
    folder = spark_folder(tmp_path / "train", compress=True)
    whole = gzip.compress(noisy_lines(2500))
    damaged = folder / "part-00003-5f3a-c000.json.gz"
    damaged.write_bytes(whole[:-30])  # found only while reading, in the Ray task
    before = finished_run.snapshot()
    # another config's name: a run of the same name would move its `<name>.latest` pointer
    outcome = run_on(tmp_path, folder, name="damaged", storage={"root": str(finished_run.root)})
    assert_rejected(outcome, "tasks.translation.data.files.train", str(damaged),
                    "damaged gzip file", "expected a complete gzip stream", within_s=60)
    finished_run.assert_untouched(before)
