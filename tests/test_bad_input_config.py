"""Malformed configs through the real CLI: every one is a single `heat-pipeline: config error:`
line naming the file or key and what was expected, exit code 2, no traceback, within seconds,
and a finished run that a bad config points at is left as it was (`tests/bad_input.py`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bad_input import assert_rejected, heat_pipeline, in_process, tiny_config

LIMIT_S = 15

# A case writes its files into a folder and returns the CLI arguments and what the error line
# must name: (args, named).
Case = Callable[[Path], tuple[list[str], list[str]]]


def config_text(folder: Path, **changes) -> str:
    return yaml.safe_dump(tiny_config(folder, **changes), sort_keys=False)


def search_text(folder: Path, **changes) -> str:
    """A search config holding a whole tiny pipeline config (no base)."""
    tune = {"tune": {"searches": {"s": {"task": "translation", "variant": "softmax"}}}}
    return config_text(folder, **changes) + yaml.safe_dump(tune, sort_keys=False)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the nth line of `text` that starts with `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(needle)]
    return hits[nth - 1]


def write(folder: Path, name: str, text: str | bytes) -> str:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def insert_after(text: str, line: str, new: str) -> str:
    assert line in text, line
    return text.replace(line, line + new, 1)


# ---------------------------------------------------------------------------------------------
# The files themselves


def not_utf8(folder):
    text = config_text(folder).encode() + b"description: caf\xe9 cr\xe8me\n"
    line = text.decode("latin-1").count("\n")
    return ["run", write(folder, "latin1.yaml", text)], ["latin1.yaml", "UTF-8", f"line {line}"]


def a_directory(folder):
    (folder / "configs.yaml").mkdir()
    return ["run", str(folder / "configs.yaml")], ["configs.yaml", "is a directory"]


def missing_file(folder):
    return ["run", str(folder / "nowhere.yaml")], ["nowhere.yaml", "file not found"]


def empty_file(folder):
    return ["run", write(folder, "empty.yaml", "# nothing yet\n")], \
        ["empty.yaml", "no YAML mapping"]


def a_list(folder):
    return ["run", write(folder, "list.yaml", "- name: tiny\n- storage: {}\n")], \
        ["list.yaml", "must hold a mapping", "got list"]


def a_scalar(folder):
    return ["tune", write(folder, "scalar.yaml", "tiny\n")], ["scalar.yaml", "must hold a mapping"]


def syntax_error(folder):
    text = insert_after(config_text(folder), "ray:\n", "  address: [local\n")
    return ["run", write(folder, "syntax.yaml", text)], \
        ["syntax.yaml", "not valid YAML", f"line {line_of(text, 'ray:') + 2}"]


def two_documents(folder):
    text = config_text(folder) + "---\nname: other\n"
    return ["run", write(folder, "two.yaml", text)], ["two.yaml", "single document"]


def control_character(folder):
    text = config_text(folder) + "description: bell\x07\n"
    return ["run", write(folder, "bell.yaml", text)], \
        ["bell.yaml", "control character", f"line {text.count(chr(10))}"]


def recursive_alias(folder):
    text = config_text(folder) + "description: &loop [*loop]\n"
    return ["run", write(folder, "loop.yaml", text)], ["description", "loop.yaml", "recursive"]


# ---------------------------------------------------------------------------------------------
# Keys


def integer_key(folder):
    text = config_text(folder) + "1: x\n"
    return ["run", write(folder, "int.yaml", text)], \
        ["1:", "int.yaml", f"line {text.count(chr(10))}", "not a string"]


def boolean_key_in_a_section(folder):
    text = insert_after(config_text(folder), "storage:\n", "  true: x\n")
    return ["run", write(folder, "bool.yaml", text)], \
        ["storage.true", f"line {line_of(text, 'storage:') + 1}", "a boolean"]


def null_key_deep_inside(folder):
    text = insert_after(config_text(folder), "    train:\n", "      null: 3\n")
    return ["tune", write(folder, "null.yaml", text)], ["tasks.translation.train.null", "null"]


def duplicate_top_level_key(folder):
    text = config_text(folder) + "name: other\n"
    return ["run", write(folder, "dup.yaml", text)], \
        ["name:", "duplicate key", "dup.yaml", "line 1", f"line {text.count(chr(10))}"]


def duplicate_key_in_a_section(folder):
    text = insert_after(config_text(folder), "    train:\n", "      max_steps: 400\n")
    first, again = line_of(text, "      max_steps:"), line_of(text, "      max_steps:", 2)
    return ["run", write(folder, "dup.yaml", text)], \
        ["tasks.translation.train.max_steps", "duplicate key", f"line {first}", f"line {again}"]


def merge_keys_still_work(folder):
    """An anchor merged with `<<` and a key overriding it is no duplicate: loading goes on to
    the next check (here the storage root, a file)."""
    (folder / "a_file").write_text("not a folder\n")
    text = config_text(folder, storage={"root": str(folder / "a_file")})
    text = text.replace("    train:\n", "    train: &train\n", 1)
    text += "defaults:\n  train:\n    <<: *train\n    max_steps: 8\n"
    return ["run", write(folder, "merge.yaml", text)], ["storage.root", "a_file", "is a file"]


# ---------------------------------------------------------------------------------------------
# storage.root


def root_is_a_file(folder):
    (folder / "runs.txt").write_text("x\n")
    text = config_text(folder, storage={"root": str(folder / "runs.txt")})
    return ["run", write(folder, "root.yaml", text)], ["storage.root", "runs.txt", "not a folder"]


def root_under_a_file(folder):
    (folder / "runs.txt").write_text("x\n")
    text = config_text(folder)
    return ["run", write(folder, "root.yaml", text), f"storage.root={folder}/runs.txt/sub"], \
        ["storage.root", "runs.txt", "not a folder"]


# ---------------------------------------------------------------------------------------------
# Overrides


def override_without_equals(folder):
    return ["run", write(folder, "ok.yaml", config_text(folder)), "train.max_steps"], \
        ["overrides", "KEY.PATH=VALUE", "'train.max_steps'"]


def override_with_an_empty_key(folder):
    return ["run", write(folder, "ok.yaml", config_text(folder)), "=3"], \
        ["overrides", "KEY.PATH=VALUE"]


def override_with_bad_yaml(folder):
    return ["run", write(folder, "ok.yaml", config_text(folder)), "ray.num_cpus=[2"], \
        ["ray.num_cpus", "cannot parse override value", "'[2'"]


def override_into_a_scalar(folder):
    return ["run", write(folder, "ok.yaml", config_text(folder)), "name.x=1"], \
        ["name:", "not a mapping", "name.x=1"]


def override_with_a_duplicate_key(folder):
    override = "ray={num_cpus: 2, num_cpus: 1}"
    return ["run", write(folder, "ok.yaml", config_text(folder)), override], \
        ["ray.num_cpus", "duplicate key", "override"]


# ---------------------------------------------------------------------------------------------
# A search config's base


def search_with_base(folder: Path, base: str) -> str:
    raw = {"name": "search", "base": base, "tune": {"searches": {"s": {
        "task": "translation", "variant": "softmax"}}}}
    return write(folder, "search.yaml", yaml.safe_dump(raw, sort_keys=False))


def base_missing(folder):
    return ["tune", search_with_base(folder, "nowhere")], ["base", "'nowhere'", "packaged config"]


def base_a_directory(folder):
    (folder / "bases").mkdir()
    return ["tune", search_with_base(folder, "bases")], ["base", "bases", "directory"]


def base_is_itself(folder):
    return ["tune", search_with_base(folder, "search.yaml")], ["base", "search.yaml", "itself"]


def base_cycle(folder):
    write(folder, "other.yaml", "base: search\n" + config_text(folder))
    return ["tune", search_with_base(folder, "other")], ["base", "other.yaml", "do not chain"]


def base_not_utf8(folder):
    write(folder, "latin1.yaml", config_text(folder).encode() + b"# caf\xe9\n")
    return ["tune", search_with_base(folder, "latin1")], ["base", "latin1.yaml", "UTF-8"]


def base_with_a_duplicate_key(folder):
    write(folder, "dup.yaml", config_text(folder) + "tasks: {}\n")
    return ["tune", search_with_base(folder, "dup")], ["tasks:", "dup.yaml", "duplicate key"]


def base_overridden(folder):
    return ["tune", write(folder, "search.yaml", search_text(folder)), "base=smoke"], \
        ["base", "not on the command line"]


def search_duplicate_in_tune(folder):
    text = search_text(folder).replace("  searches:\n", "  searches: {}\n  searches:\n", 1)
    return ["tune", write(folder, "search.yaml", text)], ["tune.searches", "duplicate key"]


CASES: list[Case] = [
    not_utf8, a_directory, missing_file, empty_file, a_list, a_scalar, syntax_error,
    two_documents, control_character, recursive_alias, integer_key, boolean_key_in_a_section,
    null_key_deep_inside, duplicate_top_level_key, duplicate_key_in_a_section,
    merge_keys_still_work, root_is_a_file, root_under_a_file, override_without_equals,
    override_with_an_empty_key, override_with_bad_yaml, override_into_a_scalar,
    override_with_a_duplicate_key, base_missing, base_a_directory, base_is_itself, base_cycle,
    base_not_utf8, base_with_a_duplicate_key, base_overridden, search_duplicate_in_tune,
]


@pytest.mark.parametrize("case", CASES, ids=[case.__name__ for case in CASES])
def test_a_malformed_config_is_one_clear_error(tmp_path, case):
    args, named = case(tmp_path)
    assert_rejected(in_process(*args, cwd=tmp_path), *named, within_s=LIMIT_S)
    assert not (tmp_path / "runs").exists(), "a rejected config must not start a run"


@pytest.mark.parametrize("command", ["run", "tune"])
def test_file_level_errors_read_the_same_for_run_and_tune(tmp_path, command):
    path = write(tmp_path, "latin1.yaml", b"name: caf\xe9\n")
    assert_rejected(heat_pipeline(command, path, cwd=tmp_path), "latin1.yaml", "UTF-8",
                    "line 1", within_s=LIMIT_S)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config(tmp_path):
    path = Path(write(tmp_path, "secret.yaml", config_text(tmp_path)))
    path.chmod(0)
    assert_rejected(heat_pipeline("run", str(path), cwd=tmp_path), "secret.yaml",
                    "permission denied", within_s=LIMIT_S)


def test_bad_configs_leave_a_finished_run_untouched(finished_run, tmp_path):
    """Bad configs aimed at a finished run's storage root (resuming it, even) change nothing."""
    before = finished_run.snapshot()
    good = finished_run.config.read_text()
    cases = [
        (good + "name: other\n", [], ["name:", "duplicate key"]),
        (insert_after(good, "    train:\n", "      1: 2\n"), [],
         ["tasks.translation.train.1", "not a string"]),
        (good.encode() + b"# \xff\n", [], ["UTF-8"]),
        (good, ["tasks.translation.train.max_steps.x=1"], ["tasks.translation.train.max_steps"]),
        (good, ["tasks.translation.train.max_steps=[8"], ["cannot parse override value"]),
    ]
    for i, (text, overrides, named) in enumerate(cases):
        path = write(tmp_path, f"bad{i}.yaml", text)
        outcome = heat_pipeline("run", path, *overrides, "--run-name", "finished", "--resume",
                                cwd=finished_run.folder)
        assert_rejected(outcome, *named, within_s=LIMIT_S)
    assert_rejected(heat_pipeline("tune", write(tmp_path, "search.yaml", "base: tiny\n"
                                                "base: smoke\n" + good), cwd=finished_run.folder),
                    "base", "duplicate key", within_s=LIMIT_S)
    finished_run.assert_untouched(before)
