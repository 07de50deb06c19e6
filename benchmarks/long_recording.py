"""A 10-minute recording through `l2i-tf explain`: the timeline (windows in bounded batches) vs one pass over the
whole recording, side by side in one run.

The recording is the bundled ESC-10 clips of fold 5 concatenated (16 kHz, as long as asked). Each variant runs in
its own process (`l2i-tf explain`), timed, with its peak resident memory read from the process (ru_maxrss):

    python benchmarks/long_recording.py runs/esc10                # 600 s, default window vs --window-seconds 600
    python benchmarks/long_recording.py runs/esc10 --seconds 120
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile


def recording(seconds: float, rate: int, path: Path) -> Path:
    """Fold-5 ESC-10 clips one after another, cut to ``seconds``, written as a float wav."""
    from l2i_tf import data, tables

    waves, _ = data.load_waveforms(tables.esc10_table().with_folds((5,)), rate, int(5 * rate))
    x = np.tile(waves.reshape(-1), int(np.ceil(seconds * rate / waves.size)))[: int(seconds * rate)]
    soundfile.write(path, x.astype("float32"), rate, "FLOAT")
    return path


def explain(run: str, wav: Path, out: Path, *flags) -> dict:
    """`l2i-tf explain` in a child process: wall seconds, its peak memory (MB) and the JSON's timeline length."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    command = [sys.executable, "-m", "cli.main", "explain", run, str(wav), "--out", str(out), *flags]
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    report = json.loads((out / "explanation.json").read_text())
    # ru_maxrss of children is the largest child so far: run the smaller variant first
    return {"seconds": seconds, "peak_mb": max(peak, before) / 1024, "windows": len(report["timeline"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained run folder (l2i-tf train)")
    parser.add_argument("--seconds", type=float, default=600.0)
    args = parser.parse_args()
    config = json.loads((Path(args.run) / "stft.json").read_text())
    rate = int(config["sample_rate"])
    with tempfile.TemporaryDirectory() as tmp:
        wav = recording(args.seconds, rate, Path(tmp) / "long.wav")
        timeline = explain(args.run, wav, Path(tmp) / "timeline")
        whole = explain(args.run, wav, Path(tmp) / "whole", "--window-seconds", str(args.seconds))
    print(f"{args.seconds:g} s recording at {rate} Hz through `l2i-tf explain` (one process each)")
    for name, r in (("timeline (default windows)", timeline), ("one pass (--window-seconds)", whole)):
        print(
            f"  {name:30s} {r['windows']:4d} windows  {r['seconds']:7.1f} s  "
            f"{args.seconds / r['seconds']:6.1f} s audio/s  peak {r['peak_mb']:7.0f} MB"
        )
    print(f"  peak memory ratio timeline/one pass: {timeline['peak_mb'] / whole['peak_mb']:.2f}")
    print(f"  time ratio timeline/one pass: {timeline['seconds'] / whole['seconds']:.2f}")
    peak_gb = timeline["peak_mb"] * 2**20 / 1e9  # ru_maxrss is in KiB: the MB printed are MiB
    print(f"  goal: timeline peak <= 2 GB: {peak_gb:.2f} GB, {'met' if peak_gb <= 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
