"""The ``xue2019`` suite: clean vs SAT vs denoise on PneumoniaMNIST and PH2, and its claims
(Xue et al.: Improving robustness of medical image diagnosis with denoising convolutional neural
networks, MICCAI 2019)."""

from __future__ import annotations

from typing import Any

from benchmarks.paper_claims import (
    attack_sample_columns,
    claim_row,
    entries_mean,
    fmt3,
    medmnist_check,
    paired_estimate,
    seed_value,
    seeds_note,
)
from benchmarks.paper_spec import Run, Suite, classification_groups


def xue_claims(results: dict[str, Any]) -> list[dict[str, str]]:
    from benchmarks.paper_evidence import columns_mean
    from benchmarks.paper_intervals import IntervalTest

    out = []
    for ds in ("pneumoniamnist", "ph2"):
        recs = {m: results.get(f"{ds}/{m}", {}) for m in ("clean", "sat", "denoise")}
        if not all(r.get("test") for r in recs.values()):
            continue
        a = {m: entries_mean(r, "accuracy") for m, r in recs.items()}
        n = {m: entries_mean(r, "accuracy", "noise") for m, r in recs.items()}
        c = {m: seed_value(r, None, None, "accuracy") for m, r in recs.items()}
        adv_cols = columns_mean(attack_sample_columns(recs["clean"], "accuracy"))
        noise_cols = columns_mean(attack_sample_columns(recs["clean"], "accuracy", "noise"))
        adv = IntervalTest("denoise − clean, mean adversarial accuracy",
                           paired_estimate(recs["denoise"], recs["clean"], adv_cols), "greater",
                           point=a["denoise"] - a["clean"])
        noise = IntervalTest("denoise − clean, mean noise accuracy",
                             paired_estimate(recs["denoise"], recs["clean"], noise_cols, "noise"), "greater",
                             point=n["denoise"] - n["clean"])
        out.append(claim_row(
            f"[{ds}] the denoising mechanism improves robustness to adversarial perturbation "
            "and to general noise over clean training (rule: the paired differences denoise − clean of the "
            "mean accuracy over all FGSM/BIM/PGD × ε entries and over all noise entries both above 0 — a "
            "conjunction: confirmed when both intervals lie above 0, refuted when either lies below)",
            f"mean adversarial accuracy clean {fmt3(a['clean'])} / SAT {fmt3(a['sat'])} / denoise "
            f"{fmt3(a['denoise'])}; mean noise accuracy clean {fmt3(n['clean'])} / SAT {fmt3(n['sat'])} / "
            f"denoise {fmt3(n['denoise'])}; clean accuracy clean {fmt3(c['clean'])} / SAT {fmt3(c['sat'])} / "
            f"denoise {fmt3(c['denoise'])}{seeds_note(*recs.values())}", [adv, noise]))
        sat = IntervalTest("SAT − clean, mean adversarial accuracy",
                           paired_estimate(recs["sat"], recs["clean"], adv_cols), "greater",
                           point=a["sat"] - a["clean"])
        out.append(claim_row(
            f"[{ds}] adversarial training (SAT) improves adversarial robustness over clean training "
            "(rule: the paired difference SAT − clean of the mean adversarial accuracy above 0)",
            f"clean {fmt3(a['clean'])}, SAT {fmt3(a['sat'])}{seeds_note(recs['clean'], recs['sat'])}", [sat]))
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
