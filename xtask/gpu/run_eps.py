"""Runs Kiln's cuda and tensorrt artifacts on a GPU, for `cargo xtask gpu run`.

    python run_eps.py DIR [--runs N] [--cpu-dry-run]

DIR is what `cargo xtask gpu prepare` wrote: `cases.json` and, per fixture, `original.onnx`,
the evaluation samples (`eval/*.npz`, keys = input names) and one folder per artifact. For
every case:

- reference: the original on ONNX Runtime's CPU provider, on every evaluation sample;
- baseline: the original (FP32) on the case's provider (CUDA, or TensorRT without FP16/INT8
  flags, so it builds an FP32 engine);
- artifact: Kiln's model on the case's provider. TensorRT reads the precision from the graph
  (explicit Q/DQ, FP16 casts), so no precision flag is set for it either.

A session must run on the provider asked for: ONNX Runtime silently puts a model it cannot
place on the CPU provider, so the provider list holds the requested one (and, for TensorRT,
CUDA for the nodes TensorRT leaves) and the session's providers are checked. Accuracy is the
cosine and max |diff| of every output against the reference; latency the median and p90 of
`--runs` interleaved runs of baseline and artifact after a warm-up; one profiled run lists the
artifact's nodes that ONNX Runtime left on the CPU provider. Writes DIR/gpu-report.json
and DIR/gpu-report.md; exits 1 when a case failed, 3 when no GPU provider exists here.
`--cpu-dry-run` runs every case on the CPU provider instead: it proves the script and the
prepared folder on a machine without a GPU, and its numbers say nothing about GPUs.
"""

import ctypes
import glob
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

PROVIDERS = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
WARMUP = 20

# ONNX Runtime's type strings for inputs, to cast a sample to the type an artifact declares.
ORT_TYPES = {
    "tensor(float16)": np.float16,
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def load_gpu_libraries():
    """Loads CUDA/cuDNN from the nvidia-* wheels and TensorRT from tensorrt-cu13-libs, when
    they are installed, so the providers find them without LD_LIBRARY_PATH."""
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # noqa: BLE001 - reported, the provider check decides
            print(f"run_eps: preload_dlls: {e}", file=sys.stderr)
    try:
        import tensorrt_libs  # noqa: F401 - the package that holds libnvinfer*.so

        folder = os.path.dirname(tensorrt_libs.__file__)
        for lib in sorted(glob.glob(os.path.join(folder, "libnvinfer*.so*"))):
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    except ImportError:
        pass


DRY_RUN = False


def session(path, provider, cache_dir):
    """A session on `provider` ('cpu', 'cuda', 'tensorrt'); raises when ORT put it elsewhere."""
    if DRY_RUN:
        provider = "cpu"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if provider == "cpu":
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    if provider == "cuda":
        providers = ["CUDAExecutionProvider"]
    else:
        os.makedirs(cache_dir, exist_ok=True)
        trt = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache_dir,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": cache_dir,
        }
        providers = [("TensorrtExecutionProvider", trt), "CUDAExecutionProvider"]
    sess = ort.InferenceSession(path, opts, providers=providers)
    if sess.get_providers()[0] != PROVIDERS[provider]:
        raise RuntimeError(f"ONNX Runtime fell back to {sess.get_providers()} for {path}")
    return sess


def cpu_nodes(path, provider, cache_dir, sample):
    """Op type -> count of the artifact's nodes ONNX Runtime left on the CPU provider (a kernel
    the GPU provider lacks: each runs with a copy on either side), from one profiled run."""
    if DRY_RUN:
        return {}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "profile")
        providers = [PROVIDERS[provider]] if provider == "cuda" else [("TensorrtExecutionProvider", {
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir}), "CUDAExecutionProvider"]
        sess = ort.InferenceSession(path, opts, providers=providers)
        sess.run(None, feeds(sess, sample))
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    out = {}
    for e in events:
        a = e.get("args", {})
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and a.get("provider") == "CPUExecutionProvider":
            out[a.get("op_name")] = out.get(a.get("op_name"), 0) + 1
    return dict(sorted(out.items()))


def feeds(sess, sample):
    out = {}
    for i in sess.get_inputs():
        if i.name not in sample:
            raise RuntimeError(f"evaluation sample lacks input {i.name!r}")
        out[i.name] = sample[i.name].astype(ORT_TYPES.get(i.type, sample[i.name].dtype), copy=False)
    return out


def run_all(sess, samples):
    names = [o.name for o in sess.get_outputs()]
    return names, [sess.run(names, feeds(sess, s)) for s in samples]


def accuracy(ref_names, ref_runs, names, runs):
    """Per output (matched by name): worst cosine, mean cosine and max |diff| over the samples."""
    result = {}
    for k, name in enumerate(names):
        if name not in ref_names:
            continue
        j = ref_names.index(name)
        cos, diff = [], 0.0
        for ref, got in zip(ref_runs, runs):
            a = np.asarray(ref[j], dtype=np.float64).ravel()
            b = np.asarray(got[k], dtype=np.float64).ravel()
            if a.shape != b.shape:
                raise RuntimeError(f"output {name!r}: shape {b.shape} against {a.shape}")
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            cos.append(float(a @ b / (na * nb)) if na > 0 and nb > 0 else float(na == nb))
            diff = max(diff, float(np.max(np.abs(a - b))) if a.size else 0.0)
        result[name] = {"cosine_min": min(cos), "cosine_mean": float(np.mean(cos)), "max_abs": diff}
    return result


def latency(sessions, sample, runs):
    """Median and p90 milliseconds of each session, timed round robin after a warm-up."""
    prepared = [(s, feeds(s, sample)) for s in sessions]
    for s, f in prepared:
        for _ in range(WARMUP):
            s.run(None, f)
    times = [[] for _ in prepared]
    for _ in range(runs):
        for k, (s, f) in enumerate(prepared):
            t = time.perf_counter()
            s.run(None, f)
            times[k].append((time.perf_counter() - t) * 1e3)
    return [{"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90))} for t in times]


def run_case(root, case, runs):
    row = {k: case[k] for k in ("fixture", "config", "provider")}
    if case.get("error"):
        row["status"] = "no artifact: " + case["error"]
        return row
    samples = [dict(np.load(p)) for p in sorted(glob.glob(os.path.join(root, case["eval_dir"], "*.npz")))]
    if not samples:
        row["status"] = "no evaluation samples"
        return row
    original = os.path.join(root, case["original"])
    artifact = os.path.join(root, case["artifact"])
    cache = os.path.join(root, "trt-cache", case["fixture"], case["config"])
    try:
        ref_names, ref_runs = run_all(session(original, "cpu", cache), samples)
        base = session(original, case["provider"], cache + "-fp32")
        art = session(artifact, case["provider"], cache)
        names, runs_out = run_all(art, samples)
        row["accuracy"] = accuracy(ref_names, ref_runs, names, runs_out)
        fp32, lowered = latency([base, art], samples[0], runs)
        row["fp32_latency"], row["latency"] = fp32, lowered
        row["speedup_vs_fp32"] = fp32["median_ms"] / lowered["median_ms"]
        row["session_providers"] = art.get_providers()
        row["cpu_nodes"] = cpu_nodes(artifact, case["provider"], cache, samples[0])
        row["status"] = "ok"
    except Exception as e:  # noqa: BLE001 - one broken case must not hide the others
        row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def markdown(report):
    lines = [
        f"# Kiln artifacts on {report['device']}",
        "",
        f"onnxruntime {report['onnxruntime']}, providers {', '.join(report['available_providers'])}",
        "",
        "| fixture | artifact | status | FP32 ms | artifact ms | speed-up | worst cosine | max abs | nodes on CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["cases"]:
        acc = r.get("accuracy") or {}
        worst = min((a["cosine_min"] for a in acc.values()), default=None)
        diff = max((a["max_abs"] for a in acc.values()), default=None)

        def num(v, fmt):
            return format(v, fmt) if v is not None else "-"

        lines.append(
            f"| {r['fixture']} | {r['config']} | {r['status']} | "
            f"{num(r.get('fp32_latency', {}).get('median_ms'), '.3f')} | "
            f"{num(r.get('latency', {}).get('median_ms'), '.3f')} | "
            f"{num(r.get('speedup_vs_fp32'), '.2f')} | {num(worst, '.5f')} | {num(diff, '.3g')} | "
            f"{', '.join(f'{k} {v}' for k, v in (r.get('cpu_nodes') or {}).items()) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    global DRY_RUN
    root, runs, rest = argv[0], 200, argv[1:]
    while rest:
        if rest[0] == "--runs" and len(rest) > 1:
            runs, rest = int(rest[1]), rest[2:]
        elif rest[0] == "--cpu-dry-run":
            DRY_RUN, rest = True, rest[1:]
        else:
            print(f"run_eps: unknown argument {rest[0]!r}", file=sys.stderr)
            return 2
    with open(os.path.join(root, "cases.json"), encoding="utf-8") as f:
        cases = json.load(f)
    load_gpu_libraries()
    available = ort.get_available_providers()
    missing = [] if DRY_RUN else sorted({PROVIDERS[c["provider"]] for c in cases} - set(available))
    if "CUDAExecutionProvider" not in available and not DRY_RUN:
        print(f"run_eps: no CUDA provider here (available: {available})", file=sys.stderr)
        return 3
    device = "CPU (dry run: no GPU numbers)" if DRY_RUN else ort.get_device()
    try:
        import subprocess

        if not DRY_RUN:
            device = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip() or device
    except OSError:
        pass
    rows = []
    for case in cases:
        if PROVIDERS[case["provider"]] in missing:
            row = {k: case[k] for k in ("fixture", "config", "provider")}
            row["status"] = f"provider {PROVIDERS[case['provider']]} not available"
        else:
            row = run_case(root, case, runs)
        print(f"{row['fixture']:<16} {row['config']:<14} {row['status']}", file=sys.stderr)
        rows.append(row)
    report = {
        "device": device,
        "onnxruntime": ort.__version__,
        "available_providers": available,
        "runs": runs,
        "cases": rows,
    }
    with open(os.path.join(root, "gpu-report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(root, "gpu-report.md"), "w", encoding="utf-8") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
