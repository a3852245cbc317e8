"""The three paper suites of ``benchmarks/run.py``: which shipped configs they run, what
``--quick`` / ``--smoke`` change, and how each paper's qualitative claims are checked.

Every run is a file of ``configs/experiment/`` (``<task>_<dataset>_<method>-<paper>.yaml``) plus
optional per-run overrides (SAT's ε in the AMAT suite). The full settings are the configs as
shipped; ``--quick`` applies the small per-group overrides below (smaller networks, fewer
epochs, smaller images for the slow dense tasks) so each suite finishes in about 20 minutes on
2 CPU cores, still on the real data and with the same test-time attack suite. The claim checks
use rules fixed here, before any measurement, each restated as tests on confidence intervals
(:mod:`benchmarks.paper_evidence`): "confirmed" / "refuted" / "inconclusive", with the numbers,
the intervals, n and the smallest effect n could detect either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

Overrides = dict[str, Any]


def _main_metric(task: str) -> str:
    """The task's main metric, from its module (the one home: ``TaskModule.main_metric``)."""
    from lightning_modules.tasks import model_task

    return model_task(task).module.main_metric


@dataclass
class Run:
    """One training + test run of a suite."""

    key: str                 # unique in the suite, e.g. "pneumoniamnist/sat"
    group: str               # dataset or task: one table and one figure per group
    method: str              # row label in the tables
    config: str              # stem of a file in configs/experiment/
    overrides: Overrides = field(default_factory=dict)  # applied in every mode


@dataclass
class Group:
    """A dataset/task of a suite: its title, main metric and per-mode overrides."""

    name: str
    title: str
    metric: str
    quick: Overrides = field(default_factory=dict)
    #: factor applied to every L2 budget in --quick (the images are smaller: an L2 ball keeps its
    #: per-pixel RMS size when scaled by sqrt(pixels_quick / pixels_full))
    quick_l2_scale: float = 1.0
    secondary: str | None = None


@dataclass
class Suite:
    name: str
    title: str
    paper: str
    groups: list[Group]
    runs: list[Run]
    claims: Callable[[dict[str, Any]], list[dict[str, str]]]
    #: (attack label, ε) columns of the main tables: None → every attack × ε of the record
    log_eps: bool = False
    headline_eps: float | None = None
    noise: bool = False

    def group(self, name: str) -> Group:
        return next(g for g in self.groups if g.name == name)


# ------------------------------------------------------------------------------ overrides
#: applied on top of --quick by --smoke (the test of the runner): a few steps on a sliver of the
#: real data; the numbers mean nothing, the machinery is the same.
SMOKE: Overrides = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "trainer.callbacks[AdversarialEvaluation].init_args.subset": 8,
    "trainer.callbacks[AdversarialEvaluation].init_args.test_subset": 8,
    "trainer.callbacks[AdversarialEvaluation:noise].init_args.test_subset": 8,
    "attack_steps": 2,  # every attack in the evaluation callbacks and the training method
}

_CNN = "model.init_args.net.init_args"
_ADV = "trainer.callbacks[AdversarialEvaluation].init_args"


def _stages(epochs: int) -> list[list[float]]:
    half = epochs // 2
    return [[0.001, half], [0.002, epochs - half]]


_SMALL_DENOISER = {"class_path": "lightning_modules.nets.DenoisingAutoEncoder",
                   "init_args": {"features": [8, 16]}}


def classification_groups(staged: bool) -> list[Group]:
    """PneumoniaMNIST and PH2 classification, shared by Xue and Joel. --quick: a smaller CNN
    (one conv per stage) and denoising auto-encoder, 6 / 20 epochs, PH2 at 64×64, the
    per-epoch check (which picks the checkpoint) every 2 epochs; ``staged``: the ε stages follow
    the shorter training (first half 0.001, second half 0.002)."""
    groups = []
    for name, title, secondary, epochs, quick in (
            ("pneumoniamnist", "chest X-ray (PneumoniaMNIST, 28×28)", "auroc", 6,
             {f"{_CNN}.features": [16, 32, 64]}),
            ("ph2", "skin lesions (PH2, 3 classes)", "balanced_accuracy", 20,
             {"data.init_args.image_size": [64, 64], f"{_CNN}.features": [8, 16, 32, 64]})):
        quick = {"trainer.max_epochs": epochs, **quick, f"{_CNN}.convs_per_stage": 1,
                 "model.init_args.method[Denoise].init_args.denoiser": _SMALL_DENOISER,
                 f"{_ADV}.every_n_epochs": 2,
                 "trainer.callbacks[ModelCheckpoint].init_args.every_n_epochs": 2}
        if staged:
            quick["model.init_args.method[SAT].init_args.stages"] = _stages(epochs)
        groups.append(Group(name, title, _main_metric("classification"), quick=quick, secondary=secondary))
    return groups


# ------------------------------------------------------------------------------ claim helpers
# Every rule is a test on an interval (benchmarks/paper_evidence.py): confirmed when the interval
# lies on the claim's side of its threshold, refuted when it lies on the other side, inconclusive
# otherwise; a rule of several parts is their conjunction (confirmed only when every part is,
# refuted when any part is). Time ratios have no sampling interval: point comparisons, labelled.
def _record(rec: Any) -> Any:
    """A robustness record of ``results.json`` (its JSON dict), typed; ``None`` stays ``None``."""
    from callbacks.record import RobustnessRecord

    return None if rec is None else RobustnessRecord.coerce(rec, "results.json record")


def _seeds(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    from benchmarks.paper_evidence import seed_entries

    return seed_entries(entry or {})


def _value(entry: dict[str, Any] | None, attack: str | None, eps: float | None, metric: str,
           kind: str = "test") -> float:
    """A metric of a run's ``kind`` record — clean (attack None) or one attack/ensemble at ε —
    averaged over the run's seeds (``nan`` where missing)."""
    vals = []
    for e in _seeds(entry):
        rec = e.get(kind)
        v = _record(rec).value(metric, attack, eps) if rec else None
        vals.append(math.nan if v is None else float(v))
    return _mean(vals)


def _entries_mean(entry: dict[str, Any] | None, metric: str, kind: str = "test") -> float:
    """``metric`` averaged over every attack × ε entry of a run's ``kind`` record (and its seeds)."""
    per_seed = []
    for e in _seeds(entry):
        rec = e.get(kind)
        if rec:
            per_seed.append(_mean([math.nan if x.metrics.get(metric) is None else float(x.metrics[metric])
                                   for x in _record(rec).attacks]))
    return _mean(per_seed)


def _attack_columns(entry: dict[str, Any], metric: str, kind: str = "test") -> list[str]:
    """The per-sample columns of every attack × ε entry of a run's ``kind`` record."""
    from callbacks.per_sample import column_name

    rec = _record(entry.get(kind))
    return [] if rec is None else [column_name(x.attack, metric, x.eps) for x in rec.attacks]


def sample_metric(task: str) -> str:
    """The name of the task's per-sample metric in the per-sample files (detection: ``ap50``,
    the per-image AP@0.5; the others: their main metric)."""
    from callbacks.per_sample import metric_name
    from lightning_modules.tasks import model_task

    return metric_name(model_task(task).module)


def _mean(values: list[float]) -> float:
    vals = [v for v in values if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _f(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def _n_seeds(*entries: dict[str, Any] | None) -> str:
    n = max((len(_seeds(e)) for e in entries if e), default=1)
    return f" (mean of {n} seeds)" if n > 1 else ""


def _claim(claim: str, measured: str, tests: list[Any], verdict: str | None = None,
           basis: str = "interval", point: str | None = None) -> dict[str, str]:
    """One row of the claims table: the rule, the point values, each interval test with its n
    and smallest detectable effect, the verdict (the conjunction of the tests unless given) and
    what the point estimates alone would say (``point``; default: the conjunction of the tests'
    point verdicts)."""
    from benchmarks.paper_evidence import all_of, point_reading, tests_summary

    out = {"claim": claim, "measured": measured, "tests": tests_summary(tests) if tests else "–",
           "verdict": verdict if verdict is not None else all_of([t.verdict for t in tests]), "basis": basis}
    reading = point if point is not None else (point_reading(tests) if basis == "interval" else None)
    if reading is not None:
        out["point_verdict"] = reading
    return out


#: MedMNIST v2's ResNet-18 (28) on PneumoniaMNIST's test split, and how far below we still call "at the level"
MEDMNIST_ACC, MEDMNIST_AUC, MEDMNIST_SLACK = 0.854, 0.944, 0.02


def medmnist_check(results: dict[str, Any], keys: list[str]) -> list[dict[str, str]]:
    """Clean PneumoniaMNIST vs MedMNIST v2's ResNet-18 (28): ACC 0.854, AUC 0.944 (test)."""
    from benchmarks.paper_evidence import (
        IntervalTest,
        Term,
        column,
        dataset_estimate,
        linear_estimate,
    )

    out = []
    for key in keys:
        entry = results.get(key, {})
        if entry.get("test") is None:
            continue
        acc, auc = _value(entry, None, None, "accuracy"), _value(entry, None, None, "auroc")
        tests = [
            IntervalTest("clean accuracy", linear_estimate([Term(entry, column("clean/accuracy"), fallback=("clean", None),
                                                                 fallback_metric="accuracy")]),
                         "greater", MEDMNIST_ACC - MEDMNIST_SLACK, point=acc),
            # AUROC is not a mean of per-sample values: bootstrap over images from the scores
            # each run keeps (robustness_evidence.json), or the record's interval
            IntervalTest("clean AUROC", dataset_estimate(entry, "auroc"),
                         "greater", MEDMNIST_AUC - MEDMNIST_SLACK, point=auc),
        ]
        out.append(_claim(
            f"MedMNIST v2: ResNet-18 (28) reaches test ACC {MEDMNIST_ACC} / AUC {MEDMNIST_AUC} on PneumoniaMNIST "
            f"(sanity level for clean training; rule: both above the paper's value − {MEDMNIST_SLACK} — a "
            "conjunction: confirmed when both intervals lie above, refuted when either lies below)",
            f"`{key}` ({entry.get('params')} parameters): test ACC {_f(acc)}, AUC {_f(auc)}{_n_seeds(entry)} "
            f"on all {_record(entry['test']).subset.size} test images", tests))
    return out


# ------------------------------------------------------------------------------ Xue et al. 2019
def _difference(a: dict[str, Any], b: dict[str, Any], values: Any, kind: str = "test",
                fallback: tuple[str, float | None] | None = None, fallback_metric: str | None = None) -> Any:
    """The paired estimate of mean(values of run ``a``) − mean(values of run ``b``) on their shared samples."""
    from benchmarks.paper_evidence import Term, linear_estimate

    return linear_estimate([Term(a, values, 1.0, kind, fallback, fallback_metric),
                            Term(b, values, -1.0, kind, fallback, fallback_metric)])


def xue_claims(results: dict[str, Any]) -> list[dict[str, str]]:
    from benchmarks.paper_evidence import IntervalTest, columns_mean

    out = []
    for ds in ("pneumoniamnist", "ph2"):
        recs = {m: results.get(f"{ds}/{m}", {}) for m in ("clean", "sat", "denoise")}
        if not all(r.get("test") for r in recs.values()):
            continue
        a = {m: _entries_mean(r, "accuracy") for m, r in recs.items()}
        n = {m: _entries_mean(r, "accuracy", "noise") for m, r in recs.items()}
        c = {m: _value(r, None, None, "accuracy") for m, r in recs.items()}
        adv_cols = columns_mean(_attack_columns(recs["clean"], "accuracy"))
        noise_cols = columns_mean(_attack_columns(recs["clean"], "accuracy", "noise"))
        adv = IntervalTest("denoise − clean, mean adversarial accuracy",
                           _difference(recs["denoise"], recs["clean"], adv_cols), "greater",
                           point=a["denoise"] - a["clean"])
        noise = IntervalTest("denoise − clean, mean noise accuracy",
                             _difference(recs["denoise"], recs["clean"], noise_cols, "noise"), "greater",
                             point=n["denoise"] - n["clean"])
        out.append(_claim(
            f"[{ds}] the denoising mechanism improves robustness to adversarial perturbation "
            "and to general noise over clean training (rule: the paired differences denoise − clean of the "
            "mean accuracy over all FGSM/BIM/PGD × ε entries and over all noise entries both above 0 — a "
            "conjunction: confirmed when both intervals lie above 0, refuted when either lies below)",
            f"mean adversarial accuracy clean {_f(a['clean'])} / SAT {_f(a['sat'])} / denoise "
            f"{_f(a['denoise'])}; mean noise accuracy clean {_f(n['clean'])} / SAT {_f(n['sat'])} / "
            f"denoise {_f(n['denoise'])}; clean accuracy clean {_f(c['clean'])} / SAT {_f(c['sat'])} / "
            f"denoise {_f(c['denoise'])}{_n_seeds(*recs.values())}", [adv, noise]))
        sat = IntervalTest("SAT − clean, mean adversarial accuracy",
                           _difference(recs["sat"], recs["clean"], adv_cols), "greater",
                           point=a["sat"] - a["clean"])
        out.append(_claim(
            f"[{ds}] adversarial training (SAT) improves adversarial robustness over clean training "
            "(rule: the paired difference SAT − clean of the mean adversarial accuracy above 0)",
            f"clean {_f(a['clean'])}, SAT {_f(a['sat'])}{_n_seeds(recs['clean'], recs['sat'])}", [sat]))
    return out + medmnist_check(results, ["pneumoniamnist/clean"])


XUE = Suite(
    name="xue2019",
    title="Xue et al. 2019 — denoising CNNs: clean vs SAT vs denoise",
    paper="Xue et al.: Improving robustness of medical image diagnosis with denoising "
          "convolutional neural networks, MICCAI 2019",
    groups=classification_groups(staged=False),
    runs=[Run(f"{ds}/{m}", ds, label, f"classification_{ds}_{m}-xue2019")
          for ds in ("pneumoniamnist", "ph2")
          for m, label in (("clean", "clean"), ("sat", "SAT"), ("denoise", "denoise"))],
    claims=xue_claims,
    noise=True,
)


# ------------------------------------------------------------------------------ Joel et al. 2022
JOEL_EPS = 0.004

#: Joel et al.'s resolution axis: the same PH2 runs, ε grid and attacks at three image sides, a
#: factor 2 apart: (group, side in the full settings, side in --quick). The paper's CT,
#: mammography and MRI inputs are hundreds of pixels across; PneumoniaMNIST (28×28) is not, and
#: "small ε collapses accuracy" did not hold there. PH2 (stored at 191×143 here) is the set that
#: can be read at several sizes. --quick stops at 128 (no upsampling past the stored images, and
#: a 128-px PH2 pair of runs costs ~4× the 64-px pair, ~10 min on one core); the full settings go
#: to 224, the size of the paper-era ImageNet networks.
JOEL_PH2_SIZES: tuple[tuple[str, int, int], ...] = (
    ("ph2_half", 64, 32), ("ph2", 128, 64), ("ph2_double", 224, 128))


def _size(side: int) -> Overrides:
    return {"data.init_args.image_size": [side, side]}


def joel_groups() -> list[Group]:
    """PneumoniaMNIST and PH2 at the three sides of :data:`JOEL_PH2_SIZES`. The PH2 groups share
    every quick override (network, epochs, ε stages) but the image size, so size is the only axis."""
    pneu, ph2 = classification_groups(staged=True)
    groups = [pneu]
    for name, full, quick in JOEL_PH2_SIZES:
        groups.append(replace(ph2, name=name, title=f"skin lesions (PH2, 3 classes), {quick}×{quick} "
                                                      f"(quick) / {full}×{full} (full)",
                              quick={**ph2.quick, **_size(quick)}))
    return groups


def _joel_runs() -> list[Run]:
    runs = [Run(f"pneumoniamnist/{m}", "pneumoniamnist", label, f"classification_pneumoniamnist_{cfg}-joel2022")
            for m, label, cfg in (("naive", "naive (clean)", "clean"), ("staged", "staged SAT", "sat-staged"))]
    # the shipped 128 px group first, then the cheap small side, then the costly large one
    for name, full, _quick in sorted(JOEL_PH2_SIZES, key=lambda g: g[2] if g[0] != "ph2" else 0):
        runs += [Run(f"{name}/{m}", name, label, f"classification_ph2_{cfg}-joel2022",
                     {} if name == "ph2" else _size(full))
                 for m, label, cfg in (("naive", "naive (clean)", "clean"), ("staged", "staged SAT", "sat-staged"))]
    return runs


def _image_side(entry: dict[str, Any], full: int) -> int:
    """The image side a run used: its applied size override (--quick, per-run) or the full side."""
    size = (entry.get("overrides") or {}).get("data.init_args.image_size")
    return int(size[0]) if size else full


def _eps_half(entry: dict[str, Any]) -> float:
    """The smallest ε of the grid where the worst case (mean over seeds) falls below half of the
    clean accuracy."""
    clean = _value(entry, None, None, "accuracy")
    for e in sorted(x.eps for x in _record(entry["test"]).ensemble):
        if _value(entry, "ensemble", e, "accuracy") < 0.5 * clean:
            return e
    return math.nan


def _kept_difference(small: dict[str, Any], large: dict[str, Any]) -> Any:
    """The paired two-level estimate of kept(small) − kept(large), ``kept`` = worst-case accuracy
    at ε = JOEL_EPS / clean accuracy of a naive run: a ratio of means, bootstrapped as a whole."""
    import numpy as np

    from benchmarks.paper_evidence import Term, column, statistic_interval
    from callbacks.per_sample import column_name

    worst, clean = column(column_name("worst", "accuracy", JOEL_EPS)), column("clean/accuracy")

    def stat(m: list[Any]) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            return m[0] / m[1] - m[2] / m[3]

    return statistic_interval([Term(small, worst), Term(small, clean), Term(large, worst), Term(large, clean)], stat)


def joel_size_claim(results: dict[str, Any], sides: dict[str, int]) -> list[dict[str, str]]:
    """Does the naive model's collapse at ε = JOEL_EPS depend on the image size? ``sides``:
    group → image side of its runs, for the PH2 groups."""
    from benchmarks.paper_evidence import IntervalTest

    pts = []
    for name, side in sorted(sides.items(), key=lambda kv: kv[1]):
        entry = results.get(f"{name}/naive", {})
        if entry.get("test") is not None:
            clean = _value(entry, None, None, "accuracy")
            kept = _value(entry, "ensemble", JOEL_EPS, "accuracy") / clean if clean > 0 else math.nan
            pts.append((side, clean, kept, _eps_half(entry), _record(entry["test"]).subset.size, entry))
    if len(pts) < 2:
        return []
    tests = [IntervalTest(f"kept {a[0]}×{a[0]} − kept {b[0]}×{b[0]}", _kept_difference(a[5], b[5]), "greater",
                          point=a[2] - b[2])
             for a, b in zip(pts, pts[1:])]
    if len(pts) > 2:
        tests.append(IntervalTest(f"kept {pts[0][0]}×{pts[0][0]} − kept {pts[-1][0]}×{pts[-1][0]}",
                                  _kept_difference(pts[0][5], pts[-1][5]), "greater", point=pts[0][2] - pts[-1][2]))
    return [_claim(
        f"[PH2, sides {', '.join(str(p[0]) for p in pts)}] the naive model's collapse at small ε depends "
        f"on the image size (rule: the fraction of its clean accuracy kept under the worst case at ε = "
        f"{JOEL_EPS} falls at every step up in size and from the smallest to the largest side: each paired "
        "difference of kept fractions above 0 — a conjunction: confirmed when every interval lies above 0, refuted "
        "when any lies below. The point rule's 'by at least 0.15' stood for about two standard errors at 40 test "
        "images; the intervals now carry that)",
        "; ".join(f"{s}×{s}: clean {_f(c)}, kept {_f(k)} at ε = {JOEL_EPS}, worst case below half of "
                  f"clean from ε = {'never' if not math.isfinite(e) else f'{e:g}'} ({n} test images){_n_seeds(en)}"
                  for s, c, k, e, n, en in pts), tests)]


def joel_claims(results: dict[str, Any]) -> list[dict[str, str]]:
    from benchmarks.paper_evidence import IntervalTest, Term, column, linear_estimate
    from callbacks.per_sample import column_name

    worst, clean = column(column_name("worst", "accuracy", JOEL_EPS)), column("clean/accuracy")
    out = []
    for ds in ["pneumoniamnist", *(g[0] for g in JOEL_PH2_SIZES)]:
        naive, staged = results.get(f"{ds}/naive", {}), results.get(f"{ds}/staged", {})
        if naive.get("test") is None or staged.get("test") is None:
            continue
        c_n, c_s = _value(naive, None, None, "accuracy"), _value(staged, None, None, "accuracy")
        a_n, a_s = (_value(r, "ensemble", JOEL_EPS, "accuracy") for r in (naive, staged))
        drop = c_n - a_n
        collapse = IntervalTest("naive worst case − ½ clean", linear_estimate(
            [Term(naive, worst), Term(naive, clean, -0.5)]), "less", point=a_n - 0.5 * c_n)
        out.append(_claim(
            f"[{ds}] naive models lose most of their accuracy at small ε (rule: worst-case accuracy "
            f"at ε = {JOEL_EPS} below half of the clean accuracy: the interval of worst − ½·clean, paired on "
            "the same samples, below 0)",
            f"naive clean {_f(c_n)} → {_f(a_n)} at ε = {JOEL_EPS} (FGSM/BIM/PGD worst case); "
            f"PGD alone {_f(_value(naive, 'pgd', JOEL_EPS, 'accuracy'))}{_n_seeds(naive)}", [collapse]))
        recovered = (a_s - a_n) / drop if drop > 0 else math.nan
        restore = IntervalTest("staged worst − naive worst − ½ (naive clean − naive worst)", linear_estimate(
            [Term(staged, worst), Term(naive, worst, -0.5), Term(naive, clean, -0.5)]), "greater",
            point=(a_s - a_n) - 0.5 * drop)
        out.append(_claim(
            f"[{ds}] iterative adversarial training restores much of it (rule: staged SAT recovers at "
            f"least half of the naive model's accuracy lost at ε = {JOEL_EPS}: the paired interval of "
            "(staged worst − naive worst) − ½·(naive clean − naive worst) above 0)",
            f"staged SAT clean {_f(c_s)}, at ε = {JOEL_EPS} {_f(a_s)} (naive {_f(a_n)}): recovers "
            f"{_f(recovered)} of the naive drop {_f(drop)}{_n_seeds(naive, staged)}", [restore],
            verdict=None if math.isfinite(recovered) else "not applicable (no drop)",
            point=None if math.isfinite(recovered) else "not applicable (no drop)"))
    sides = {name: _image_side(results[f"{name}/naive"], full)
             for name, full, _quick in JOEL_PH2_SIZES if f"{name}/naive" in results}
    return out + joel_size_claim(results, sides) + medmnist_check(results, ["pneumoniamnist/naive"])


JOEL = Suite(
    name="joel2022",
    title="Joel et al. 2022 — naive vs iterative (staged-ε) adversarial training, at three image sizes",
    paper="Joel et al.: Using adversarial images to assess the robustness of deep "
          "learning models trained on diagnostic images in oncology, JCO Clin Cancer Inform 2022",
    groups=joel_groups(),
    runs=_joel_runs(),
    claims=joel_claims,
    log_eps=True,
    headline_eps=JOEL_EPS,
)


# ------------------------------------------------------------------------------ Ma & Liang (AMAT)
AMAT_SAT_EPS = {"segmentation": (0.5, 2.0), "landmarks": (0.25, 1.0), "detection": (0.5, 2.0)}
#: --quick L2 scale per AMAT task (images halved for segmentation and landmarks)
AMAT_QUICK_L2 = {"segmentation": 0.5, "landmarks": 0.5, "detection": 1.0}
_AMAT_ARGS = "model.init_args.method.init_args"


def _amat_budgets(task: str) -> Overrides:
    """--quick: the MarginMonitor histogram marks the SAT ε as the quick runs use them."""
    return {"trainer.callbacks[MarginMonitor].init_args.budgets":
            [round(e * AMAT_QUICK_L2[task], 6) for e in AMAT_SAT_EPS[task]]}


#: AMAT's cost rule: its training time per epoch at most this multiple of SAT's (a point comparison)
AMAT_COST_RATIO = 1.5


def amat_claims(results: dict[str, Any]) -> list[dict[str, str]]:
    from benchmarks.paper_evidence import (
        IntervalTest,
        Term,
        all_of,
        any_of,
        column,
        linear_estimate,
        negate,
    )
    from benchmarks.paper_evidence import robust_area as area_values
    from callbacks.per_sample import column_name

    out = []
    for group in AMAT.groups:
        task = group.name
        amat = results.get(f"{task}/amat")
        sats = {k: v for k, v in results.items() if k.startswith(f"{task}/sat") and v.get("test")}
        if not (amat and amat.get("test")) or not sats:
            continue
        # the direction the task's metric object declared, as the record states it
        lower = bool(_record(amat["test"]).lower_is_better(group.metric))
        sm = sample_metric(task)  # per-sample metric (detection: ap50; mAP has no per-sample form)
        s_lower = bool(_record(amat["test"]).lower_is_better(sm)) if _record(amat["test"]).lower_is_better(sm) \
            is not None else lower
        sign = -1.0 if s_lower else 1.0
        eps = sorted(x.eps for x in _record(amat["test"]).ensemble)
        clean_col, area_col = column(column_name("clean", sm)), area_values(sm, eps, s_lower)

        def point(r: dict[str, Any], lower: bool = lower, metric: str = group.metric) -> tuple[float, float]:
            clean = _value(r, None, None, metric)
            area = _mean([float(a.value) if (a := _record(e["test"]).robust_area) and a.value is not None
                          else math.nan for e in _seeds(r) if e.get("test")])
            return (-clean if lower else clean), area

        parts, labels = [], []
        pa = point(amat)
        for k, r in sats.items():
            lab = results[k]["label"]
            ps = point(r)  # the point reading: the group's metric and the records' robust areas, as before
            d_clean = IntervalTest(f"AMAT − {lab}, clean {sm}{' (negated)' if s_lower else ''}", linear_estimate(
                [Term(amat, clean_col, sign, fallback=("clean", None), fallback_metric=sm),
                 Term(r, clean_col, -sign, fallback=("clean", None), fallback_metric=sm)]), "greater",
                point=pa[0] - ps[0])
            d_area = IntervalTest(f"AMAT − {lab}, robust area of {sm}", linear_estimate(
                [Term(amat, area_col, 1.0, fallback=("robust_area", None), fallback_metric=sm),
                 Term(r, area_col, -1.0, fallback=("robust_area", None), fallback_metric=sm)]), "greater",
                point=pa[1] - ps[1])
            parts.append((d_clean, d_area))
            labels.append(lab)

        def combine(axes: list[tuple[str, str]]) -> tuple[str, list[str], list[str]]:
            """AMAT dominates SAT ε: above 0 on both axes; SAT ε dominates AMAT: below 0 on both."""
            dom = [all_of([c, a]) for c, a in axes]
            domd = [all_of([negate(c), negate(a)]) for c, a in axes]
            return all_of([any_of(dom), *(negate(v) for v in domd)]), dom, domd

        verdict, dominates, dominated = combine([(c.verdict, a.verdict) for c, a in parts])
        point_axes = [(c.point_verdict, a.point_verdict) for c, a in parts]
        reading = None if any(v is None for ax in point_axes for v in ax) else \
            combine([(str(c), str(a)) for c, a in point_axes])[0]
        pts = "; ".join(f"{results[k]['label']}: clean {group.metric} {_f(_value(r, None, None, group.metric))}, "
                        f"robust area {_f(point(r)[1])}" for k, r in {**sats, f"{task}/amat": amat}.items())
        shown = [f"AMAT dominates {lab}: {v}" for lab, v in zip(labels, dominates)]
        shown += [f"{lab} dominates AMAT: {v}" for lab, v in zip(labels, dominated)]
        out.append(_claim(
            f"[{task}] AMAT gives a better clean/robust trade-off than SAT (rule, on paired intervals of AMAT − SAT "
            f"for each SAT ε, both axes oriented so that above 0 is better for AMAT: the clean per-sample metric "
            f"(`{sm}`) and the robust area (per-sample mean metric over the L2 PGD ε grid, negated for MRE). "
            "Confirmed when AMAT is above 0 on both axes for some SAT ε and, for every SAT ε, on at least one; "
            "refuted when for every SAT ε some axis lies below 0 (AMAT dominates none) or some SAT ε lies below 0 "
            "on both axes (it dominates AMAT); inconclusive otherwise)"
            + (f"; decided on the mean per-image AP@0.5 (`{sm}`), not on mAP: mAP's intervals are per "
               "record (bootstrap over images), a paired mAP difference is not built"
               if sm != group.metric and group.metric.startswith("map") else ""),
            pts + f"{_n_seeds(amat, *sats.values())}. " + "; ".join(shown),
            [t for pair in parts for t in pair], verdict=verdict, point=reading or "n/a"))
        cost_a = _mean([e.get("train_s_per_epoch", math.nan) for e in _seeds(amat)])
        cost_s = _mean([e.get("train_s_per_epoch", math.nan) for r in sats.values() for e in _seeds(r)])
        ratio = cost_a / cost_s if cost_s else math.nan
        cost_verdict = ("confirmed" if ratio <= AMAT_COST_RATIO else "refuted") if math.isfinite(ratio) else "n/a"
        out.append(_claim(
            f"[{task}] … at comparable cost (rule: AMAT's training time per epoch, evaluation excluded, "
            f"at most {AMAT_COST_RATIO}× SAT's mean, same PGD steps; a point comparison: a time ratio has no "
            "sampling interval)",
            f"AMAT {_f(cost_a)} s/epoch, SAT {_f(cost_s)} s/epoch (ratio {_f(ratio)})", [],
            verdict=cost_verdict, basis="point"))
    return out


def _amat_runs() -> list[Run]:
    runs = []
    for task, cfg in (("segmentation", "segmentation_ph2"), ("landmarks", "landmarks_cephalometric"),
                      ("detection", "detection_bccd")):
        runs.append(Run(f"{task}/clean", task, "clean", f"{cfg}_clean-maliang2022"))
        for eps in AMAT_SAT_EPS[task]:
            runs.append(Run(f"{task}/sat{eps:g}", task, "SAT ε={eps:g}", f"{cfg}_sat-maliang2022",
                            {"model.init_args.method.init_args.eps": eps}))
        # AMAT's threshold: the training statistics of this suite's clean run of the task
        # (run before it), as the authors fix it from a clean model before AMAT starts.
        runs.append(Run(f"{task}/amat", task, "AMAT", f"{cfg}_amat-maliang2022",
                        {f"{_AMAT_ARGS}.clean_checkpoint":
                         f"{{default_root_dir}}/{task}_clean/version_*/checkpoints/best-*.ckpt"}))
    return runs


#: --quick for every AMAT task: 3 PGD steps in training for both SAT and AMAT (same cost) instead
#: of 20; the per-epoch check (which picks the checkpoint) every 2 epochs with L2 PGD-3; the test
#: suite L2 PGD-10 instead of PGD-20 (same ε grid, scaled with the image).
_AMAT_QUICK_STEPS: Overrides = {
    "model.init_args.method.init_args.attack.steps": 3,
    f"{_ADV}.attacks": [{"name": "pgd", "norm": "l2", "steps": 3}],
    f"{_ADV}.every_n_epochs": 2,
    "trainer.callbacks[ModelCheckpoint].init_args.every_n_epochs": 2,
    f"{_ADV}.test_attacks": [{"name": "pgd", "norm": "l2", "steps": 10, "random_start": True}],
}

AMAT = Suite(
    name="amat",
    title="Ma & Liang (AMAT) — clean vs SAT (several ε) vs AMAT on segmentation, landmarks, detection",
    paper="Ma & Liang: Adaptive adversarial training to improve adversarial robustness of DNNs for "
          "medical image segmentation and detection (2022)",
    groups=[
        Group("segmentation", "PH2 lesion segmentation (Dice ↑)", _main_metric("segmentation"),
              quick={"trainer.max_epochs": 10, "data.init_args.image_size": [64, 64],
                     f"{_CNN}.features": [8, 16, 32, 64], **_AMAT_QUICK_STEPS,
                     **_amat_budgets("segmentation")},
              quick_l2_scale=AMAT_QUICK_L2["segmentation"], secondary="iou"),
        Group("landmarks", "cephalometric landmarks (MRE in px ↓)", _main_metric("landmarks"),
              quick={"trainer.max_epochs": 12, "data.init_args.image_size": [80, 64],
                     f"{_CNN}.features": [8, 16, 32], "model.init_args.sigma": 1.5,
                     "model.init_args.lr": 0.003,  # 12 epochs: lr 0.001 had not converged
                     **_AMAT_QUICK_STEPS, **_amat_budgets("landmarks")},
              quick_l2_scale=AMAT_QUICK_L2["landmarks"]),
        Group("detection", "BCCD blood-cell detection (mAP ↑)", _main_metric("detection"),
              # The shipped 144×192 images: at 72×96 platelets shrink to a few pixels and the
              # quick detector did not learn (mAP@0.5 0.1; 0.54 at 144×192, same epochs).
              quick={"trainer.max_epochs": 6,
                     "trainer.limit_train_batches": 16,  # 128 of the 205 images per epoch
                     f"{_CNN}.widths": [8, 16, 32], f"{_CNN}.out_channels": 32,
                     "model.init_args.lr": 0.003,
                     **_AMAT_QUICK_STEPS, **_amat_budgets("detection")},
              quick_l2_scale=AMAT_QUICK_L2["detection"], secondary="map_50"),
    ],
    runs=_amat_runs(),
    claims=amat_claims,
)

SUITES: dict[str, Suite] = {s.name: s for s in (XUE, AMAT, JOEL)}
