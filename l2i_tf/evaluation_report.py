"""`l2i-tf evaluate`'s report as Markdown tables shaped like the paper's."""

from __future__ import annotations

import numpy as np

from l2i_tf import method_table


def _f(value, digits=2, pct=False):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return f"{100 * value:.{digits - 1}f} %" if pct else f"{value:.{digits}f}"


def _pm(d, pct=False):
    if pct:
        return f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f} %"
    return f"{d['mean']:.2f} ± {d['std']:.2f}"


def _header(report: dict) -> str:
    """K and what the classifier was scored on: clips, a fixed-length classifier's windows, or mixtures."""
    windows = report.get("test_windows")
    if windows:
        scored = f"{report['test_clips']} test windows ({windows['clips']} clips)"
    else:
        scored = f"{report['test_clips']} test {'examples' if report['multilabel'] else 'clips'}"
    return f"K = {report['k']}, {scored}, multi-label: {report['multilabel']}."


def markdown(report: dict) -> str:
    """The report as Markdown tables shaped like the paper's."""
    lines = [f"# L2I evaluation of `{report['run']}`", "", _header(report), ""]
    if "methods" in report:
        lines += method_table.markdown(report["methods"])
    lines += _fidelity(report["fidelity"], report["multilabel"])
    if "cv" in report:
        lines += _cross_validation(report["cv"], report["multilabel"])
    lines += _faithfulness(report["faithfulness"], report.get("slime"), report.get("faithfulness_active_random"))
    lines += _vibi_faithfulness(report.get("baselines", {}).get("vibi"))
    if "mask_metrics" in report:
        vibi = report.get("baselines", {}).get("vibi")
        lines += mask_metrics_table(report["mask_metrics"], report.get("slime"), vibi)
    if "mixtures" in report:
        vibi = report.get("baselines", {}).get("vibi", {})
        lines += _mixtures(report["mixtures"], report.get("slime"), vibi.get("mixtures", {}).get("rows", []))
    lines += _wall_time(report)
    return "\n".join(lines)


def _table(header: list[str], cells: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(cells) + " |", ""]


def _fidelity(fid: dict, multilabel: bool) -> list[str]:
    lines = ["## Fidelity (test split)", ""]
    if multilabel:
        return lines + _table(
            ["macro-AUPRC", "micro-AUPRC", "max-F1"], [_f(fid[k], 3) for k in ("macro_auprc", "micro_auprc", "max_f1")]
        )
    return lines + _table([f"top-{k[3:]}" for k in fid], [_f(fid[k], 2, pct=True) for k in fid])


def _cross_validation(cv: dict, multilabel: bool) -> list[str]:
    s = cv["summary"]
    lines = [f"### {len(cv['folds'])}-fold cross-validation (mean ± std over folds)", ""]
    lines += _table(list(s["fidelity"]), [_pm(v, pct=not multilabel) for v in s["fidelity"].values()])
    lines += [
        "| τ | L2I median logit drop | random | active random | L2I median prob. drop | random | active random |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, v in s["faithfulness_median_logit_drop"].items():
        p = s["faithfulness_median_probability_drop"][t]
        cells = [_pm(d[m]) if m in d else "–" for d in (v, p) for m in ("l2i", "random", "random_active")]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines + [""]


def _faithfulness(faithfulness: dict, slime: dict | None, active: dict | None = None) -> list[str]:
    lines = ["## Faithfulness: median drop of the explained class after removing the selected components", ""]
    head = "| τ | L2I logit | random logit | L2I prob. | random prob. | L2I #comp. |"
    rule = "|---|---|---|---|---|---|"
    if active:
        head += " active random logit | active random prob. | active random #comp. |"
        rule += "---|---|---|"
    if slime:
        head += f" SLIME logit ({slime['clips']} clips) | SLIME random | SLIME prob. | SLIME #seg. |"
        rule += "---|---|---|---|"
    lines += [head, rule]
    for t, v in faithfulness.items():
        row = (
            f"| {t} | {_f(v['l2i']['logit_drop']['median'])} | {_f(v['random']['logit_drop']['median'])} | "
            f"{_f(v['l2i']['probability_drop']['median'], 3)} | {_f(v['random']['probability_drop']['median'], 3)} "
            f"| {_f(v['l2i']['selected_mean'], 1)} |"
        )
        if active:
            a = active["thresholds"][t]
            row += (
                f" {_f(a['logit_drop']['median'])} | {_f(a['probability_drop']['median'], 3)} "
                f"| {_f(a['selected_mean'], 1)} |"
            )
        if slime:
            s = slime["faithfulness"][t]
            row += (
                f" {_f(s['slime']['logit_drop']['median'])} | {_f(s['random']['logit_drop']['median'])} | "
                f"{_f(s['slime']['probability_drop']['median'], 3)} | {_f(s['slime']['selected_mean'], 1)} |"
            )
        lines.append(row)
    if active:
        per_tau = active["thresholds"]
        a = next(iter(per_tau.values()), {})
        short = ", ".join(f"{_f(v.get('short_share'), 2, pct=True)} at τ = {t}" for t, v in per_tau.items())
        lines += [
            "",
            "Random: as many components drawn among all the unselected ones (the paper's baseline). Active random: "
            f"drawn among the clip's active unselected components only (activation energy Σ_t H² above "
            f"{100 * active['active_share']:g} % of the clip's total; {_f(a.get('active_mean'), 1)} active per clip "
            "on average), so it removes real energy; it removes fewer than L2I where too few are active "
            f"({short} of the clips).",
        ]
    return lines + [""]


def _vibi_faithfulness(vibi: dict | None) -> list[str]:
    if not vibi or "faithfulness" not in vibi:
        return []
    f = vibi["faithfulness"]
    return [
        f"VIBI (its top-{vibi['k']} of {vibi['chunks']} chunks removed, no τ): median logit drop "
        f"{_f(f['vibi']['logit_drop']['median'])}, probability drop {_f(f['vibi']['probability_drop']['median'], 3)}; "
        f"as many random other chunks: {_f(f['random']['logit_drop']['median'])}, "
        f"{_f(f['random']['probability_drop']['median'], 3)}.",
        "",
    ]


def mask_metrics_table(mm: dict, slime: dict | None = None, vibi: dict | None = None) -> list[str]:
    """SpeechBrain's ESC-50 interpretation metrics (see :mod:`l2i_tf.mask_metrics`) for L2I (and SLIME, VIBI) per
    τ, with SpeechBrain's published L2I row for orientation."""
    keys = ("AI", "AD", "AG", "FF", "Fid-In", "SPS", "COMP", "AD_one_softmax")
    lines = [
        "## SpeechBrain's interpretation metrics (ESC-50 recipe, L-MAC paper)",
        "",
        "| method | τ | clips | AI (%) ↑ | AD (%) ↓ | AG (%) ↑ | FF ↑ | Fid-In ↑ | SPS ↑ | COMP ↓ "
        "| AD, one softmax (%) ↓ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("L2I (soft mask)", t, v) for t, v in mm["l2i"].items()]
    if slime and "mask_metrics" in slime:
        rows += [("SLIME (segment mask)", t, v) for t, v in slime["mask_metrics"].items()]
    if vibi and "mask_metrics" in vibi:
        rows.append((f"VIBI (top-{vibi['k']} chunks)", "–", vibi["mask_metrics"]))
    for name, t, v in rows:
        cells = [_f(v[k]) for k in keys]
        lines.append(f"| {name} | {t} | {v['clips']} | " + " | ".join(cells) + " |")
    theirs = mm.get("speechbrain_published_l2i")
    if theirs:
        cells = [_f(theirs[k]) if k in theirs else "–" for k in keys]
        lines.append("| SpeechBrain's published L2I (theirs) | – | – | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mask-in: the interpretation audio (mask ⊙ X with the input's phase); mask-out: its complement, as removed for "
        "faithfulness; SPS and COMP read the mask itself. AI, AD, AG in %, FF in probability, Fid-In a share of clips. "
        "AD follows SpeechBrain's `compute_AD`, which applies a softmax to probabilities already softmaxed; the last "
        "column is the L-MAC paper's formula on the probabilities themselves.",
        "",
    ]
    if theirs:
        lines += [
            f"{theirs['source']}: their classifier, 50 classes, NMF dictionary, STFT and out-of-domain mixtures "
            "differ from ours; for orientation only.",
            "",
        ]
    return lines


def _mixtures(m: dict, slime: dict | None, vibi_rows=()) -> list[str]:
    lines = [
        f"## Mixtures: target + distractor at {m['snr_db']} dB ({m['counted']} of {m['mixtures']} "
        f"mixtures the classifier gets right)",
        "",
        "| method | mask domain | τ | median SI-SDRi (dB) | mean SI-SDRi (dB) | median target energy share "
        "| mean #comp. | empty |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = list(m["rows"])
    if slime and "mixtures" in slime:
        rows += slime["mixtures"]["rows"]
    rows += vibi_rows
    for r in rows:
        tau = "–" if r["threshold"] is None else r["threshold"]
        name = r["method"] + (" (oracle)" if r["method"].startswith("oracle") else "")
        if r["method"] == "SLIME":
            name += f" ({slime['mixtures']['counted_used']} mixtures)"
        lines.append(
            f"| {name} | {r['domain']} | {tau} | {_f(r['si_sdri_db']['median'])} | {_f(r['si_sdri_db']['mean'])} "
            f"| {_f(r['target_energy_share']['median'], 3)} | {_f(r['selected_mean'], 1)} "
            f"| {_f(r['empty_share'], 2, pct=True)} |"
        )
    if not rows:
        lines.append("| (none: the classifier gets none of these mixtures right, so none is scored) | | | | | | | |")
    return lines + [
        "",
        "Oracle rows use the true sources and are references only; L2I and random rows select from the "
        "interpreter's relevance for the predicted class.",
        "",
    ]


def _wall_time(report: dict) -> list[str]:
    wt = report["wall_time"]
    lines = [
        "## Wall time per clip",
        "",
        "| method | seconds per clip |",
        "|---|---|",
        f"| L2I (interpreter pass + mask + ISTFT, batched) | {wt['l2i_seconds_per_clip']:.4f} |",
    ]
    if "slime_seconds_per_clip" in wt:
        n = report["slime"]["config"]["num_samples"]
        ratio = wt["slime_seconds_per_clip"] / max(wt["l2i_seconds_per_clip"], 1e-12)
        lines.append(f"| SLIME ({n} masks) | {wt['slime_seconds_per_clip']:.3f} ({ratio:.0f}× L2I) |")
    return lines + [
        "",
        f"Total evaluation time: {report['seconds']:.0f} s. Every figure and the exact configuration: `report.json`.",
        "",
    ]
