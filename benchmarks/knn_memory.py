"""Peak resident memory of the kNN evaluation over a synthetic 100k x 2048 memory.

    python benchmarks/knn_memory.py | tee benchmarks/results/knn_memory_2026-12-01.jsonl

Each variant runs in a fresh process (`--variant NAME`, KERAS_BACKEND=numpy), so that
`ru_maxrss` is its own peak; `baseline_mb` is the peak after the imports, `knn_mb` the rest:

- `dense_float32`: the path before `FeatureBank` (simsiam_keras/knn.py at e051096, copied
  below): the batches concatenated into float32 `[N, C]` arrays, the memory normalised into a
  copy, the queries compared with all of it in blocks of 2**25 // N queries.
- `bank_float32`, `bank_float16`: `knn.FeatureBank` in RAM, as `backbone_knn_accuracy` uses it.
- `bank_float32_disk`, `bank_float16_disk`: the memory in `.npy` chunks in a temporary folder.

The "backbone" is a seeded generator of random unit vectors in batches of 256 with 1000
classes, the same in every variant. One JSON line per variant: peaks in MB, the memory's
stored bytes, its time relative to `dense_float32` (the whole run and the kNN step alone:
ratios, since this machine is noisy: the fastest of `--repeats` rounds) and top-1, which is
chance (~0.1 %) and must agree.

With `--blocks`, also one line per Keras backend: the time of one query block against one
chunk (`[1024, 2048] x [2048, 8192]`, then its top 200) with `keras.ops.matmul` and
`keras.ops.top_k`, relative to NumPy's matmul and argpartition (the choice in knn.py).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

VARIANTS = (
    "dense_float32",
    "bank_float32",
    "bank_float16",
    "bank_float32_disk",
    "bank_float16_disk",
)
BACKENDS = ("tensorflow", "jax", "torch")


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _batches(seed, rows, dim, classes, batch=256):
    """Seeded random unit vectors and labels, batch by batch: what a backbone would yield."""
    for i, start in enumerate(range(0, rows, batch)):
        rng = np.random.default_rng([seed, i])
        x = rng.standard_normal((min(batch, rows - start), dim), dtype=np.float32)
        yield x / np.linalg.norm(x, axis=1, keepdims=True), rng.integers(0, classes, len(x))


def _dense_knn_accuracy(train, train_labels, query, query_labels, num_classes, k, temperature):
    """`knn_accuracy` as it was (e051096): whole-memory blocks, float32, a normalised copy."""

    def normalize(x):
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)

    train, query = normalize(train), normalize(query)
    chunk = max(1, min(1024, 2**25 // len(train)))
    scores = np.zeros((len(query), num_classes), np.float32)
    for start in range(0, len(query), chunk):
        sim = query[start : start + chunk] @ train.T
        rows = np.arange(len(sim))[:, None]
        top = np.argpartition(sim, len(train) - k, axis=1)[:, -k:]
        weights = np.exp(sim[rows, top].astype(np.float64) / temperature)
        flat = (rows * num_classes + train_labels[top]).ravel()
        votes = np.bincount(flat, weights=weights.ravel(), minlength=len(sim) * num_classes)
        scores[start : start + len(sim)] = votes.reshape(len(sim), num_classes)
    ranking = np.argsort(-scores, axis=-1, kind="stable")[:, :1]
    return {"knn_top1": 100.0 * float(np.mean(ranking[:, 0] == query_labels))}


def _run_variant(args):
    from simsiam_keras import knn

    baseline = _peak_mb()
    shape = (args.dim, args.classes)
    start = time.perf_counter()
    if args.variant == "dense_float32":
        train = [*zip(*_batches(0, args.memory, *shape))]
        train_x, train_y = np.concatenate(train[0]), np.concatenate(train[1])
        del train
        query = [*zip(*_batches(1, args.queries, *shape))]
        query_x, query_y = np.concatenate(query[0]), np.concatenate(query[1])
        del query
        bank_bytes = train_x.nbytes
        built = time.perf_counter()
        result = _dense_knn_accuracy(train_x, train_y, query_x, query_y, args.classes, 200, 0.2)
    else:
        dtype = args.variant.split("_")[1]
        directory = tempfile.gettempdir() if args.variant.endswith("_disk") else None
        with (
            knn.FeatureBank(dtype, directory, args.chunk_rows) as memory,
            knn.FeatureBank(dtype, None, 1024) as queries,
        ):
            for x, y in _batches(0, args.memory, *shape):
                memory.append(x, y)
            for x, y in _batches(1, args.queries, *shape):
                queries.append(x, y)
            bank_bytes = memory.nbytes
            built = time.perf_counter()
            result = knn.knn_accuracy(memory, None, queries, None, args.classes, k=200)
    end = time.perf_counter()
    peak = _peak_mb()
    return {
        "variant": args.variant,
        "peak_mb": round(peak),
        "baseline_mb": round(baseline),
        "knn_mb": round(peak - baseline),
        "bank_bytes": int(bank_bytes),
        "knn_top1": result["knn_top1"],
        "_total_s": end - start,
        "_knn_s": end - built,
    }


def _run_block(args):
    """The fastest of 7 timings of one [Q, C] x [C, R] block and its top 200."""
    rng = np.random.default_rng(0)
    query = rng.standard_normal((1024, args.dim), dtype=np.float32)
    chunk = rng.standard_normal((8192, args.dim), dtype=np.float32)
    if args.block == "numpy":

        def block():
            sims = query @ chunk.T
            top = np.argpartition(sims, sims.shape[1] - 200, axis=1)[:, -200:]
            return np.take_along_axis(sims, top, 1)

    else:
        from keras import ops

        def block():
            sims = ops.matmul(ops.convert_to_tensor(query), ops.transpose(chunk))
            return [ops.convert_to_numpy(t) for t in ops.top_k(sims, 200)]

    block()  # warm-up (tracing, thread pools)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        block()
        times.append(time.perf_counter() - start)
    return {"block": args.block, "_s": min(times)}  # the least disturbed


def _child(flags, backend="numpy"):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, os.path.abspath(__file__), *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode:
        sys.exit(f"{' '.join(flags)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    """Runs every variant in its own process and prints one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, help="run one variant here (a child)")
    parser.add_argument("--block", choices=("numpy", *BACKENDS), help="time one block here")
    parser.add_argument("--blocks", action="store_true", help="also time keras.ops blocks")
    parser.add_argument("--memory", type=int, default=100_000, help="memory rows N")
    parser.add_argument("--queries", type=int, default=10_000, help="queries M")
    parser.add_argument("--dim", type=int, default=2048, help="feature width C")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--chunk_rows", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over the variants")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(_run_variant(args)))
        return
    if args.block:
        print(json.dumps(_run_block(args)))
        return
    shape = [
        f"--memory={args.memory}",
        f"--queries={args.queries}",
        f"--dim={args.dim}",
        f"--classes={args.classes}",
        f"--chunk_rows={args.chunk_rows}",
    ]
    # Rounds in alternating order; per variant the fastest round (the least disturbed by
    # whatever else runs here) and the largest peak.
    runs = {variant: [] for variant in VARIANTS}
    for round_ in range(args.repeats):
        for variant in VARIANTS[:: 1 if round_ % 2 == 0 else -1]:
            runs[variant].append(_child([f"--variant={variant}", *shape]))
    rows = []
    for results in runs.values():
        row = max(results, key=lambda r: r["peak_mb"])
        row.update({key: min(r[key] for r in results) for key in ("_total_s", "_knn_s")})
        rows.append(row)
    dense_total, dense_knn = rows[0]["_total_s"], rows[0]["_knn_s"]
    for row in rows:
        row["total_time_vs_dense"] = round(row.pop("_total_s") / dense_total, 2)
        row["knn_time_vs_dense"] = round(row.pop("_knn_s") / dense_knn, 2)
        row.update(memory=args.memory, queries=args.queries, dim=args.dim, k=200)
        row["repeats"] = args.repeats
    for row in rows:
        print(json.dumps({"what": "knn_memory", **row}), flush=True)
    if args.blocks:
        times = {"numpy": _child(["--block=numpy", f"--dim={args.dim}"])["_s"]}
        for backend in BACKENDS:
            times[backend] = _child([f"--block={backend}", f"--dim={args.dim}"], backend)["_s"]
        for name, seconds in times.items():
            ratio = round(seconds / times["numpy"], 2)
            print(json.dumps({"what": "knn_block", "impl": name, "time_vs_numpy": ratio}))


if __name__ == "__main__":
    main()
