"""`l2i-tf report`: a static, offline HTML page of explanations (players, spectrograms, H, relevance, predictions)."""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from l2i_tf import audio, data, export, tables

log = logging.getLogger(__name__)

TOP_PREDICTIONS = 3
FIGURE_WIDTH = 10.0  # inches; at DPI, the PNG width in pixels
DPI = 100


class ReportError(ValueError):
    """A report that cannot be written as asked (the output folder exists, nothing to explain)."""


@dataclasses.dataclass(frozen=True)
class ReportInput:
    """One clip to explain: its file and, for a bundled example, its true class."""

    path: str
    true_class: str | None = None


# -------------------------------------------------------------------- inputs


def example_inputs(n: int, folds=(5,)) -> list[ReportInput]:
    """``n`` clips of the bundled ESC-10's ``folds``, one class after another (first clip of each class, then the
    second, ...), so a few examples cover different classes."""
    if n < 1:
        raise ValueError(f"the number of examples must be >= 1, got {n!r}")
    table = tables.esc10_table().with_folds(folds)
    by_class = [np.flatnonzero(table.labels == c) for c in range(len(table.class_names))]
    picked: list[ReportInput] = []
    for rank in range(max(len(c) for c in by_class)):
        for c, indices in enumerate(by_class):
            if rank < len(indices) and len(picked) < n:
                picked.append(ReportInput(table.paths[indices[rank]], table.class_names[c]))
    if len(picked) < n:
        log.warning("asked for %d examples, fold(s) %s hold only %d clips", n, list(folds), len(picked))
    return picked


def _test_folds(run_folder: Path | None) -> tuple[int, ...]:
    """The run's test folds if it trained on the bundled ESC-10, else fold 5."""
    try:
        train = json.loads((run_folder / "config.json").read_text())["train"]
    except (TypeError, OSError, ValueError, KeyError):
        return (5,)
    if train.get("data") is None and train.get("layout", "esc10") == "esc10":
        return tuple(train.get("test_folds") or (5,))
    return (5,)


def _slug(index: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).strip("_.")[:40] or "input"
    return f"{index:02d}-{stem}"


# -------------------------------------------------------------------- model description


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_folder(source: export.ExplainSource) -> Path | None:
    """The run folder behind a source: the source itself, or the run an export was made from (if still there)."""
    if source.kind == "run":
        return Path(source.path)
    run = source.metadata.get("run")
    if run and (Path(run) / "interpreter.keras").is_file() and (Path(run) / "config.json").is_file():
        return Path(run)
    return None


def describe(source: export.ExplainSource, run_folder: Path | None) -> dict:
    """Model, dictionary and STFT configuration, training metrics and evaluation files, for the page header."""
    meta = source.metadata
    train = (_read_json(run_folder / "config.json") or {}).get("train", {}) if run_folder else {}
    model = {
        "source": str(source.path),
        "kind": "run folder" if source.kind == "run" else "SavedModel export",
        "classifier": train.get("classifier"),
        "tapped layers": ", ".join(train.get("layers") or []) or None,
        "pooling": train.get("pooling"),
        "classes": f"{len(source.class_names)}: {', '.join(source.class_names)}",
        "multi-label": meta.get("multilabel"),
        "threshold τ": source.threshold,
        "top N": meta.get("top_n"),
        "mask domain": meta.get("domain"),
    }
    if source.kind == "savedmodel":
        model.update(version=meta.get("version"), exported=meta.get("created"), run=meta.get("run"))
    dictionary = {"K (components)": meta.get("k")}
    saved = _read_json(run_folder / "dictionary" / "dictionary.json") if run_folder else None
    if saved is None and train.get("dictionary"):
        saved = _read_json(Path(train["dictionary"]) / "dictionary.json")
    if saved:
        dictionary["bins F"] = saved.get("num_bins")
        dictionary.update({f"NMF {key}": value for key, value in (saved.get("nmf") or {}).items()})
        provenance = saved.get("provenance") or {}
        if provenance.get("folds"):
            dictionary["learnt on folds"] = ", ".join(str(f) for f in provenance["folds"])
    stft = audio.STFTConfig.from_dict(meta["stft"])
    stft_rows = {
        "sample rate (Hz)": stft.sample_rate,
        "frame length (samples)": stft.frame_length,
        "hop (samples)": stft.frame_step,
        "FFT length": stft.fft_length,
        "window": stft.window,
        "bins F": stft.num_bins,
    }
    metrics = (_read_json(run_folder / "metrics.json") or {}) if run_folder else {}
    fidelity = {}
    for split in ("validation", "test"):
        for key, value in (metrics.get(split) or {}).items():
            if isinstance(value, int | float):
                fidelity[f"{split} {key}"] = value
    return {
        "model": _drop_none(model),
        "dictionary": _drop_none(dictionary),
        "stft": stft_rows,
        "fidelity": fidelity,
        "evaluation": find_evaluation(run_folder) if run_folder else [],
    }


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def find_evaluation(run_folder: Path) -> list[dict]:
    """``l2i-tf evaluate``'s output under a run folder: Markdown files (``*.md``), ``evaluation/*.json`` and
    ``evaluation*.json``.

    Returns ``[{"file": relative path, "markdown": text}]`` or ``{"file", "json": content}``; a JSON file with a
    Markdown file of the same stem is left out (the Markdown holds its tables).
    """
    found, stems = [], set()
    for path in sorted(run_folder.rglob("*.md")):
        if "checkpoints" in path.parts or "logs" in path.parts:
            continue
        found.append({"file": str(path.relative_to(run_folder)), "markdown": path.read_text(errors="replace")})
        stems.add((path.parent, path.stem))
    for path in sorted({*run_folder.rglob("evaluation*.json"), *run_folder.glob("evaluation/*.json")}):
        if (path.parent, path.stem) in stems:
            continue
        content = _read_json(path)
        if content is not None:
            found.append({"file": str(path.relative_to(run_folder)), "json": content})
    return found


# -------------------------------------------------------------------- figures


def _figure(height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(FIGURE_WIDTH, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> tuple[int, int]:
    fig.savefig(path, dpi=DPI, format="png")
    width, height = fig.get_size_inches() * DPI
    return int(round(width)), int(round(height))


def plot_spectrograms(x_input: np.ndarray, x_interpretation: np.ndarray, stft: audio.STFTConfig, path: Path):
    """log1p-magnitude spectrograms [T, F] of the input and the interpretation, side by side, one colour scale."""
    fig = _figure(3.2)
    axes = fig.subplots(1, 2, sharey=True)
    vmax = max(float(x_input.max()), 1e-6)
    seconds = x_input.shape[0] * stft.frame_step / stft.sample_rate
    extent = (0.0, seconds, 0.0, stft.sample_rate / 2000)
    image = None
    for ax, x, title in ((axes[0], x_input, "Input"), (axes[1], x_interpretation, "Interpretation")):
        image = ax.imshow(
            x.T, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=0.0, vmax=vmax, interpolation="none"
        )
        ax.set_title(title)
        ax.set_xlabel("time (s)")
    axes[0].set_ylabel("frequency (kHz)")
    fig.colorbar(image, ax=axes, label="log(1 + |STFT|)", pad=0.01)
    return _save(fig, path)


def plot_activations(h: np.ndarray, selected: list[int], stft: audio.STFTConfig, path: Path):
    """The activation matrix H [T, K] as a heatmap (components on the y axis; selected ones labelled)."""
    fig = _figure(3.0)
    ax = fig.subplots()
    seconds = h.shape[0] * stft.frame_step / stft.sample_rate
    k = h.shape[1]
    image = ax.imshow(
        h.T, origin="lower", aspect="auto", extent=(0.0, seconds, -0.5, k - 0.5), cmap="viridis", interpolation="none"
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("component k")
    if selected:
        ax.set_yticks(sorted(selected))
        for tick in ax.get_yticklabels():
            tick.set_color("#c2185b")
        ax.set_ylabel("component k (selected labelled)")
    ax.set_title(f"Activations H ({h.shape[0]} frames × {k} components)")
    fig.colorbar(image, ax=ax, label="activation", pad=0.01)
    return _save(fig, path)


def plot_relevance(relevance: np.ndarray, selected: list[int], threshold: float, target: str, path: Path):
    """Relevance per component as bars, selected ones highlighted, and the threshold τ as a dashed line."""
    fig = _figure(2.6)
    ax = fig.subplots()
    k = len(relevance)
    colours = np.where(np.isin(np.arange(k), selected), "#c2185b", "#9e9e9e")
    ax.bar(np.arange(k), relevance, width=0.8, color=colours)
    ax.axhline(threshold, color="#1565c0", linestyle="--", linewidth=1.2, label=f"τ = {threshold:g}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlim(-0.7, k - 0.3)
    ax.set_ylim(min(-0.05, float(relevance.min()) * 1.1), 1.08)
    ax.set_xlabel("component k")
    ax.set_ylabel("relevance")
    ax.set_title(f"Relevance for “{target}” (selected: highlighted)")
    ax.legend(loc="upper right", frameon=False)
    return _save(fig, path)


# -------------------------------------------------------------------- one input


class _Analysis:
    """The spectrogram and (when an interpreter is at hand) H of a waveform, as ``tf.function``s traced once."""

    def __init__(self, stft: audio.STFTConfig, interpreter=None):
        spec = [tf.TensorSpec([None, None], tf.float32)]
        self._spectrogram = tf.function(lambda w: audio.analyze(w, stft)[0], input_signature=spec)
        self._activations = None
        if interpreter is not None:
            self._activations = tf.function(
                lambda w: interpreter(w, training=False)["activations"], input_signature=spec
            )

    def spectrogram(self, waveform: np.ndarray) -> np.ndarray:
        """[S] -> log1p magnitude [T, F]."""
        return self._spectrogram(tf.constant(waveform[None], tf.float32))[0].numpy()

    def activations(self, waveform: np.ndarray) -> np.ndarray | None:
        """[S] -> H [T, K], or None without an interpreter."""
        if self._activations is None:
            return None
        return self._activations(tf.constant(waveform[None], tf.float32))[0].numpy()


def _top(probabilities: dict, n: int = TOP_PREDICTIONS) -> list[tuple[str, float]]:
    return sorted(probabilities.items(), key=lambda item: -item[1])[:n]


def explain_input(source, analysis: _Analysis, item: ReportInput, slug: str, folder: Path, class_name=None) -> dict:
    """Explain one input into ``folder/audio/<slug>/`` and ``folder/img/<slug>-*.png``; returns its page entry."""
    import soundfile

    audio_dir = folder / "audio" / slug
    # Decode once; the model explains (and the page plays) exactly what was decoded, at the model's rate.
    waveform = export.load_audio(item.path, source.sample_rate)
    audio_dir.mkdir(parents=True)
    soundfile.write(audio_dir / "input.wav", waveform, source.sample_rate, subtype="FLOAT")
    result = export.explain_file(source, audio_dir / "input.wav", audio_dir, class_name)
    result.update(input=item.path, decoded="input.wav")
    (audio_dir / "explanation.json").write_text(json.dumps(result, indent=2))
    interpretation, _ = soundfile.read(audio_dir / "interpretation.wav", dtype="float32")
    stft = audio.STFTConfig.from_dict(source.metadata["stft"])
    selected = [s["component"] for s in result["selected"]]
    relevance = np.asarray(result["relevance"])
    images = {}
    size = plot_spectrograms(
        analysis.spectrogram(waveform),
        analysis.spectrogram(interpretation),
        stft,
        folder / "img" / f"{slug}-spectrograms.png",
    )
    images["spectrograms"] = {
        "src": f"img/{slug}-spectrograms.png",
        "size": size,
        "alt": f"Spectrograms of the input (left) and the interpretation (right), {result['seconds']:.1f} s, "
        f"0 to {stft.sample_rate / 2000:g} kHz, on the same colour scale.",
    }
    h = analysis.activations(waveform)
    if h is not None:
        size = plot_activations(h, selected, stft, folder / "img" / f"{slug}-activations.png")
        strongest = np.argsort(-h.max(axis=0))[:3]
        images["activations"] = {
            "src": f"img/{slug}-activations.png",
            "size": size,
            "alt": f"Heatmap of the activation matrix H, {h.shape[1]} components over {h.shape[0]} frames; most "
            f"active components: {', '.join(str(int(k)) for k in strongest)}.",
        }
    size = plot_relevance(
        relevance, selected, result["threshold"], result["target_class"], folder / "img" / f"{slug}-relevance.png"
    )
    listed = ", ".join(f"{s['component']} ({s['relevance']:.2f})" for s in result["selected"]) or "none"
    images["relevance"] = {
        "src": f"img/{slug}-relevance.png",
        "size": size,
        "alt": f"Bar chart of the relevance of {len(relevance)} components for {result['target_class']}, with the "
        f"threshold τ = {result['threshold']:g}; selected components: {listed}.",
    }
    players = [
        {"label": f"Input: {Path(item.path).name}", "src": f"audio/{slug}/input.wav"},
        {"label": f"Interpretation (explaining {result['target_class']})", "src": f"audio/{slug}/interpretation.wav"},
    ]
    players += [
        {"label": f"Component {s['component']} (relevance {s['relevance']:.2f})", "src": f"audio/{slug}/{s['file']}"}
        for s in result["selected"]
    ]
    return {
        "slug": slug,
        "input": item.path,
        "name": Path(item.path).name,
        "true_class": item.true_class,
        "seconds": result["seconds"],
        "target_class": result["target_class"],
        "threshold": result["threshold"],
        "classifier": _top(result["classifier"]["probabilities"]),
        "interpreter": _top(result["interpreter"]["probabilities"]),
        "selected": result["selected"],
        "players": players,
        "images": images,
    }


# -------------------------------------------------------------------- the page


def build_report(
    source: str | Path,
    inputs=(),
    out: str | Path = "report",
    examples: int = 0,
    overwrite: bool = False,
    threshold: float | None = None,
    top_n: int | None = None,
    domain: str | None = None,
    class_name: str | None = None,
    safe_mode: bool = True,
) -> dict:
    """Explain ``inputs`` (and ``examples`` bundled test clips) and write ``out/index.html`` with its audio and images.

    The page is built in a hidden temporary folder next to ``out`` and renamed into place once complete; an
    existing ``out`` is refused unless ``overwrite`` (then replaced only after the new report is complete). An
    input that cannot be explained (undecodable, empty, rejected by the model) is listed on the page with its
    error. Returns the page's content (also written as ``out/report.json``).

    Args:
        source: a run folder or an exported SavedModel (see :class:`~l2i_tf.export.ExplainSource`).
        inputs: audio file paths (or :class:`ReportInput`).
        out: the report folder.
        examples: also explain this many test clips of the bundled ESC-10 (the run's test folds).
        threshold, top_n, domain: as ``l2i-tf explain``.
        class_name: class to explain (default: each clip's prediction).
        safe_mode: False loads ``.keras`` files holding Python code (Lambda layers); only for trusted files.

    Raises:
        ReportError: ``out`` exists (without ``overwrite``) or is not writable, or there is nothing to explain.
        ValueError: bad options for this source (see :class:`~l2i_tf.export.ExplainSource`), unknown class.
    """
    out = Path(out)
    _check_out(out, overwrite)
    items = [i if isinstance(i, ReportInput) else ReportInput(str(i)) for i in inputs]
    if not items and not examples:
        raise ReportError("nothing to explain: give INPUT files or --examples N")
    src = export.ExplainSource(source, threshold=threshold, top_n=top_n, domain=domain, safe_mode=safe_mode)
    src.class_index(class_name)
    run_folder = _run_folder(src)
    if examples:
        items += example_inputs(examples, _test_folds(run_folder))
    interpreter, h_note = _interpreter(src, run_folder, safe_mode)
    analysis = _Analysis(audio.STFTConfig.from_dict(src.metadata["stft"]), interpreter)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise ReportError(f"cannot write next to the report folder {str(out)!r}: {e.strerror or e}") from None
    try:
        (tmp / "img").mkdir()
        entries = []
        for index, item in enumerate(items, 1):
            slug = _slug(index, item.path)
            try:
                entry = explain_input(src, analysis, item, slug, tmp, class_name)
            except (data.AudioDataError, tf.errors.OpError, ValueError, RuntimeError) as e:
                message = export.graph_error_message(e) if isinstance(e, tf.errors.OpError) else str(e)
                log.warning("%s: %s", item.path, message)
                shutil.rmtree(tmp / "audio" / slug, ignore_errors=True)
                entry = {"slug": slug, "input": item.path, "name": Path(item.path).name, "error": message}
            else:
                log.info("%s: explained %s", item.path, entry["target_class"])
            entries.append(entry)
        page = {
            "title": f"L2I report: {Path(src.path).name}",
            "created": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "header": describe(src, run_folder),
            "activations_note": h_note,
            "inputs": entries,
        }
        (tmp / "index.html").write_text(render(page), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(page, indent=2, default=str))
        _move_into_place(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return page


def _interpreter(source: export.ExplainSource, run_folder: Path | None, safe_mode: bool = True):
    """The Keras interpreter that gives H, and a note when there is none."""
    if source.explainer is not None:
        return source.explainer.interpreter, None
    if run_folder is not None:
        from l2i_tf import training

        try:
            run = training.load_run(run_folder, safe_mode=safe_mode)
        except (ValueError, OSError) as e:
            log.warning("cannot load the export's run %s for H: %s", run_folder, e)
        else:
            if run.class_names == source.class_names and run.interpreter.k == source.metadata["k"]:
                return run.interpreter, f"H computed by the run this export was made from ({run_folder})."
    return None, "H not available from a SavedModel export (its run folder is not there to compute it)."


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"the report folder {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ReportError(f"the report folder {str(out)!r} already exists and is not empty; pass --overwrite")


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished report to ``out``; an old one is moved aside first and removed only afterwards."""
    _check_out(out, overwrite)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -------------------------------------------------------------------- HTML

_CSS = """
:root { --accent: #c2185b; --muted: #5f6368; --line: #dadce0; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #202124; background: #f8f9fa; }
main { max-width: 1060px; margin: 0 auto; padding: 1.5rem 1rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.3rem; margin: 0 0 .5rem; overflow-wrap: anywhere; }
h3 { font-size: 1.05rem; margin: 1rem 0 .4rem; }
.meta { color: var(--muted); margin: 0 0 1rem; overflow-wrap: anywhere; }
section, details { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.25rem;
                   margin: 0 0 1.25rem; }
summary { cursor: pointer; font-weight: 600; }
.config { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 0 1.5rem; }
table { border-collapse: collapse; width: 100%; font-size: .95rem; margin: .25rem 0 .75rem; }
th, td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top;
         overflow-wrap: anywhere; }
th { font-weight: 600; }
table.kv th { white-space: nowrap; width: 1%; padding-right: 1rem; }
table.md { width: auto; min-width: 50%; }
table.md td.num { text-align: left; }
table.md th, table.md td { padding-right: 1.25rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.predictions { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5rem; }
td.meter { width: 35%; }
.bar { display: block; height: .6rem; background: var(--accent); border-radius: 2px; vertical-align: middle; }
.players { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: .5rem 1.25rem; }
.player { display: flex; flex-direction: column; }
.player label { font-size: .95rem; }
audio { width: 100%; }
figure { margin: .75rem 0; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: .9rem; }
.note { color: var(--muted); font-style: italic; }
.error { border-color: #d93025; background: #fce8e6; }
.error pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }
@media (max-width: 700px) { .predictions { grid-template-columns: 1fr; } }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _format(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _kv_table(rows: dict, caption: str) -> str:
    body = "".join(f"<tr><th scope='row'>{_e(k)}</th><td>{_e(_format(v))}</td></tr>" for k, v in rows.items())
    return f"<div><h3>{_e(caption)}</h3><table class='kv'>{body}</table></div>"


def markdown_to_html(text: str) -> str:
    """The subset of Markdown ``l2i-tf evaluate`` writes: headings, pipe tables, paragraphs (everything escaped)."""
    parts, table, paragraph = [], [], []

    def flush():
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            rows = [r for r in rows if not all(re.fullmatch(r":?-{2,}:?", c) for c in r if c)]
            head, *body = rows
            html_rows = "".join("<tr>" + "".join(f"<td{_num(c)}>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
            parts.append(
                "<table class='md'><thead><tr>"
                + "".join(f"<th scope='col'>{_inline(c)}</th>" for c in head)
                + f"</tr></thead><tbody>{html_rows}</tbody></table>"
            )
            table.clear()
        if paragraph:
            parts.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if paragraph:
                flush()
            table.append(stripped)
            continue
        if table:
            flush()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if heading:
            flush()
            parts.append(f"<h3>{_inline(heading.group(2))}</h3>")
        elif stripped:
            paragraph.append(stripped)
        else:
            flush()
    flush()
    return "\n".join(parts)


def _inline(text: str) -> str:
    """Escaped text with Markdown's `code` and **bold**."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(text))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)


def _num(cell: str) -> str:
    number = r"[-+−]?[\d.]+(e[-+]?\d+)?\s*%?"
    return " class='num'" if re.fullmatch(rf"{number}(\s*±\s*{number})?", cell) else ""


def _flatten(obj, prefix="") -> dict:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}{key} / " if not isinstance(value, dict) else f"{prefix}{key}."))
        return out
    if isinstance(obj, list):
        if all(isinstance(v, int | float) for v in obj) and len(obj) <= 12:
            return {prefix.rstrip(" /."): ", ".join(_format(v) for v in obj)}
        return {prefix.rstrip(" /."): f"[{len(obj)} values]"}
    return {prefix.rstrip(" /."): obj}


def _evaluation_html(found: list[dict]) -> str:
    if not found:
        return "<p class='note'>No evaluation yet (run <code>l2i-tf evaluate RUN_DIR</code> to add its tables).</p>"
    parts = []
    for item in found:
        parts.append(f"<p class='meta'>From <code>{_e(item['file'])}</code></p>")
        if "markdown" in item:
            parts.append(markdown_to_html(item["markdown"]))
        else:
            rows = {k: v for k, v in _flatten(item["json"]).items() if isinstance(v, int | float | str | bool)}
            parts.append(_kv_table(rows, "Figures"))
    return "\n".join(parts)


def _predictions_table(title: str, top: list[tuple[str, float]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class='num'>{p:.1%}</td>"
        f"<td class='meter'><span class='bar' style='width:{max(p, 0.0):.0%}'></span></td></tr>"
        for name, p in top
    )
    return (
        f"<div><h3>{_e(title)}</h3><table><thead><tr><th scope='col'>class</th><th scope='col'>probability</th>"
        f"<th scope='col'>share</th></tr></thead><tbody>{rows}</tbody></table></div>"
    )


def _image(image: dict, caption: str) -> str:
    width, height = image["size"]
    return (
        f"<figure><img src='{_e(image['src'])}' alt='{_e(image['alt'])}' width='{width}' height='{height}'>"
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _input_html(entry: dict, number: int, note: str | None) -> str:
    if "error" in entry:
        return (
            f"<section class='error' id='{_e(entry['slug'])}'><h2>{number}. {_e(entry['name'])}: not explained</h2>"
            f"<p class='meta'>{_e(entry['input'])}</p><pre>{_e(entry['error'])}</pre></section>"
        )
    slug = entry["slug"]
    facts = [f"{entry['seconds']:.2f} s", f"explaining “{entry['target_class']}”", f"τ = {entry['threshold']:g}"]
    if entry.get("true_class"):
        facts.insert(1, f"true class “{entry['true_class']}”")
    chosen = len(entry["selected"])
    facts.append(f"{chosen} component{'s' if chosen != 1 else ''} selected")
    players = []
    for i, player in enumerate(entry["players"]):
        pid = f"{slug}-player-{i}"
        players.append(
            f"<div class='player'><label for='{pid}'>{_e(player['label'])}</label>"
            f"<audio id='{pid}' controls preload='metadata' src='{_e(player['src'])}'></audio></div>"
        )
    if not entry["selected"]:
        players.append("<p class='note'>No component is above τ: the interpretation is silent.</p>")
    images = entry["images"]
    figures = [_image(images["spectrograms"], "Input and interpretation, same colour scale.")]
    if "activations" in images:
        figures.append(_image(images["activations"], "Activation matrix H from Ψ; selected components labelled."))
    else:
        figures.append(f"<p class='note'>{_e(note or 'H not available.')}</p>")
    figures.append(_image(images["relevance"], "Relevance r_k; dashed line: threshold τ."))
    return (
        f"<section id='{_e(slug)}' aria-labelledby='{_e(slug)}-title'>"
        f"<h2 id='{_e(slug)}-title'>{number}. {_e(entry['name'])}</h2>"
        f"<p class='meta'>{_e(' · '.join(facts))}<br>{_e(entry['input'])}</p>"
        f"<div class='players'>{''.join(players)}</div>"
        f"<div class='predictions'>{_predictions_table('Classifier f: top predictions', entry['classifier'])}"
        f"{_predictions_table('Interpreter Θ: top predictions', entry['interpreter'])}</div>"
        f"{''.join(figures)}</section>"
    )


def render(page: dict) -> str:
    """The report as one HTML document (inline CSS, no scripts, relative links only)."""
    header = page["header"]
    config = [_kv_table(header["model"], "Model"), _kv_table(header["dictionary"], "Dictionary")]
    config.append(_kv_table(header["stft"], "STFT"))
    if header["fidelity"]:
        config.append(_kv_table(header["fidelity"], "Fidelity at training (l2i-tf train)"))
    explained = sum("error" not in e for e in page["inputs"])
    failed = len(page["inputs"]) - explained
    summary = f"{explained} input{'s' if explained != 1 else ''} explained"
    if failed:
        summary += f", {failed} could not be explained"
    contents = "".join(
        f"<li><a href='#{_e(e['slug'])}'>{_e(e['name'])}</a>{' (error)' if 'error' in e else ''}</li>"
        for e in page["inputs"]
    )
    body = "\n".join(_input_html(e, i, page["activations_note"]) for i, e in enumerate(page["inputs"], 1))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(page["title"])}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<header>
<h1>{_e(page["title"])}</h1>
<p class="meta">Listen to Interpret (L2I) · {_e(summary)} · generated {_e(page["created"])}</p>
</header>
<details open><summary>Configuration</summary><div class="config">{"".join(config)}</div></details>
<details open><summary>Evaluation (l2i-tf evaluate)</summary>{_evaluation_html(header["evaluation"])}</details>
<nav aria-label="Inputs"><ol>{contents}</ol></nav>
{body}
</main>
</body>
</html>
"""
