"""`heat-pipeline bench attention`: time, memory and accuracy of every attention variant.

For each sequence length n and each variant configuration (ranks, orders, landmarks from the
command line) it measures, side by side in one process, the median forward time (no autograd),
the median forward+backward time, the peak memory of one forward+backward above what was held
before it (measured after the timings), and the relative output error against the exact
counterpart (`AttentionSpec.exact_counterpart`: `heat` against `hadamard`, the other
approximations against softmax) on the same inputs. Repeats are interleaved across
variants (repeat 1 of every variant, then repeat 2, ...) so drifting load on a shared machine hits
all of them alike; ratios are therefore more trustworthy than absolute times.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` minus what was allocated before. On the
CPU, the resident-set high-water mark (Linux `VmHWM`, reset through `/proc/self/clear_refs`) minus
the resident set before; null with a reason elsewhere.

Output: a JSON list of records `{"variant", "params", "n", "causal", "device", "dtype", "fwd_ms",
"fwd_bwd_ms", "peak_mem_mb", "rel_error", ...}`; a value that could not be measured is null and
`skipped` (or `error_skipped`) says why. Optional plot: time against n, log-log, one line per
variant configuration, SDPA as the reference, the crossover marked.

Bad arguments: one `heat-pipeline: bench attention: FLAG: ...` line on stderr, exit status 2,
before any benchmarking work (`checks`; the variant specs' own checks are reported under the flag
that set the value).

Modules: `cases` (the variant configurations, from the registry and each spec's sweeps),
`measurement` (timing, peak memory), `runner` (a run over every n), `report` (table, plot),
`checks` (argument checks), `cli`.
"""

from pipeline.bench import measurement
from pipeline.bench.cases import REFERENCE, Case, build_cases
from pipeline.bench.checks import BenchArgumentError
from pipeline.bench.cli import configure, main
from pipeline.bench.measurement import PeakMemory
from pipeline.bench.report import format_table, plot
from pipeline.bench.runner import run

__all__ = ["REFERENCE", "BenchArgumentError", "Case", "PeakMemory", "build_cases", "configure",
           "format_table", "main", "measurement", "plot", "run"]
