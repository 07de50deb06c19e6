"""One epoch's checkpoint write: the whole interpreter as ``.keras`` (``model.save``, the checkpoint of earlier
versions) vs what training changes as ``.npz`` (:func:`l2i_tf.checkpoints.save_variables`, this version's).

The run folder's trained ``interpreter.keras`` is loaded and compiled as training compiles it (its optimizer built),
then the two writes alternate ``--rounds`` times into a temporary folder (the run folder is only read). Prints each
write's median, min and max, the files' sizes and the ratio old / new of the medians.

    python benchmarks/checkpoint_write.py                 # runs/esc10
    python benchmarks/checkpoint_write.py RUN_DIR --rounds 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from l2i_tf import checkpoints, files, runs, training


def seconds(write) -> float:
    start = time.perf_counter()
    write()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/esc10", type=Path, help="a trained run folder")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    interpreter = runs.load_keras(args.run / runs.INTERPRETER, compile=False)
    interpreter.compile(optimizer=training.optimizer(runs.read_config(args.run)))
    interpreter.optimizer.build(interpreter.head_variables)
    digest = checkpoints.classifier_digest(interpreter)  # once a training session
    with tempfile.TemporaryDirectory() as folder:
        old_file, new_file = Path(folder) / "epoch-0001.keras", Path(folder) / "epoch-0001.npz"

        def old():
            with files.atomic_file(old_file) as tmp:
                interpreter.save(tmp)

        def new():
            with files.atomic_file(new_file) as tmp:
                checkpoints.save_variables(tmp, interpreter, digest)

        old(), new()  # warm-up
        times = {"old .keras": [], "new .npz": []}
        for _ in range(args.rounds):
            times["old .keras"].append(seconds(old))
            times["new .npz"].append(seconds(new))
        for (name, values), path in zip(times.items(), (old_file, new_file), strict=True):
            print(
                f"{name}: median {statistics.median(values) * 1e3:.1f} ms (min {min(values) * 1e3:.1f}, max "
                f"{max(values) * 1e3:.1f}), {path.stat().st_size / 1e6:.2f} MB"
            )
    ratio = statistics.median(times["old .keras"]) / statistics.median(times["new .npz"])
    print(f"old / new: {ratio:.1f}x")


if __name__ == "__main__":
    main()
