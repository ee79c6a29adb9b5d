"""Latency and output check of ONNX models in ONNX Runtime's CPU provider, for `cargo xtask bench`.

    python measure.py run JOB.json RESULT.json
    python measure.py samples JOB.json DIR
    python measure.py versions PACKAGE...

`run` loads every model of one fixture in this one process with the same session options,
feeds them the fixture's recipe inputs, compares each model's outputs with the first model's
(the original) and times them interleaved, so drift on a busy machine hits all models alike.
On the evaluation samples (`eval_seeds`, recipe inputs of those seeds) it measures each
model's accuracy against the original per output: cosine, argmax agreement, |diff|.
`versions` prints the Python and package versions as JSON.

The job (written by xtask/src/bench/measure.rs):
    {"inputs": [{"name", "dtype", "shape", "values": {"kind", ...}}], "seed": 1, "eval_seeds": [...],
     "models": [{"id", "path"}], "threads": [1, 2], "warmup": 10, "min_runs": 50,
     "min_seconds": 2.0, "max_seconds": 30.0, "batch": 5}
"""

import importlib.metadata
import json
import math
import platform
import sys
import time

import numpy as np
import onnxruntime as ort

MASK64 = (1 << 64) - 1

# Kiln's dtype names (see compiler/src/dtype.rs) for the element types a recipe may use.
NUMPY_DTYPES = {
    "f16": np.float16,
    "f32": np.float32,
    "f64": np.float64,
    "i8": np.int8,
    "i16": np.int16,
    "i32": np.int32,
    "i64": np.int64,
    "u8": np.uint8,
    "u16": np.uint16,
    "u32": np.uint32,
    "u64": np.uint64,
    "bool": np.bool_,
}

# ONNX Runtime's type strings for model inputs, to cast a recipe input a tool retyped.
ORT_TYPES = {
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


class SplitMix64:
    """The generator of fixtures/src/generate.rs, step for step, so the bench feeds the very
    inputs Kiln's own fixture tests use for the same seed."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def next_f64(self):
        return (self.next_u64() >> 11) / float(1 << 53)

    def next_normal(self):
        u1 = max(self.next_f64(), sys.float_info.min)
        u2 = self.next_f64()
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def recipe_inputs(specs, seed):
    """Name -> array for every recipe input, drawing from one generator in graph order."""
    rng = SplitMix64(seed)
    out = {}
    for spec in specs:
        n = math.prod(spec["shape"])
        recipe = spec["values"]
        kind = recipe["kind"]
        if kind == "uniform":
            low, high = recipe["low"], recipe["high"]
            values = [low + (high - low) * rng.next_f64() for _ in range(n)]
        elif kind == "normal":
            mean, std = recipe["mean"], recipe["std"]
            values = [mean + std * rng.next_normal() for _ in range(n)]
        elif kind == "integers":
            low, span = recipe["low"], max(recipe["high"] - recipe["low"], 1)
            values = [float(low + rng.next_u64() % span) for _ in range(n)]
        elif kind == "fill":
            values = [recipe["value"]] * n
        else:
            raise ValueError(f"input {spec['name']}: unknown recipe kind {kind!r}")
        dtype = NUMPY_DTYPES.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"input {spec['name']}: no numpy type for {spec['dtype']!r}")
        out[spec["name"]] = np.array(values, dtype=np.float64).astype(dtype).reshape(spec["shape"])
    return out


def session(path, threads):
    """A session the way a CPU deployment would make one: every graph optimization on,
    sequential execution, a fixed intra-op thread count."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def feeds_for(sess, inputs):
    """The recipe inputs this model takes, by name, cast to the type it declares. A tool may
    drop an unused input; an input with no recipe is an error."""
    feeds = {}
    for arg in sess.get_inputs():
        if arg.name not in inputs:
            raise ValueError(f"model input {arg.name!r} has no recipe (the original has {sorted(inputs)})")
        value = inputs[arg.name]
        want = ORT_TYPES.get(arg.type)
        feeds[arg.name] = value.astype(want) if want is not None and value.dtype != want else value
    return feeds


def max_abs_diff(reference, names, outputs, ref_names):
    """Largest |candidate - reference| over all outputs, or (None, reason) when they do not
    line up. Outputs match by name, else by position."""
    worst = 0.0
    by_name = dict(zip(names, outputs))
    if len(outputs) != len(reference):
        return None, f"{len(outputs)} outputs, the original has {len(reference)}"
    for i, (name, ref) in enumerate(zip(ref_names, reference)):
        got = by_name.get(name, outputs[i])
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.shape != got.shape:
            return None, f"output {name!r} has shape {list(got.shape)}, the original {list(ref.shape)}"
        if ref.dtype.kind not in "biuf" or got.dtype.kind not in "biuf":
            if not np.array_equal(ref, got):
                return None, f"output {name!r} differs"
            continue
        if ref.size == 0:
            continue
        a, b = ref.astype(np.float64), got.astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        if np.isnan(diff).any() or np.isinf(diff).any():
            return None, f"output {name!r} has NaN or infinity where the original does not"
        worst = max(worst, float(diff.max()))
    return worst, None


def accuracy(ref_runs, cand_runs, names, ref_names):
    """Per output: cosine mean/min over samples, argmax agreement over the last axis, and
    max/mean |diff|, of the candidate against the original on the same evaluation samples.
    Outputs match by name, else by position; non-numeric outputs are left out."""
    out = {}
    for i, name in enumerate(ref_names):
        cos, agree, total, worst, abs_sum, count = [], 0, 0, 0.0, 0.0, 0
        for ref_outs, cand_outs in zip(ref_runs, cand_runs):
            by_name = dict(zip(names, cand_outs))
            ref = np.asarray(ref_outs[i])
            got = np.asarray(by_name.get(name, cand_outs[i] if i < len(cand_outs) else ref))
            if ref.dtype.kind != "f" or ref.shape != got.shape or ref.size == 0:
                break
            a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
            norm = np.linalg.norm(a) * np.linalg.norm(b)
            cos.append(float(a @ b / norm) if norm > 0 else float(np.array_equal(a, b)))
            d = np.abs(a - b)
            worst, abs_sum, count = max(worst, float(d.max())), abs_sum + float(d.sum()), count + d.size
            if ref.ndim >= 1 and ref.shape[-1] > 1:
                ra = ref.reshape(-1, ref.shape[-1]).argmax(axis=1)
                ga = got.astype(np.float64).reshape(-1, ref.shape[-1]).argmax(axis=1)
                agree, total = agree + int((ra == ga).sum()), total + ra.size
        else:
            if cos:
                out[name] = {
                    "samples": len(cos),
                    "cosine_mean": float(np.mean(cos)),
                    "cosine_min": float(np.min(cos)),
                    "top1": agree / total if total else None,
                    "max_abs": worst,
                    "mean_abs": abs_sum / count if count else None,
                }
    return out


def stats(samples):
    ms = np.array(samples) * 1e3
    return {
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "min_ms": float(ms.min()),
        "mean_ms": float(ms.mean()),
        "runs": len(samples),
    }


def short(err, path):
    """The first line of an error, without the model's long path."""
    text = str(err).replace(path, "<model>").strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def run(job):
    inputs = recipe_inputs(job["inputs"], job["seed"])
    paths = {m["id"]: m["path"] for m in job["models"]}
    results = {
        m["id"]: {"error": None, "max_abs_diff": None, "mismatch": None, "accuracy": {}, "latency": {}}
        for m in job["models"]
    }
    reference = None
    eval_inputs = [recipe_inputs(job["inputs"], seed) for seed in job.get("eval_seeds", [])]
    eval_reference = None
    for m in job["models"]:
        # Accuracy on the evaluation samples, against the original (the first model).
        try:
            sess = session(m["path"], job["threads"][0])
            runs = [sess.run(None, feeds_for(sess, x)) for x in eval_inputs]
            names = [o.name for o in sess.get_outputs()]
        except Exception as e:
            results[m["id"]]["error"] = short(e, m["path"])
            continue
        if eval_reference is None:
            eval_reference = (runs, names)
        results[m["id"]]["accuracy"] = accuracy(eval_reference[0], runs, names, eval_reference[1])
        del sess
    for threads in job["threads"]:
        sessions, feeds = {}, {}
        for m in job["models"]:
            r = results[m["id"]]
            if r["error"]:
                continue
            try:
                sess = session(m["path"], threads)
                feed = feeds_for(sess, inputs)
                outs = sess.run(None, feed)
            except Exception as e:  # a broken model is a result, not a reason to stop
                r["error"] = short(e, m["path"])
                if m is job["models"][0]:
                    break
                continue
            names = [o.name for o in sess.get_outputs()]
            if reference is None:
                reference = (outs, names)
            if threads == job["threads"][0]:
                r["max_abs_diff"], r["mismatch"] = max_abs_diff(reference[0], names, outs, reference[1])
            sessions[m["id"]], feeds[m["id"]] = sess, feed
        if reference is None or results[job["models"][0]["id"]]["error"]:
            break  # the original itself does not run: nothing to compare against
        for key, sess in list(sessions.items()):
            try:
                for _ in range(job["warmup"]):
                    sess.run(None, feeds[key])
            except Exception as e:
                results[key]["error"] = short(e, paths[key])
                del sessions[key]
        samples = {k: [] for k in sessions}
        spent = {k: 0.0 for k in sessions}

        def pending(k):
            enough = len(samples[k]) >= job["min_runs"] and spent[k] >= job["min_seconds"]
            return not enough and spent[k] < job["max_seconds"]

        # Round robin in blocks, so every model sees the same background load. The first run
        # of a block is not timed: the previous model's intra-op threads may still be spinning
        # and would steal a core from it.
        while True:
            todo = [k for k in sessions if pending(k)]
            if not todo:
                break
            for key in todo:
                sess, feed = sessions[key], feeds[key]
                sess.run(None, feed)
                for _ in range(job["batch"]):
                    start = time.perf_counter()
                    sess.run(None, feed)
                    took = time.perf_counter() - start
                    samples[key].append(took)
                    spent[key] += took
        for key in sessions:
            results[key]["latency"][str(threads)] = stats(samples[key])
        del sessions
    return {"models": results}


def versions(packages):
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return {"python": platform.python_version(), "packages": found}


def main(argv):
    if len(argv) == 3 and argv[0] == "run":
        with open(argv[1], encoding="utf-8") as f:
            job = json.load(f)
        result = run(job)
        with open(argv[2], "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        return 0
    if len(argv) == 3 and argv[0] == "samples":
        # Calibration data for the tools: one .npz per seed, keys = input names.
        with open(argv[1], encoding="utf-8") as f:
            job = json.load(f)
        for seed in job["seeds"]:
            np.savez(f"{argv[2]}/sample_{seed:05d}.npz", **recipe_inputs(job["inputs"], seed))
        return 0
    if argv and argv[0] == "versions":
        json.dump(versions(argv[1:]), sys.stdout)
        print()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
