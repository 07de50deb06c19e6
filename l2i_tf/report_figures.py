"""The figures of `l2i-tf report`: spectrograms on one colour scale, the activations H, relevance with τ (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l2i_tf import audio

FIGURE_WIDTH = 10.0  # inches; at DPI, the PNG width in pixels
DPI = 100


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
