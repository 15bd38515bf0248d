"""The bench's argument checks: every bad argument is one `heat-pipeline: ...` line naming it, exit
status 2, before any benchmarking work starts.

Values are checked as argparse parses them (the `type=` functions here, and `install_error`,
which makes the bench parser's errors that line); what depends on the machine or on several
arguments (`--device cuda` without CUDA, `--out` and `--plot` that cannot be written, the
variant specs' own checks) is checked by `cli.check_arguments` before the run. Each failure is a
`BenchArgumentError`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from heat.validation import ConfigError, check_int

PREFIX = "heat-pipeline: bench attention"
"""How every report of a bad argument starts (as `heat-pipeline: config error: ...` does for a
config)."""


class BenchArgumentError(SystemExit):
    """A bad argument: `flag` the argument (e.g. '--repeats'), `message` what was expected;
    `str(error)` is `"{flag}: {message}"`. A `SystemExit` with status 2, so that a caller that
    does not report it (a script calling `build_cases`) stops as argparse would; `cli.main`
    prints it as the one line `report` makes."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
        self.message = message
        self.code = 2


def report(message: str, prefix: str = PREFIX) -> None:
    """Print the one line that reports a bad argument (`message`: 'FLAG: what was expected')."""
    print(f"{prefix}: {' '.join(message.split())}", file=sys.stderr)


def install_error(parser: argparse.ArgumentParser, prefix: str = PREFIX) -> None:
    """Make argparse's own errors of `parser` ('argument --repeats: invalid ...') the one
    `heat-pipeline:` line, exit status 2 (argparse's usage block is not printed)."""

    def error(message: str) -> NoReturn:
        report(message.removeprefix("argument "), prefix)
        raise SystemExit(2)

    parser.error = error  # type: ignore[method-assign]


# ------------------------------------------------------------------ argparse `type=` functions


def integer(low: int, high: int | None = None):
    """An integer in [low, high] (no upper bound if `high` is None)."""

    def parse(text: str) -> int:
        try:
            value: Any = int(text)
        except ValueError:
            value = text
        try:
            check_int("value", value, low, high)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(error.message) from None
        return value

    parse.__name__ = "integer"
    return parse


def positive_number(text: str) -> float:
    """A finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


# ------------------------------------------------------------------ checks after parsing


def check_device(device: str) -> None:
    """`--device cuda` needs a CUDA device torch can see."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BenchArgumentError("--device", "cuda: no CUDA device visible to torch on "
                                                 "this machine; expected --device cpu")


def check_writable(flag: str, path: Path) -> None:
    """`path` can be written: not a directory, and either a file that opens for appending (its
    contents untouched) or creatable: its nearest existing ancestor a directory in which a probe
    file can be made (missing folders below it are made when writing)."""
    try:
        if path.is_dir():
            raise BenchArgumentError(flag, f"{path} is a directory; expected a file path")
        if path.exists():
            if path.is_file():
                with open(path, "a"):
                    pass
            elif not os.access(path, os.W_OK):
                raise BenchArgumentError(flag, f"{path} is not writable")
            return
        ancestor = path.absolute().parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise BenchArgumentError(flag, f"cannot create {path}: {ancestor} is not a directory")
        _probe(flag, path, ancestor)
    except OSError as error:
        raise BenchArgumentError(flag, f"cannot write {path}: {error.strerror or error}") from None


def _probe(flag: str, path: Path, folder: Path) -> None:
    """Create and remove a file in `folder` (permissions, read-only mounts, pseudo file
    systems: what `os.access` cannot tell, for root least of all)."""
    try:
        descriptor, probe = tempfile.mkstemp(dir=folder, prefix=".heat-pipeline-probe-")
    except OSError as error:
        raise BenchArgumentError(flag, f"cannot create {path}: {folder} is not writable "
                                       f"({error.strerror or error})") from None
    os.close(descriptor)
    os.unlink(probe)


def check_plot_path(path: Path) -> None:
    """`--plot`: writable, matplotlib installed, a file type it writes (from the suffix)."""
    check_writable("--plot", path)
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as error:
        raise BenchArgumentError("--plot", f"needs matplotlib, which cannot be imported "
                                           f"({error})") from None
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.suffix.lower().removeprefix(".") not in formats:
        raise BenchArgumentError("--plot", f"{path}: expected a file ending in .png (or another "
                                           f"format matplotlib writes: {', '.join(formats)})")


def check_outputs(out: Path | None, plot: Path | None) -> None:
    if out is not None:
        check_writable("--out", out)
    if plot is not None:
        check_plot_path(plot)
    if out is not None and plot is not None and out.absolute() == plot.absolute():
        raise BenchArgumentError("--plot", f"{plot} is also the --out file; expected another "
                                           f"path")
