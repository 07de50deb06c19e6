"""One table per task comparing the methods of an evaluation (L2I, SLIME, FLINT, VIBI): fidelity, faithfulness at
one τ, SpeechBrain's mask metrics, mixture SI-SDRi, seconds per explained clip and training time, as JSON rows and
as Markdown. A cell a method cannot fill is None (Markdown: n/a), never a made-up number."""

from __future__ import annotations

import numpy as np

from l2i_tf.mask_metrics import METRICS

TAU = "0.3"
"""The τ of the table's faithfulness, mask-metric and mixture columns (L2I and SLIME select by relevance > τ)."""
NAMES = {"l2i": "L2I", "slime": "SLIME", "flint": "FLINT", "vibi": "VIBI"}


def _tau(report: dict) -> str:
    taus = list(report["faithfulness"])
    return TAU if TAU in taus else taus[-1]


def _mixture_median(rows: list[dict], method: str, domain: str | None, tau) -> float | None:
    for r in rows:
        if r["method"] == method and (domain is None or r["domain"] == domain) and r["threshold"] == tau:
            return r["si_sdri_db"]["median"]
    return None


def _default_median(rows: list[dict]) -> float | None:
    """The median SI-SDRi of the explainer's default selection (the row marked ``"default"``), if evaluated."""
    return next((r["si_sdri_db"]["median"] for r in rows if r.get("default")), None)


def _l2i_mixture_median(rows: list[dict], domain: str, tau: float) -> float | None:
    """L2I's mixture SI-SDRi: the default selection's, else (reports written before that row) relevance > τ's."""
    default = _default_median(rows)
    return default if default is not None else _mixture_median(rows, "L2I", domain, tau)


def _fidelity_cells(fidelity: dict | None, multilabel: bool) -> dict:
    keys = ("macro_auprc",) if multilabel else ("top1", "top3", "top5")
    return {k: (fidelity or {}).get(k) for k in keys}


def _masks(summary: dict | None) -> dict:
    return {k: (summary or {}).get(k) for k in METRICS}


def _empty(multilabel: bool) -> dict:
    return {**_fidelity_cells(None, multilabel), "faithfulness": None, **_masks(None), "si_sdri_db": None,
            "seconds_per_clip": None, "training_seconds": None}  # fmt: skip


def _l2i_row(report, run_metrics, tau, multilabel) -> dict:
    rows = report.get("mixtures", {}).get("rows", [])
    training = sum(run_metrics.get(k, 0.0) for k in ("dictionary_seconds", "train_seconds")) or None
    return {
        **_fidelity_cells(report["fidelity"], multilabel),
        "faithfulness": report["faithfulness"][tau]["l2i"]["logit_drop"]["median"],
        **_masks(report.get("mask_metrics", {}).get("l2i", {}).get(tau)),
        "si_sdri_db": _l2i_mixture_median(rows, report["config"]["domain"], float(tau)),
        "seconds_per_clip": report["wall_time"]["l2i_seconds_per_clip"],
        "training_seconds": training,
    }


def _slime_row(slime, tau, multilabel) -> dict:
    rows = slime.get("mixtures", {}).get("rows", [])
    return {
        **_empty(multilabel),
        "faithfulness": slime["faithfulness"][tau]["slime"]["logit_drop"]["median"],
        **_masks(slime["mask_metrics"].get(tau)),
        "si_sdri_db": _mixture_median(rows, "SLIME", None, float(tau)),
        "seconds_per_clip": slime["seconds_per_clip"]["mean"],
        "training_seconds": 0.0,
    }


def _trained_row(result, multilabel) -> dict:
    row = {
        **_empty(multilabel),
        **_fidelity_cells(result["fidelity"], multilabel),
        "seconds_per_clip": result["seconds_per_clip"],
        "training_seconds": result["training"]["fit_seconds"],
    }
    if result.get("listenable"):
        row["faithfulness"] = result["faithfulness"]["vibi"]["logit_drop"]["median"]
        row.update(_masks(result["mask_metrics"]))
        rows = result.get("mixtures", {}).get("rows", [])
        row["si_sdri_db"] = next((r["si_sdri_db"]["median"] for r in rows if r["domain"] == "log1p"), None)
    return row


def method_table(report: dict, run_metrics: dict) -> dict:
    """The comparison table of ``report`` (``l2i-tf evaluate``'s, with its baselines): ``{"task", "threshold",
    "rows": [{"method", "note", cells...}]}``. ``run_metrics``: the run's ``metrics.json`` (L2I's training time)."""
    multilabel = report["multilabel"]
    tau = _tau(report)
    note = f"relevance > {tau}"
    if _default_median(report.get("mixtures", {}).get("rows", [])) is not None:
        note += "; SI-SDRi: default selection"
    rows = [{"method": "l2i", "note": note, **_l2i_row(report, run_metrics, tau, multilabel)}]
    if "slime" in report:
        note = f"{report['slime']['clips']} clips, segments > {tau}"
        rows.append({"method": "slime", "note": note, **_slime_row(report["slime"], tau, multilabel)})
    for name, result in report.get("baselines", {}).items():
        if "error" in result:
            rows.append({"method": name, "note": f"failed: {result['error']}", **_empty(multilabel)})
            continue
        note = f"top-{result['k']} of {result['chunks']} chunks" if result.get("listenable") else "not listenable"
        rows.append({"method": name, "note": note, **_trained_row(result, multilabel)})
    for name, message in report.get("baseline_errors", {}).items():
        rows.append({"method": name, "note": f"failed: {message}", **_empty(multilabel)})
    return {"task": "multi-label" if multilabel else "multi-class", "threshold": float(tau), "rows": rows}


def _cell(value, digits=2, pct=False) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}" if pct else f"{value:.{digits}f}"


def markdown(table: dict) -> list[str]:
    """The table as Markdown lines."""
    multilabel = table["task"] == "multi-label"
    fid = ["macro-AUPRC"] if multilabel else ["top-1 (%)", "top-3 (%)", "top-5 (%)"]
    fid_keys = ["macro_auprc"] if multilabel else ["top1", "top3", "top5"]
    head = ["method", *fid, f"faithfulness (median logit drop, τ = {table['threshold']:g})"]
    head += ["AI (%) ↑", "AD (%) ↓", "AG (%) ↑", "FF ↑", "Fid-In ↑", "SPS ↑", "COMP ↓"]
    head += ["mixture SI-SDRi (dB)", "s / explained clip", "training (s)", "note"]
    lines = [f"## Methods compared ({table['task']})", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        cells = [NAMES.get(r["method"], r["method"])]
        cells += [_cell(r[k], 3) if multilabel else _cell(r[k], pct=True) for k in fid_keys]
        cells += [_cell(r["faithfulness"])] + [_cell(r[k]) for k in METRICS]
        cells += [_cell(r["si_sdri_db"]), _cell(r["seconds_per_clip"], 4), _cell(r["training_seconds"], 0), r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [
        "",
        "Fidelity: the method's own prediction (L2I's Θ, FLINT's h, VIBI's approximator on its top-k chunks) against "
        "the classifier's; SLIME has no global surrogate. Faithfulness, mask metrics and SI-SDRi need a listenable "
        "selection: FLINT's attributes are not (n/a). VIBI always selects its top-k chunks (no τ). Training: fit "
        "time only (L2I: dictionary + Ψ/Θ; FLINT: every loss-weight candidate); the classifier's feature pass is "
        "left out. Mixture SI-SDRi: median over the mixtures the classifier gets right (SLIME: its first clips).",
        "",
    ]
