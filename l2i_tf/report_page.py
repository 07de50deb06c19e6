"""The HTML of `l2i-tf report`: one static, offline page (players, figures, tables; no scripts, no network)."""

from __future__ import annotations

import html
import re

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
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
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
        f"<th scope='col'><span class='visually-hidden'>bar</span></th></tr></thead><tbody>{rows}</tbody></table></div>"
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
    if "mixture" in entry:
        mixture = entry["mixture"]
        facts.append(f"SI-SDRi {mixture['si_sdri_db']:+.1f} dB toward the true source")
        if not mixture["classifier_right"]:
            facts.append("the classifier did not decide the true source's class on any mixture tried")
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


_MIXTURES_INTRO = (
    "<h2 id='mixtures'>Mixture examples</h2><p class='note'>Each mixture adds a test clip of one class (the true "
    "source) to a clip of another class. The interpretation explains the classifier's decision; listen whether it "
    "keeps the true source and drops the other one. SI-SDRi: how much closer the interpretation is to the true "
    "source than the mixture is (dB, higher is better).</p>"
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
    first_mixture = next((i for i, e in enumerate(page["inputs"], 1) if "mixture" in e), None)
    body = "\n".join(
        (_MIXTURES_INTRO if i == first_mixture else "") + _input_html(e, i, page["activations_note"])
        for i, e in enumerate(page["inputs"], 1)
    )
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
