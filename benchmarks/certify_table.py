"""One markdown table from several ``medrobust certify`` output folders: per model, σ and L2 radius
the certified metric and abstain rate with their 95 % intervals, beside the same model's empirical
L2 worst case (attack suite) at the same budget on the same samples.

    python benchmarks/certify_table.py results/pneumoniamnist/*      # one row per model × σ × R
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from callbacks.record import RobustnessRecord  # noqa: E402


def _ci(value: float | None, ci: dict | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else f"{value:.3f}"


def empirical(record: RobustnessRecord, metric: str, radius: float) -> str:
    """The base model's clean (R = 0) or L2 worst-case value at ε = R, with its interval."""
    if radius == 0:
        value, ci = record.clean.get(metric), record.interval("clean")
    else:
        hits = [e for e in record.ensemble if abs(e.eps - radius) <= 1e-9]
        if not hits:
            return "—"
        value, ci = hits[0].metrics.get(metric), record.interval("worst", radius)
    if value is None:
        return "—"
    same = (record.intervals or {}).get("metric") == metric
    return f"{value:.3f}" + (f" [{ci.low:.3f}, {ci.high:.3f}]" if ci is not None and same else "")


def extras(entry: dict) -> list[str]:
    """The task's extra certified metrics in an entry's curve (segmentation: ``pixel_accuracy``)."""
    skip = {"radius", entry["metric"], "abstain"}
    names: list[str] = []
    for row in entry["curve"]:
        names += [k for k in row if k not in skip and not k.endswith("_interval") and k not in names]
    return names


def table(folders: list[Path]) -> str:
    """The markdown table: one row per folder (model), σ and radius; the certified metric, the
    task's extra certified metrics (segmentation: pixel accuracy), the abstain rate, each with its
    interval, and the base model's empirical L2 value at ε = R."""
    lines: list[str] = []
    for folder in folders:
        record = RobustnessRecord.load(folder / "robustness.json")
        for entry in record.certified or []:
            metric, more = entry["metric"], extras(entry)
            if not lines:
                head = "".join(f" certified {m} |" for m in more)
                lines += [f"| model | σ | R | certified {metric} |{head} abstain | empirical L2 {metric} (base model) |",
                          "|---|---|---|---|" + "---|" * len(more) + "---|---|"]
            for row in entry["curve"]:
                r = float(row["radius"])
                cells = "".join(f" {_ci(row.get(m), row.get(f'{m}_interval'))} |" for m in more)
                lines.append(f"| {folder.name} | {entry['sigma']:g} | {r:g} | "
                             f"{_ci(row.get(metric), row.get(f'{metric}_interval'))} |{cells} "
                             f"{_ci(row.get('abstain'), row.get('abstain_interval'))} | {empirical(record, metric, r)} |")
    return "\n".join(lines)


def settings(folders: list[Path]) -> str:
    out = []
    for folder in folders:
        record = RobustnessRecord.load(folder / "robustness.json")
        for e in record.certified or []:
            out.append(f"- {folder.name}, σ={e['sigma']:g}: n0={e['n0']}, n={e['n']}, α={e['alpha']}, batch={e['batch']}, "
                       f"correction={e['correction']}, {e['samples']} samples, {e['seconds']:.0f} s, "
                       f"{e['forwards']} noisy forwards; empirical suite {record.suite_name or record.suite}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    args = p.parse_args(argv)
    folders = [f for f in args.folders if (f / "robustness.json").is_file()]
    print(table(folders))
    print()
    print(settings(folders))


if __name__ == "__main__":
    main()
