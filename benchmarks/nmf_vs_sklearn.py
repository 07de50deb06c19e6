"""Side by side: our TensorFlow sparse NMF against scikit-learn's MU solver on the ESC-10 training spectrograms."""

from __future__ import annotations

import argparse
import os
import resource
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.decomposition import NMF  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from l2i_tf import audio, nmf, tables  # noqa: E402
from l2i_tf.dictionary import frames_dataset  # noqa: E402


def peak_gb() -> float:
    """Peak resident memory of this process so far (ru_maxrss, Linux: kB), GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=50, help="MU iterations for both solvers")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-default", action="store_true", help="skip timing the default sparse dictionary")
    args = parser.parse_args()

    stft = audio.STFTConfig()
    train, _, _ = tables.split(tables.esc10_table(), tables.Splits())
    print(f"peak memory after imports: {peak_gb():.2f} GB")
    start = time.perf_counter()
    X = np.concatenate(list(frames_dataset(train, stft).as_numpy_iterator()))  # [frames, F] float32
    print(
        f"data: ESC-10 folds 1-3, {len(train)} clips, X {X.shape[1]} bins x {X.shape[0]} frames ({X.dtype}), "
        f"{(X.max(axis=1) == 0).sum()} all-zero frames; spectrograms in {time.perf_counter() - start:.1f} s"
    )

    # One start for everyone, like sklearn's init="random": |N(0,1)| * sqrt(mean(X) / K).
    rng = np.random.default_rng(args.seed)
    avg = np.sqrt(X.mean() / args.k)
    W0 = (avg * np.abs(rng.standard_normal((X.shape[1], args.k)))).astype(np.float32)  # [F, K]
    H0 = (avg * np.abs(rng.standard_normal((X.shape[0], args.k)))).astype(np.float32)  # [frames, K]
    n = args.iterations
    print(
        f"K={args.k}, {n} iterations, sparsity 0, same start matrices, objective = 0.5*||X - H W^T||^2 "
        "computed by nmf.objective (float64) on each solver's final factors"
    )

    # scikit-learn factorises X [samples=frames, features=F] = W_sk [frames, K] @ H_sk [K, F].
    sk = NMF(n_components=args.k, solver="mu", beta_loss="frobenius", init="custom", max_iter=n, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        H_sk = sk.fit_transform(X, W=H0.copy(), H=np.ascontiguousarray(W0.T))
        t_sk = time.perf_counter() - start
    obj_sk = nmf.objective(X, sk.components_.T, H_sk)
    print(f"sklearn NMF(solver='mu', {H_sk.dtype})      : {t_sk:7.2f} s  objective {obj_sk:.6e}")
    print(f"peak memory after loading the data and sklearn: {peak_gb():.2f} GB")

    # Default steps (2 H + 10 W updates per pass over the data) in both precisions, then the textbook
    # 1 H + 1 W update per iteration, to show where the objective difference comes from.
    variants = [("float32", None), ("bfloat16", None), ("float32", (1, 1))]
    results = []
    for precision, steps in variants:
        extra = {} if steps is None else {"h_steps": steps[0], "w_steps": steps[1]}
        config = nmf.NMFConfig(k=args.k, sparsity=0.0, iterations=n, seed=args.seed, precision=precision, **extra)
        nmf.factorize(X[:2048], nmf.NMFConfig(k=args.k, sparsity=0.0, iterations=1, precision=precision))  # trace
        start = time.perf_counter()
        W, H, history = nmf.factorize(X, config, initial=(W0, H0))
        elapsed = time.perf_counter() - start
        name = f"{precision}, {config.h_steps} H + {config.w_steps} W steps"
        results.append((name, elapsed, nmf.objective(X, W, H), history))
    for name, elapsed, obj, _ in results:
        print(
            f"ours ({name:28s}): {elapsed:7.2f} s  objective {obj:.6e}  "
            f"time ratio ours/sklearn {elapsed / t_sk:.3f}  objective ratio {obj / obj_sk:.4f}"
        )
    for name, elapsed, _, history in results:
        reached = next((i + 1 for i, v in enumerate(history) if v <= obj_sk), None)
        if reached is None:
            print(f"ours ({name}) does not reach sklearn's {n}-iteration objective in {n} iterations")
        else:
            print(
                f"ours ({name}) reaches sklearn's {n}-iteration objective at iteration {reached}: "
                f"~{elapsed * reached / n:.2f} s, time ratio {elapsed * reached / n / t_sk:.3f}"
            )
    print(f"peak memory after the comparison: {peak_gb():.2f} GB")

    if not args.skip_default:
        config = nmf.NMFConfig()
        start = time.perf_counter()
        W, H, history = nmf.factorize(X, config)
        elapsed = time.perf_counter() - start
        rel = np.sqrt(2 * nmf.objective(X, W, H)) / np.linalg.norm(X)
        near_zero = float(np.mean(H < 1e-3 * H.max()))
        print(
            f"default sparse dictionary ({config}): {elapsed:.2f} s, objective {history[-1]:.6e}, "
            f"relative error {rel:.4f}, H near-zero share {near_zero:.3f}"
        )
    print(f"peak memory (ru_maxrss), whole run: {peak_gb():.2f} GB")


if __name__ == "__main__":
    main()
