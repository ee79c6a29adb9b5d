"""Where ONNX Runtime's CUDA provider places each node of the conformance cases, in FP32 as
shipped and in Kiln's FP16 form, for `cargo xtask gpu run` (after `prepare --conformance`).

    python probe_placement.py DIR OUT.jsonl

DIR holds one folder per case with `fp32.onnx`, `fp16.onnx` and `test_data_set_0/input_*.pb`.
Each form gets a session on the CUDA provider with profiling on and one run on the recorded
inputs; the profile names the provider of every node. OUT.jsonl gets one line per case:
`{"case", "fp32": {"nodes": {name: [op, provider]}, "run_error"}, "fp16": ...}` (or an error
string where the session could not be made, or `"crash": true` where the process died). The
summary printed at the end lists the ops that run on the GPU in FP32 but leave it in FP16,
and the FP16 forms that fail where FP32 runs: the gaps Kiln's CUDA kernel table must know.
Cases run in 12 worker processes; a case that crashes its worker is recorded and skipped.
"""

import collections
import glob
import json
import os
import subprocess
import sys
import threading

import numpy as np

GPU = "CUDAExecutionProvider"


def placements(path, feeds_dir, profile_dir):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    o = ort.SessionOptions()
    o.enable_profiling = True
    o.log_severity_level = 4
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    o.profile_file_prefix = os.path.join(profile_dir, os.path.basename(os.path.dirname(path)) + os.path.basename(path))
    s = ort.InferenceSession(path, o, providers=[GPU])
    feeds = {}
    files = sorted(glob.glob(os.path.join(feeds_dir, "input_*.pb")), key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    for i, f in zip(s.get_inputs(), files):
        t = onnx.TensorProto()
        with open(f, "rb") as fh:
            t.ParseFromString(fh.read())
        a = numpy_helper.to_array(t)
        if i.type == "tensor(float16)" and a.dtype == np.float32:
            a = a.astype(np.float16)
        feeds[i.name] = a
    err = None
    try:
        s.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - recorded per case
        err = str(e).splitlines()[0][:300] if str(e) else "run error"
    with open(s.end_profiling()) as fh:
        events = json.load(fh)
    nodes = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            a = e["args"]
            nodes[e["name"][: -len("_kernel_time")]] = (a.get("op_name"), a.get("provider"))
    return {"nodes": nodes, "run_error": err}


def case(root, name, profile_dir):
    d = os.path.join(root, name)
    r = {"case": name}
    for form in ("fp32", "fp16"):
        try:
            r[form] = placements(os.path.join(d, form + ".onnx"), os.path.join(d, "test_data_set_0"), profile_dir)
        except Exception as e:  # noqa: BLE001 - a session that cannot be made is a result
            r[form] = "error: " + (str(e).splitlines()[0][:300] if str(e) else "error")
    return r


def worker(root, out, names, profile_dir):
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    with open(out, "a") as f:
        for n in names:
            f.write(json.dumps(case(root, n, profile_dir)) + "\n")
            f.flush()


def shard(root, names, out, profile_dir):
    while names:
        subprocess.run(
            [sys.executable, __file__, "--worker", root, out, profile_dir] + names,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        done = set()
        if os.path.exists(out):
            with open(out) as f:
                done = {json.loads(line)["case"] for line in f}
        rest = [n for n in names if n not in done]
        if rest:
            with open(out, "a") as f:
                f.write(json.dumps({"case": rest[0], "crash": True}) + "\n")
            rest = rest[1:]
        names = rest


def summary(rows):
    moved = collections.defaultdict(set)
    failed = []
    for r in rows:
        a, b = r.get("fp32"), r.get("fp16")
        if not isinstance(a, dict) or a["run_error"]:
            continue
        if not isinstance(b, dict) or b["run_error"]:
            failed.append((r["case"], b if isinstance(b, str) else b["run_error"]))
            continue
        on_gpu = {op for op, p in a["nodes"].values() if p == GPU}
        left = {op for op, p in b["nodes"].values() if p != GPU}
        for op in on_gpu & left - {"Cast", "MemcpyToHost", "MemcpyFromHost"}:
            moved[op].add(r["case"])
    print(f"{len(rows)} cases, {sum(1 for r in rows if r.get('crash'))} crashed a worker")
    print(f"FP16 forms that fail where FP32 runs on the GPU: {len(failed)}")
    for c, why in failed:
        print(f"  {c}: {why}")
    print("ops on the GPU in FP32 that leave it in FP16:")
    for op in sorted(moved):
        print(f"  {op}: {len(moved[op])} cases, e.g. {sorted(moved[op])[:3]}")


def main(argv):
    if argv[:1] == ["--worker"]:
        worker(argv[1], argv[2], argv[4:], argv[3])
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    root, out = argv
    profile_dir = os.path.join(os.path.dirname(os.path.abspath(out)), "probe-profiles")
    os.makedirs(profile_dir, exist_ok=True)
    names = sorted(n for n in os.listdir(root) if os.path.isdir(os.path.join(root, n)))
    k = 12
    shards = [os.path.join(profile_dir, f"shard{i}.jsonl") for i in range(k)]
    for s in shards:
        if os.path.exists(s):
            os.remove(s)
    threads = [threading.Thread(target=shard, args=(root, names[i::k], shards[i], profile_dir)) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = []
    for s in shards:
        if os.path.exists(s):
            with open(s) as f:
                rows.extend(json.loads(line) for line in f)
    rows.sort(key=lambda r: r["case"])
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    summary(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
