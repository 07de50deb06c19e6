"""Scale: `l2i-tf train` and `l2i-tf evaluate --quick` on synthetic data sets of growing size.

Each data set holds N clips in the `folders` layout, one folder per ESC-10 class: clip i of class c = a random clip of
class c plus a random clip of any class at -12..0 dB, each circularly shifted by a random offset, written as 5 s
16 kHz 16-bit wav to a temporary folder (remixes of the bundled ESC-10 clips, seeded). The layout deals each class's
clips round-robin into 5 folds, and training needs every fold (3 train, 1 validates, 1 tests) and two classes in the
training folds (the source term mixes two classes), so every class gets at least 5 clips: the first N // 5 classes
below 50 clips (all 10 from 50 on), and sizes below 10 clips (two classes of 5) are refused. `l2i-tf train` runs with
the demo classifier, ``--epochs`` epochs and ``--nmf-iterations`` NMF passes (the dictionary streams above 512 MB of
frames: see l2i_tf.dictionary.IN_MEMORY_LIMIT_BYTES). Peak memory is the largest resident memory of the process tree,
sampled every 0.2 s (as benchmarks/bulk_throughput.py). Prints per size: wall time, clips/s of the whole job,
examples/s of the feature pass (every split's clips and the training split's source mixtures) and of training
(examples × epochs per second), peak memory, and the disk the job used at its peak (its decode cache and feature
shards: the used bytes of the work folder's disk, sampled with the memory); then the goals' ratios and each rate's
spread across sizes (the whole job's includes the fixed costs: start-up, tracing, the dictionary's set-up; the
default's source mixtures are two a training clip, so they grow with the size).

    python benchmarks/scale.py                       # 400, 4000 and 20000 clips
    python benchmarks/scale.py --sizes 400,4000 --no-evaluate
    python benchmarks/scale.py --sizes 10 --epochs 1 --nmf-iterations 1   # a smoke run: 2 classes of 5 clips
    python benchmarks/scale.py --train-args "--source-mixtures 0 --source-weight 0"   # the paper's training
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up lines, here as in the jobs it runs
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bulk_throughput import tree_rss  # noqa: E402

RATE = 16000
SECONDS = 5
FOLDS = 5  # the folders layout's folds, dealt per class (l2i_tf.tables.folders_table)
MIN_CLASSES = 2  # the source term mixes clips of two classes
MIN_CLIPS = FOLDS * MIN_CLASSES


def classes_for(count: int, available: int = 10) -> int:
    """Classes of a data set of ``count`` clips: as many as give every class a clip in each fold (up to ``available``);
    a ``ValueError`` naming the smallest size below :data:`MIN_CLIPS`."""
    if count < MIN_CLIPS:
        raise ValueError(
            f"{count} clips are too few: the smallest size is {MIN_CLIPS} ({MIN_CLASSES} classes of {FOLDS} clips): "
            f"the folders layout deals a class's clips into {FOLDS} folds, training needs a clip in every fold and "
            f"{MIN_CLASSES} classes in its training folds"
        )
    return min(available, count // FOLDS)


def clip_classes(count: int, available: int = 10) -> list[int]:
    """The class of each of ``count`` clips: round-robin over the first :func:`classes_for` classes."""
    classes = classes_for(count, available)
    return [i % classes for i in range(count)]


def build(folder: Path, count: int, seed: int = 0) -> None:
    """Write ``count`` remixed ESC-10 clips into ``folder/<class name>/NNNNNN.wav``."""
    import soundfile

    from l2i_tf import data, tables

    table = tables.esc10_table()
    waves, labels = data.load_waveforms(table, RATE, RATE * SECONDS)
    rng = np.random.default_rng(seed)
    classes = clip_classes(count, len(table.class_names))
    names = table.class_names[: max(classes) + 1]
    by_class = [np.flatnonzero(labels == c) for c in range(len(names))]
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(classes):
        a, b = rng.choice(by_class[c]), rng.integers(len(waves))
        gain = 10 ** (rng.uniform(-12, 0) / 20)
        x = np.roll(waves[a], rng.integers(RATE * SECONDS)) + gain * np.roll(waves[b], rng.integers(RATE * SECONDS))
        x = x / max(1.0, float(np.abs(x).max()) / 0.99)
        soundfile.write(folder / table.class_names[c] / f"{i:06d}.wav", x, RATE, subtype="PCM_16")


def measure(command: list[str], env: dict, folder: Path) -> tuple[float, int, int, str]:
    """Run ``command``; (wall seconds, peak resident bytes of its process tree, peak bytes it added to the disk that
    holds ``folder`` — its decode cache and feature shards, removed by the end —, its output's tail)."""
    t0 = time.perf_counter()
    disk = shutil.disk_usage(folder).used
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = disk_peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            disk_peak = max(disk_peak, shutil.disk_usage(folder).used - disk)
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:5])}... failed ({proc.returncode}):\n{output[-3000:]}")
    return seconds, peak, disk_peak, output[-2000:]


def run_size(count: int, root: Path, args, env: dict) -> dict:
    data_dir, out = root / f"data{count}", root / f"run{count}"
    t0 = time.perf_counter()
    build(data_dir, count)
    print(f"{count} clips written in {time.perf_counter() - t0:.0f} s", flush=True)
    cli = [sys.executable, "-m", "cli.main"]
    train = [*cli, "train", "--data", str(data_dir), "--layout", "folders", "--out", str(out), "--overwrite"]
    train += ["--epochs", str(args.epochs), "--nmf-iterations", str(args.nmf_iterations), *args.train_args.split()]
    seconds, peak, disk, _ = measure(train, env, root)
    metrics = json.loads((out / "metrics.json").read_text())
    train_examples = metrics["examples"]["train"]  # folds 1-3 of 5, and the source mixtures made from them
    row = {
        "clips": count,
        "train_s": seconds,
        "clips_per_s": count / seconds,
        "features_examples_per_s": sum(metrics["examples"].values()) / metrics["features_seconds"],
        "train_examples": train_examples,
        "train_examples_per_s": train_examples * metrics["epochs_done"] / metrics["train_seconds"],
        "dictionary_s": metrics["dictionary_seconds"],
        "peak_gb": peak / 1e9,
        "disk_gb": disk / 1e9,
        "test_top1": metrics["test"].get("top1"),
    }
    if args.evaluate:
        seconds, peak, _, _ = measure([*cli, "evaluate", str(out), "--quick"], env, root)
        row.update(evaluate_s=seconds, evaluate_peak_gb=peak / 1e9)
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="400,4000,20000", help="comma-separated clip counts")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--nmf-iterations", type=int, default=5)
    parser.add_argument("--train-args", default="", help="more l2i-tf train options, e.g. '--source-mixtures 0'")
    parser.add_argument("--no-evaluate", dest="evaluate", action="store_false", help="skip l2i-tf evaluate --quick")
    parser.add_argument("--workdir", default=None, help="where to write data and runs [a temporary folder]")
    parser.add_argument("--keep", action="store_true", help="keep each size's data and run folder")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for count in sizes:  # before any size runs
        try:
            classes_for(count)
        except ValueError as e:
            parser.error(f"--sizes: {e}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    root = Path(args.workdir or tempfile.mkdtemp(prefix="l2i_scale_"))
    env["L2I_TF_CACHE"] = str(root / "decode_cache")  # the decoded clips of every size, removed at the end
    try:
        rows = [run_size(count, root, args, env) for count in sizes]
    finally:
        if not args.keep:
            shutil.rmtree(root / "decode_cache", ignore_errors=True)
    header = f"{'clips':>6} {'train s':>8} {'clips/s':>8} {'feat ex/s':>9} {'train ex/s':>10} {'peak GB':>8}"
    print(f"\n{header} {'disk GB':>8}", end="")
    print(f" {'eval s':>7} {'eval GB':>8}" if args.evaluate else "")
    for r in rows:
        print(
            f"{r['clips']:>6} {r['train_s']:>8.0f} {r['clips_per_s']:>8.2f} {r['features_examples_per_s']:>9.2f} "
            f"{r['train_examples_per_s']:>10.1f} {r['peak_gb']:>8.2f} {r['disk_gb']:>8.1f}",
            end="",
        )
        print(f" {r['evaluate_s']:>7.0f} {r['evaluate_peak_gb']:>8.2f}" if args.evaluate else "")
    if len(rows) > 1:
        first, last = rows[0], rows[-1]
        print(f"peak memory {last['clips']} / {first['clips']}: {last['peak_gb'] / first['peak_gb']:.2f} (goal ≤ 1.2)")
        for key, what in (
            ("clips_per_s", "clips/s of the whole job"),
            ("features_examples_per_s", "feature pass, examples/s"),
            ("train_examples_per_s", "training, examples/s"),
        ):
            speeds = [r[key] for r in rows]
            print(f"{what}: spread {max(speeds) / min(speeds) - 1:.0%} (goal ≤ 20 %)")


if __name__ == "__main__":
    main()
