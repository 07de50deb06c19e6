"""Bulk explanation throughput: `l2i-tf explain-bulk` (Beam DirectRunner, 2 worker threads) vs a sequential
`l2i-tf explain` loop over the same files in one process.

The 400 bundled ESC-10 clips (5 s, 44.1 kHz ogg), each explained whole from one SavedModel. Each side runs as its own
`l2i-tf` process (start-up included); peak memory is the largest sum of the resident memory of that process and its
children (Beam's workers), sampled every 0.2 s from /proc (Linux). Prints files/s, seconds of audio per second, peak
memory and the ratio bulk / sequential (goal >= 1.6). The two sides alternate for ``--rounds`` rounds (which goes
first alternates too), so a slow spell of a shared machine falls on both; each round's ratio is printed, then the
median.

    python benchmarks/bulk_throughput.py                  # runs/esc10 if it exists, else an untrained demo-size export
    python benchmarks/bulk_throughput.py runs/esc10       # a run folder (exported first) or a SavedModel
    python benchmarks/bulk_throughput.py savedmodels/l2i --workers 2 --files 100
    python benchmarks/bulk_throughput.py runs/esc10 --direct-mode multi_processing  # worker processes, not threads
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text().split()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = int(statm[1]) * page
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def measure(command: list[str]) -> tuple[float, int]:
    """Run ``command``; (wall seconds, peak resident bytes of its process tree)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: 400 lines would fill a pipe and block it
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed ({proc.returncode}):\n{output[-3000:]}")
    print(output.strip().splitlines()[-2] if "explain-bulk" in command else output.strip().splitlines()[-1])
    return seconds, peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default="runs/esc10", help="run folder or SavedModel")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner workers")
    parser.add_argument("--direct-mode", default="multi_threading", choices=["multi_threading", "multi_processing"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--files", type=int, default=400, help="the first N ESC-10 clips")
    parser.add_argument("--rounds", type=int, default=3, help="sequential + bulk rounds; the median ratio counts")
    args = parser.parse_args()

    from l2i_tf import export, tables
    from l2i_tf.explainer import ExplainConfig

    tmp = Path(tempfile.mkdtemp(prefix="bulk_throughput-"))
    source = Path(args.source)
    if not source.exists():
        from explain_throughput import demo_export

        print(f"{source} does not exist: benchmarking an untrained explainer of demo size")
        source = demo_export(tmp / "demo")
    if (source / "interpreter.keras").is_file():
        source = export.export(source, tmp / "savedmodels", "l2i", ExplainConfig(max_seconds=0))
    saved = export.resolve_saved_model(source)
    clips = sorted(tables.esc10_table().paths)[: args.files]
    inputs = tmp / "inputs"  # links in one folder: one glob for the bulk side, the same files for both
    inputs.mkdir()
    for i, clip in enumerate(clips):
        (inputs / f"{i:03d}_{Path(clip).name}").symlink_to(clip)
    files = sorted(str(p) for p in inputs.iterdir())
    audio = 5.0 * len(files)
    cli = [sys.executable, "-m", "cli.main"]

    print(f"SavedModel {saved}; {len(files)} ESC-10 clips ({audio:.0f} s of audio); {os.cpu_count()} CPU cores")
    bulk_options = ["--direct-workers", str(args.workers), "--batch-size", str(args.batch_size)]
    bulk_options += ["--direct-mode", args.direct_mode]
    ratios = []
    for round_ in range(1, args.rounds + 1):
        sides = {  # name -> command without its output folder
            "sequential l2i-tf explain": [*cli, "explain", str(saved), *files, "--out"],
            "explain-bulk": [*cli, "explain-bulk", str(saved), str(inputs / "*"), *bulk_options, "--out"],
        }
        order = list(sides) if round_ % 2 else list(sides)[::-1]
        seconds = {}
        for name in order:
            seconds[name], memory = measure([*sides[name], str(tmp / f"{name.split()[0]}{round_}")])
            print(
                f"round {round_} {name:26s} {seconds[name]:7.1f} s  {len(files) / seconds[name]:6.2f} files/s  "
                f"{audio / seconds[name]:7.1f} audio s/s  peak memory {memory / 2**30:.2f} GiB"
            )
        ratios.append(seconds["sequential l2i-tf explain"] / seconds["explain-bulk"])
        print(f"round {round_} ratio (bulk files/s / sequential files/s): {ratios[-1]:.2f}")
    print(
        f"ratio over {len(ratios)} rounds: median {statistics.median(ratios):.2f} "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}) (goal >= 1.6)"
    )


if __name__ == "__main__":
    main()
