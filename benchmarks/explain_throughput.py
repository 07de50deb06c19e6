"""Explanation throughput: the exported SavedModel's serving_default vs the classifier alone (its classify signature).

Batch of 32 five-second clips, same process, the calls alternating, median of several runs; prints both times,
their ratio (target <= 1.10) and the real-time factor (seconds of compute per second of audio). ``--baseline``
times another export's serving_default in the same loop (e.g. one written by an older version of the package), so
the two ratios come from one run.

    python benchmarks/explain_throughput.py                  # runs/esc10 if it exists, else an untrained demo-size run
    python benchmarks/explain_throughput.py savedmodels/l2i  # an existing export
    python benchmarks/explain_throughput.py runs/esc10 --runs 9 --baseline old_savedmodels/l2i/1
    python benchmarks/explain_throughput.py runs/esc10 --threads 1  # one thread: the ratio of the work done

On a shared machine the median ratio moves by several points from one run to the next, so the ratio of the
fastest runs (the least disturbed) is printed too. With both cores the explanation's ops and the classifier's
overlap and contend; with ``--threads 1`` every op runs alone, so the ratio is that of the work done.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf


def demo_export(folder: Path, k: int = 100) -> Path:
    """An untrained explainer of demo size (VGG 32-256 channels, Ψ 128 wide, K=100; the compute of a trained one),
    exported as a SavedModel into ``folder``."""
    from l2i_tf import classifier, export, files
    from l2i_tf.audio import STFTConfig
    from l2i_tf.explainer import ExplainConfig, Explainer
    from l2i_tf.interpreter import Interpreter, tap_orders

    model = classifier.build_demo_classifier(10, classifier.DemoConfig())
    names, orders = tap_orders(model, classifier.DEMO_LAYERS)
    stft = STFTConfig()
    W = np.random.default_rng(0).random((stft.num_bins, k)).astype("float32")
    W /= np.linalg.norm(W, axis=0, keepdims=True)
    interpreter = Interpreter(
        model, names, orders, k, stft.num_bins, stft.to_dict(), psi={"freq_reduce": "mean"}, dictionary=W
    )
    explainer = Explainer(interpreter, [f"class_{i}" for i in range(10)], ExplainConfig(max_seconds=0))
    export.write_saved_model(explainer, folder)
    files.write_json(folder / export.METADATA_FILE, explainer.metadata())
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default="runs/esc10", help="run folder or SavedModel")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", default=None, help="another SavedModel whose serving_default is timed alongside")
    parser.add_argument("--threads", type=int, default=0, help="intra- and inter-op threads (0: TensorFlow's default)")
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from l2i_tf import export
    from l2i_tf.explainer import ExplainConfig

    tmp = tempfile.TemporaryDirectory()
    source = Path(args.source)
    if not source.exists():
        print(f"{source} does not exist: benchmarking an untrained explainer of demo size")
        source = demo_export(Path(tmp.name) / "demo")
    if (source / "interpreter.keras").is_file():
        t0 = time.perf_counter()
        source = export.export(source, Path(tmp.name) / "savedmodels", "l2i", ExplainConfig(max_seconds=0))
        print(f"exported in {time.perf_counter() - t0:.1f} s")
    path = export.resolve_saved_model(source)
    meta = export.load_metadata(path)
    model = tf.saved_model.load(str(path))
    serve, classify = model.signatures["serving_default"], model.signatures["classify"]
    rate = meta["sample_rate"]
    rng = np.random.default_rng(0)
    x = tf.constant(0.1 * rng.standard_normal((args.batch, int(args.seconds * rate))).astype("float32"))
    calls = [("classifier", classify), ("explanation", serve)]
    if args.baseline:
        baseline = export.resolve_saved_model(args.baseline)
        calls.append(("baseline", tf.saved_model.load(str(baseline)).signatures["serving_default"]))
    for _, fn in calls:  # warm up
        fn(waveform=x)
    times = {name: [] for name, _ in calls}
    cpu = {name: [] for name, _ in calls}  # process CPU seconds (all threads): steadier than wall time under load
    for _ in range(args.runs):
        for name, fn in calls:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(waveform=x)
            _ = [v.numpy() for v in out.values()]
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    classifier_s = statistics.median(times["classifier"])
    explain_s = statistics.median(times["explanation"])
    audio_s = args.batch * args.seconds
    print(f"SavedModel {path} (K={meta['k']}, N={meta['top_n']}, domain {meta['domain']})")
    threads = f", {args.threads} thread(s)" if args.threads else ""
    print(f"batch {args.batch} x {args.seconds:g} s, median of {args.runs} alternating runs{threads}")
    print(f"classifier alone (classify):         {classifier_s:.3f} s")
    print(f"whole explanation (serving_default): {explain_s:.3f} s")
    print(f"ratio: {explain_s / classifier_s:.3f} (target <= 1.10)")
    fastest = {name: min(v) for name, v in times.items()}
    fastest_ratios = ", ".join(f"{n} {v / fastest['classifier']:.3f}" for n, v in fastest.items() if n != "classifier")
    print(f"fastest runs: classifier {fastest['classifier']:.3f} s; ratios to it: {fastest_ratios}")
    if args.baseline:
        baseline_s = statistics.median(times["baseline"])
        print(f"baseline {baseline} (serving_default): {baseline_s:.3f} s, ratio {baseline_s / classifier_s:.3f}")
    cpu_s = {name: statistics.median(v) for name, v in cpu.items()}
    cpu_ratios = ", ".join(f"{name} {v / cpu_s['classifier']:.3f}" for name, v in cpu_s.items() if name != "classifier")
    print(f"CPU time: classifier {cpu_s['classifier']:.3f} s; ratios to it: {cpu_ratios}")
    print(f"real-time factor: {explain_s / audio_s:.4f} (explanation), {classifier_s / audio_s:.4f} (classifier)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
