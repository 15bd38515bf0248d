"""How far each approximate attention kernel of a trained model is from its exact counterpart.

HEAT approximates exact Hadamard attention well on q, k ~ N(0, 1), the measure its basis is
fitted for, not on what a trained model feeds it. `diagnose_model` captures at every attention
site and layer the kernel's q, k, v and masks and reports there `rel_error` (||approx - exact|| /
||exact|| over the real queries, exact = `exact_counterpart(spec)`: 0 for an exact kernel),
`rel_error_gaussian` (the same with q, k ~ N(0, 1), v and masks kept) and, for `heat` and
`hadamard`, per head q's and k's std, fraction beyond 2 sigma and fraction beyond the bound R as
R tanh(x / R) sees them (after `input_norm`). `diagnose_job` runs it on a pipeline variant's best
weights, `log_diagnostics` tracks it (`diag/<site>.<layer>/...`); the command that runs it on a
finished run is `pipeline.diagnostics_cli`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from heat.attention import AttentionKernel, build_attention, exact_counterpart
from heat.attention.hadamard import normalised
from heat.models import EncoderClassifier, Seq2SeqTransformer
from pipeline.batching import load_rank_rows, special_ids, token_budget_batches

SITE_ORDER = ("encoder_self", "decoder_self", "decoder_cross")
BOUNDED_VARIANTS = ("heat", "hadamard")
"""The variants whose inputs pass through R tanh(x / R): their q and k statistics are reported."""
GAUSSIAN_SEED = 0
METRICS_PER_CALL = 500  # MLflow's log_batch takes at most 1000 metrics

Model = Seq2SeqTransformer | EncoderClassifier


@dataclass(frozen=True)
class InputStats:
    """Per head, of q or k as the bound sees them, over the valid positions."""

    std: list[float]
    beyond_2sigma: list[float]
    """Fraction of entries with |x| > 2 sigma (sigma of the basis's input measure)."""
    clipped: list[float]
    """Fraction of entries with |x| > R, the bound."""

    FIGURES = ("std", "beyond_2sigma", "clipped")

    def max(self, figure: str) -> float:
        return max(getattr(self, figure))


@dataclass(frozen=True)
class SiteDiagnostic:
    """One attention site of one layer: its kernel's error against the exact counterpart."""

    site: str
    """'encoder_self', 'decoder_self' or 'decoder_cross'."""
    layer: int
    variant: str
    """The pipeline variant (`diagnose_model`: the site's kernel name)."""
    attention: str
    """The variant the site runs (a decoder site may have fallen back to softmax)."""
    exact: str
    """The exact counterpart's name."""
    rel_error: float
    rel_error_gaussian: float
    q: InputStats | None = None
    k: InputStats | None = None
    task: str = ""

    @property
    def key(self) -> str:
        return f"{self.site}.{self.layer}"

    @property
    def ratio(self) -> float | None:
        """rel_error / rel_error_gaussian; None when the gaussian error is 0 (exact kernels)."""
        return self.rel_error / self.rel_error_gaussian if self.rel_error_gaussian > 0 else None

    def figures(self) -> dict[str, float]:
        """Every figure by name: errors, ratio, per head `q_std.h0` ... and `q_std_max` ..."""
        out = {"rel_error": self.rel_error, "rel_error_gaussian": self.rel_error_gaussian,
               **({"ratio": self.ratio} if self.ratio is not None else {})}
        for name, stats in (("q", self.q), ("k", self.k)):
            for figure in InputStats.FIGURES if stats is not None else ():
                out[f"{name}_{figure}_max"] = stats.max(figure)
                out |= {f"{name}_{figure}.h{h}": v for h, v in enumerate(getattr(stats, figure))}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio,
                **{k: v for k, v in self.figures().items() if k.endswith("_max")}}


# ---------------------------------------------------------------------------------------------
# Capturing the kernels' calls


@dataclass
class _Call:
    q: Tensor
    k: Tensor
    v: Tensor
    key_padding_mask: Tensor | None
    query_padding_mask: Tensor | None
    causal: bool
    output: Tensor


def attention_sites(model: Model) -> list[tuple[str, int, AttentionKernel]]:
    """(site, layer, kernel) of every attention site of the model."""
    sites = [("encoder_self", i, layer.self_attention.kernel)
             for i, layer in enumerate(model.encoder.layers)]
    for i, layer in enumerate(getattr(getattr(model, "decoder", None), "layers", ())):
        sites += [("decoder_self", i, layer.self_attention.kernel),
                  ("decoder_cross", i, layer.cross_attention.kernel)]
    return sorted(sites, key=lambda s: (SITE_ORDER.index(s[0]), s[1]))


@contextmanager
def _captured(kernels: list[AttentionKernel]) -> Iterator[dict[int, _Call]]:
    """The calls of the kernels (by position in `kernels`) while the block runs."""
    calls: dict[int, _Call] = {}

    def hook_for(index: int):
        def hook(module, args, kwargs, output):
            q, k, v = (*args, *(kwargs.get(name) for name in ("q", "k", "v")))[:3]
            calls[index] = _Call(q, k, v, kwargs.get("key_padding_mask"),
                                 kwargs.get("query_padding_mask"), bool(kwargs.get("causal")),
                                 output)
        return hook

    handles = [kernel.register_forward_hook(hook_for(i), with_kwargs=True)
               for i, kernel in enumerate(kernels)]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _run(model: Model, batch: dict[str, Tensor]) -> None:
    if isinstance(model, Seq2SeqTransformer):
        model(batch["src"], batch["tgt_in"])
    else:
        model(batch["input_ids"], batch.get("segment_ids"))


# ---------------------------------------------------------------------------------------------
# Accumulating the figures of one site over batches


@dataclass
class _HeadSums:
    """Per head (columns), over real positions: count, sum, sum of squares, count beyond
    2 sigma, count beyond the bound (rows)."""

    sigma: float
    bound: float
    sums: Tensor

    def add(self, x: Tensor, valid: Tensor) -> None:
        """x (B, H, L, d); valid (B, L) True at real positions."""
        x = x.double()
        keep = valid[:, None, :, None].to(x.dtype).expand_as(x)
        parts = (keep, x, x * x, x.abs() > 2 * self.sigma, x.abs() > self.bound)
        self.sums += torch.stack([(part * keep).sum((0, 2, 3)).cpu() for part in parts])

    def stats(self) -> InputStats:
        count, total, squares, beyond, clipped = self.sums
        count = count.clamp(min=1.0)
        std = (squares / count - (total / count) ** 2).clamp(min=0.0).sqrt()
        return InputStats(std.tolist(), (beyond / count).tolist(), (clipped / count).tolist())


@dataclass
class _SiteSums:
    site: str
    layer: int
    kernel: AttentionKernel
    exact: AttentionKernel
    squares: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("diff", "exact", "gauss_diff", "gauss_exact"), 0.0))
    q: _HeadSums | None = None
    k: _HeadSums | None = None

    @classmethod
    def of(cls, site: str, layer: int, kernel: AttentionKernel) -> _SiteSums:
        spec = kernel.spec
        exact = build_attention(exact_counterpart(spec), head_dim=kernel.head_dim,
                                num_heads=kernel.num_heads)
        sums = cls(site, layer, kernel, exact)
        if spec.name in BOUNDED_VARIANTS:
            sigma = float(getattr(spec, "sigma", 1.0))
            sums.q, sums.k = (_HeadSums(sigma, spec.bound,
                                        torch.zeros(5, kernel.num_heads, dtype=torch.float64))
                              for _ in range(2))
        return sums

    def add(self, call: _Call, generator: torch.Generator) -> None:
        query_valid = _query_valid(call)
        masks = {"key_padding_mask": call.key_padding_mask,
                 "query_padding_mask": call.query_padding_mask, "causal": call.causal}
        exact = self.exact.to(call.q.device)(call.q, call.k, call.v, **masks)
        self._add_error("diff", "exact", call.output, exact, query_valid)
        q, k = (torch.randn(x.shape, generator=generator, dtype=torch.float64)
                .to(device=x.device, dtype=x.dtype) for x in (call.q, call.k))
        approx = self.kernel(q, k, call.v, **masks)
        self._add_error("gauss_diff", "gauss_exact", approx, self.exact(q, k, call.v, **masks),
                        query_valid)
        if self.q is not None and self.k is not None:
            norm = getattr(self.kernel.spec, "input_norm", "none")
            key_valid = _valid(call.key_padding_mask, call.k)
            self.q.add(normalised(call.q.double(), norm), query_valid)
            self.k.add(normalised(call.k.double(), norm), key_valid)

    def _add_error(self, diff: str, exact: str, approx: Tensor, reference: Tensor,
                   valid: Tensor) -> None:
        keep = valid[:, None, :, None].to(torch.float64)
        error = (approx.double() - reference.double()) * keep
        self.squares[diff] += float(error.pow(2).sum())
        self.squares[exact] += float((reference.double() * keep).pow(2).sum())

    def result(self) -> SiteDiagnostic:
        s = self.squares
        return SiteDiagnostic(
            site=self.site, layer=self.layer, variant=self.kernel.spec.name,
            attention=self.kernel.spec.name, exact=self.exact.spec.name,
            rel_error=_ratio(s["diff"], s["exact"]),
            rel_error_gaussian=_ratio(s["gauss_diff"], s["gauss_exact"]),
            q=self.q.stats() if self.q is not None else None,
            k=self.k.stats() if self.k is not None else None)


def _ratio(diff: float, reference: float) -> float:
    return math.sqrt(diff / reference) if reference > 0 else math.sqrt(diff)


def _valid(padding_mask: Tensor | None, x: Tensor) -> Tensor:
    """(B, L) True at real positions of x (B, H, L, d)."""
    if padding_mask is None:
        return torch.ones(x.shape[0], x.shape[2], dtype=torch.bool, device=x.device)
    return ~padding_mask


def _query_valid(call: _Call) -> Tensor:
    """The real queries: the query padding, else for self-attention (n = m) the key padding."""
    if call.query_padding_mask is None and call.q.shape[2] == call.k.shape[2]:
        return _valid(call.key_padding_mask, call.q)
    return _valid(call.query_padding_mask, call.q)


# ---------------------------------------------------------------------------------------------
# Models, jobs


@torch.no_grad()
def diagnose_model(model: Model, batches: Iterable[dict[str, Tensor]], *,
                   max_rows: int | None = None) -> list[SiteDiagnostic]:
    """One row per attention site and layer, the figures summed over `batches` (the keyword
    dicts the model's objective takes; at most `max_rows` rows of each)."""
    sites = attention_sites(model)
    sums = [_SiteSums.of(site, layer, kernel) for site, layer, kernel in sites]
    generator = torch.Generator().manual_seed(GAUSSIAN_SEED)
    device = next(model.parameters()).device
    training, _ = model.training, model.eval()
    try:
        for batch in batches:
            batch = {name: tensor[:max_rows].to(device) for name, tensor in batch.items()}
            with _captured([kernel for _, _, kernel in sites]) as calls:
                _run(model, batch)
            for index, call in sorted(calls.items()):
                sums[index].add(call, generator)
    finally:
        model.train(training)
    return [site.result() for site in sums]


def validation_batches(job: Any, model: Model, count: int) -> list[dict[str, Tensor]]:
    """The first `count` token-budget batches of the job's validation split, as validation
    reads them (`pipeline.training.worker`)."""
    from pipeline.training.rankdata import split_tables

    examples = load_rank_rows(split_tables(job.split_uri("validation")), job.task, 0, 1)
    indices = token_budget_batches(examples.lengths(), job.train.tokens_per_batch,
                                   batch_tokens=job.train.batch_tokens)[:count]
    return [examples.collate(batch, *special_ids(model.config)) for batch in indices]


def diagnose_job(job: Any, variant: Any, *, batches: int = 4, max_rows: int | None = None,
                 device: torch.device | str | None = None) -> list[SiteDiagnostic]:
    """`diagnose_model` of the variant's best weights (`job.checkpoint_uri`) on the first
    `batches` validation batches; on the GPU when the job trains on one and one is here."""
    from pipeline.training.outputs import load_model

    if device is None:
        device = "cuda" if job.train.use_gpu and torch.cuda.is_available() else "cpu"
    with _quiet_fallbacks():
        model = load_model(job.checkpoint_uri(variant.name)).to(device)
    rows = diagnose_model(model, validation_batches(job, model, batches), max_rows=max_rows)
    return [replace(row, variant=variant.name, task=job.task) for row in rows]


@contextmanager
def _quiet_fallbacks() -> Iterator[None]:
    """Without the warnings of decoder sites falling back to softmax (logged when the run
    started; a row's `attention` says what its site runs)."""
    sites_log = logging.getLogger("heat.sites")
    sites_log.disabled, was = True, sites_log.disabled
    try:
        yield
    finally:
        sites_log.disabled = was


def log_diagnostics(job: Any, variant: Any, rows: list[SiteDiagnostic], *, step: int = 0) -> None:
    """Every figure into the variant's MLflow child run as `diag/<site>.<layer>/<figure>`."""
    from pipeline.training.run_log import VariantLog

    items = [(f"diag/{row.key}/{name}", value) for row in rows
             for name, value in row.figures().items()]
    log = VariantLog.of(job, variant)
    for start in range(0, len(items), METRICS_PER_CALL):
        log.metrics(dict(items[start:start + METRICS_PER_CALL]), step=step)


# ---------------------------------------------------------------------------------------------
# Showing them


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_diagnostics(rows: list[SiteDiagnostic]) -> str:
    """An aligned text table, one line per (variant, site, layer); the q and k figures are the
    maxima over heads."""
    header = ["task", "variant", "site", "layer", "rel_error", "gaussian", "ratio",
              "q std", "q >2s", "q clip", "k std", "k >2s", "k clip"]
    lines = []
    for row in rows:
        stats = [_number(s.max(f) if s is not None else None)
                 for s in (row.q, row.k) for f in InputStats.FIGURES]
        lines.append([row.task, row.variant, row.site, str(row.layer), _number(row.rel_error),
                      _number(row.rel_error_gaussian), _number(row.ratio), *stats])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    widths[0] *= any(row.task for row in rows)  # no task column when no row has one
    return "\n".join("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(r, widths)) if w).rstrip()
                     for r in [header, ["-" * w for w in widths], *lines])


def plot_diagnostics(rows: list[SiteDiagnostic], path: str) -> str:
    """PNG: per (task, variant) with an approximate site, the rel_error of each such site and
    layer as bars (log scale), the gaussian error as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[SiteDiagnostic]] = {}
    for row in rows:  # exact variants (0 at every site) get no panel
        if row.rel_error > 0 or row.rel_error_gaussian > 0:
            groups.setdefault((row.task, row.variant), []).append(row)
    count = max(len(groups), 1)
    figure, axes = plt.subplots(count, 1, figsize=(8, 2.4 * count), squeeze=False)
    for axis, ((task, variant), items) in zip(axes[:, 0], groups.items()):
        x = range(len(items))
        errors = [r.rel_error if r.rel_error > 0 else float("nan") for r in items]
        gaussian = [r.rel_error_gaussian if r.rel_error_gaussian > 0 else float("nan")
                    for r in items]
        positive = [v for v in [*errors, *gaussian] if v == v]
        if positive:  # bars from a floor below the smallest error, on a log scale
            floor = min(positive) / 4
            axis.set_yscale("log")
            axis.set_ylim(floor, max(positive) * 4)
            axis.bar(x, [e - floor for e in errors], bottom=floor, color="tab:blue",
                     label="trained q, k")
            axis.plot(x, gaussian, "o", color="tab:orange", label="q, k ~ N(0, 1)")
            axis.legend(fontsize=7)
        else:
            axis.text(0.5, 0.5, "exact at every site: 0", ha="center", transform=axis.transAxes)
        axis.set_xticks(list(x), [r.key for r in items], fontsize=7)
        axis.set_title(f"{task + ': ' if task else ''}{variant}", fontsize=9)
        axis.set_ylabel("rel. error")
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
