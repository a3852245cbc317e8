"""``report.md``, curves and the docs section of a paper suite (``benchmarks/run.py``), built only
from the ``robustness.json`` records the runs wrote (test split, the configs' test-time attack
suite); the tables: :mod:`benchmarks.paper_tables`."""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.paper_spec import Group, Suite
from benchmarks.paper_tables import (  # noqa: E402
    cost_table,
    fmt_eps,
    lower_is_better,
    margin_table,
    metric_table,
    noise_table,
    record,
    run_records,
    seed_mean,
    table,
    uncertainty_table,
)
from callbacks.atomic import atomic_write_text  # noqa: E402
from callbacks.report import package_versions  # noqa: E402


def verdict_summary(claims: list[dict[str, str]]) -> str:
    """``Verdicts on intervals: 3 confirmed, 1 refuted, 4 inconclusive. Of the 7 rules the point
    estimates alone decide (…), 3 are inconclusive on intervals; 1 point comparison (confirmed)``."""
    from collections import Counter

    on = Counter(c["verdict"] for c in claims if c.get("basis", "interval") == "interval")
    point = [c["verdict"] for c in claims if c.get("basis") == "point"]
    parts = [f"{on.get(v, 0)} {v}" for v in ("confirmed", "refuted", "inconclusive")]
    parts += [f"{k}: {v}" for k, v in on.items() if k not in ("confirmed", "refuted", "inconclusive")]
    text = "Verdicts on intervals: " + ", ".join(parts)
    read = [c for c in claims if c.get("basis", "interval") == "interval"
            and c.get("point_verdict") in ("confirmed", "refuted")]
    if read:
        became = sum(c["verdict"] == "inconclusive" for c in read)
        flipped = sum(c["verdict"] in ("confirmed", "refuted") and c["verdict"] != c["point_verdict"] for c in read)
        text += (f". Of the {len(read)} rule(s) that the point estimates alone decide "
                 f"({sum(c['point_verdict'] == 'confirmed' for c in read)} confirmed, "
                 f"{sum(c['point_verdict'] == 'refuted' for c in read)} refuted), {became} "
                 f"{'is' if became == 1 else 'are'} inconclusive on intervals"
                 + (f" and {flipped} reverse{'s' if flipped == 1 else ''}" if flipped else ""))
    if point:
        text += f"; {len(point)} point comparison(s) ({', '.join(point)})"
    return text + "."


def plot_group(suite: Suite, group: Group, results: dict[str, Any], path: Path) -> Path | None:
    """Metric vs ε per attack (one panel each, plus the per-sample worst case), one line per method."""
    runs = [r for r in suite.runs if r.group == group.name and results.get(r.key, {}).get("test")]
    if not runs:
        return None
    first = record(results[runs[0].key])
    attacks = first.attack_labels()
    panels = attacks + (["ensemble"] if len(attacks) > 1 and first.ensemble else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.5), squeeze=False)
    for ax, attack in zip(axes[0], panels):
        for r in runs:
            res = results[r.key]
            xs = [e.eps for e in record(res).entries(attack)]
            ys = [seed_mean(res, lambda rec, x=x, a=attack: rec.value(group.metric, a, x)) for x in xs]
            ys = [math.nan if y is None else y for y in ys]
            clean = seed_mean(res, lambda rec: rec.clean.get(group.metric))
            if suite.log_eps:  # log axis: the clean value is a dashed level of the same colour
                line, = ax.plot(xs, ys, marker="o", ms=3, label=results[r.key]["label"])
                ax.axhline(clean, color=line.get_color(), ls=":", lw=1)
            else:
                ax.plot([0.0, *xs], [clean, *ys], marker="o", ms=3, label=results[r.key]["label"])
        if suite.log_eps:
            ax.set_xscale("log")
        if suite.headline_eps is not None:
            ax.axvline(suite.headline_eps, color="grey", lw=0.8, ls="--")
        norm = next((e.norm for e in first.attacks if e.attack == attack), None) or "linf"
        ax.set_title("worst case over attacks" if attack == "ensemble" else attack.upper(), fontsize=10)
        ax.set_xlabel(f"ε ({'L2' if norm == 'l2' else 'L∞'}, pixels on [0, 1])")
        ax.grid(alpha=0.3)
    arrow = "↓" if lower_is_better(group, suite, results) else "↑"
    axes[0][0].set_ylabel(f"{group.metric} {arrow}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{suite.name}: {group.title} (test split)", fontsize=10, y=1.03)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def attack_settings(results: dict[str, Any], suite: Suite) -> list[str]:
    """One line per distinct test-time attack as run (from the records)."""
    seen: dict[str, str] = {}
    for r in suite.runs:
        rec = record(results.get(r.key))
        for e in rec.attacks if rec else []:
            if e.attack not in seen:
                keep = {"name": e.name, "norm": e.norm, "steps": e.steps, "restarts": e.restarts,
                        "random_start": e.random_start}
                seen[e.attack] = ", ".join(f"{k}={v}" for k, v in keep.items() if v is not None)
    return [f"- `{a}`: {d}; step size per ε in each run's robustness.json" for a, d in seen.items()]


def suite_section(suite: Suite, results: dict[str, Any], meta: dict[str, Any], figures: dict[str, str],
                  heading: str = "#") -> str:
    """The tables, curves and claim comparison of one suite (report.md and docs/benchmarks.md)."""
    h = heading
    parts = [f"{h} {suite.title}", "", f"Paper: {suite.paper}.", "",
             f"Command: `{meta['command']}`  ",
             f"Mode: **{meta['mode']}** · wall time **{meta['wall_s']:.0f} s** ({meta['wall_s'] / 60:.1f} min) · "
             f"torch threads {meta['threads']} · seeds: `seed_everything` {meta['seeds']} "
             f"({meta.get('n_seeds', 1)} per run), "
             "evaluation seed 0 (subset and attack random starts)  ",
             f"Machine: {meta['machine']}  ",
             f"Load average (1 min) at start / end: {meta['load_start']} / {meta['load_end']}. {meta.get('note', '')}",
             ""]
    for group in suite.groups:
        if not any(r.group == group.name and r.key in results for r in suite.runs):
            continue
        parts += [f"{h}# {group.title}", "",
                  f"Test split, every attack × ε on the same test images; `{group.metric}` "
                  f"({'lower' if lower_is_better(group, suite, results) else 'higher'} is better). Worst case = per "
                  "sample, the worst of the attacks at that ε.", ""]
        if suite.headline_eps is not None:  # a fine ε grid: worst case per ε, attacks at the headline ε
            parts += [metric_table(suite, group, results, group.metric, ensemble_only=True), "",
                      f"Each attack at the headline ε = {fmt_eps(suite.headline_eps)}:", "",
                      metric_table(suite, group, results, group.metric, only_eps=suite.headline_eps), ""]
        else:
            parts += [metric_table(suite, group, results, group.metric), ""]
        if group.secondary:
            parts += [f"`{group.secondary}`, worst case over the attacks:", "",
                      metric_table(suite, group, results, group.secondary, ensemble_only=True), ""]
        if suite.noise:
            parts += [f"General noises (`{group.metric}`; Gaussian / speckle std, salt-and-pepper fraction):", "",
                      noise_table(suite, group, results, group.metric), ""]
        if group.name in figures:
            parts += [f"![{group.name} curves]({figures[group.name]})", ""]
        margins = margin_table(suite, group, results)
        if margins:
            parts += ["AMAT's margins (L2) after the last training epoch, against the SAT ε of this "
                      "table (as trained), and their movement per epoch:", "", margins, ""]
        spread = uncertainty_table(suite, group, results)
        if spread:
            n_seeds = max(len(run_records(results.get(r.key))) for r in suite.runs if r.key in results)
            parts += [("Uncertainty: mean ± SD over seeds [95 % interval over seeds and test samples, two-level "
                       "bootstrap]:" if n_seeds > 1 else
                       "Uncertainty (one seed: the 95 % interval over test samples; it leaves out the "
                       "seed-to-seed variation, see `--seeds`):"), "", spread, ""]
        parts += ["Runs:", "", cost_table(suite, group, results), ""]
    claims = suite.claims(results)
    parts += [f"{h}# What the paper claims / what we measured", "",
              "Rules fixed before measuring (benchmarks/paper_suites.py), each restated as tests on 95 % "
              "intervals: **confirmed** when the interval lies on the claim's side of its threshold, **refuted** "
              "when it lies on the other side, **inconclusive** otherwise (the data cannot decide at this n). A "
              "rule of several tests is confirmed only when every test is and refuted when any is. Comparisons of "
              "two models are paired on the same test samples. n is the number of test samples; 'detects ≥ x' "
              "is the smallest true effect n detects with 80 % power. Time ratios are point comparisons.", "",
              verdict_summary(claims) if claims else "", "",
              table(["claim", "measured", "tests on intervals (n, smallest detectable effect)", "verdict"],
                     [[c["claim"], c["measured"], c.get("tests", "–"),
                       f"**{c['verdict']}**" + (" (point)" if c.get("basis") == "point" else "")
                       + (f" (point estimates alone: {c['point_verdict']})" if c.get("point_verdict") else "")]
                      for c in claims]) if claims
              else "_no complete comparison_", ""]
    return "\n".join(parts)


def settings_section(suite: Suite, results: dict[str, Any], meta: dict[str, Any]) -> str:
    parts = ["## Exact settings", "",
             "Each run is the shipped config plus the overrides listed (none in the full mode but "
             "per-run ones); the resolved config is in the run folder (`config.yaml`) and in "
             f"`results/{suite.name}/configs/`.", ""]
    for r in suite.runs:
        res = results.get(r.key)
        if not res:
            continue
        ov = res.get("overrides") or {}
        shown = "; ".join(f"`{k}` = `{v}`" for k, v in ov.items()) or "none"
        seeds = res.get("seeds") or [res]
        where = "; ".join(f"seed {e.get('seed')}: run folder `{e.get('log_dir')}`, checkpoint `{e.get('ckpt')}`"
                          for e in seeds) if len(seeds) > 1 else \
            f"Run folder `{res.get('log_dir')}`, checkpoint `{res.get('ckpt')}`"
        parts.append(f"- **{r.key}** (`configs/experiment/{r.config}.yaml`, seed {res.get('seed')}): "
                     f"overrides {shown}. {where}.")
    parts += ["", "Test-time attacks:", "", *attack_settings(results, suite), "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()), ""]
    return "\n".join(parts)


def write_report(suite: Suite, results: dict[str, Any], meta: dict[str, Any], out_dir: Path) -> Path:
    """``out_dir/report.md`` and one ``<group>_curves.png`` per group; returns the report path."""
    figures = {}
    for group in suite.groups:
        p = plot_group(suite, group, results, out_dir / f"{group.name}_curves.png")
        if p is not None:
            figures[group.name] = p.name
    text = (suite_section(suite, results, meta, figures) + "\n" + settings_section(suite, results, meta)
            + f"\nGenerated {_dt.datetime.now().isoformat(timespec='seconds')}.\n")
    path = out_dir / "report.md"
    atomic_write_text(path, text)
    return path


def update_docs(docs: Path, suite: Suite, results: dict[str, Any], meta: dict[str, Any]) -> None:
    """Replace this suite's section of ``docs`` (between its markers) with the latest tables."""
    start, end = f"<!-- suite:{suite.name}:start -->", f"<!-- suite:{suite.name}:end -->"
    body = suite_section(suite, results, meta, {}, heading="##")
    body += (f"\nCurves and the exact settings: `results/{suite.name}/report.md` (not committed).\n")
    block = f"{start}\n{body}\n{end}"
    text = docs.read_text() if docs.exists() else "# Paper benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(docs, text)
