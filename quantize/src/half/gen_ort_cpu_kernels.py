"""Writes ort_cpu_kernels.txt: the CPU kernels ONNX Runtime 1.31.1 registers that accept FP16 or
BF16 on some type parameter (`onnxruntime.capi._pybind_state.get_all_opkernel_def()`). An op
absent from the file has no FP16/BF16 CPU kernel at all. Run with the bench venv:
    $KILN_CACHE_DIR/bench-venv/bin/python quantize/src/half/gen_ort_cpu_kernels.py
"""

import pathlib
import re

import onnxruntime.capi._pybind_state as C

HERE = pathlib.Path(__file__).parent
SHORT = {
    "float": "f32", "uint8": "u8", "int8": "i8", "uint16": "u16", "int16": "i16", "int32": "i32",
    "int64": "i64", "string": "string", "bool": "bool", "float16": "f16", "double": "f64",
    "uint32": "u32", "uint64": "u64", "complex64": "c64", "complex128": "c128", "bfloat16": "bf16",
    "float8e4m3fn": "f8e4m3fn", "float8e4m3fnuz": "f8e4m3fnuz", "float8e5m2": "f8e5m2",
    "float8e5m2fnuz": "f8e5m2fnuz", "uint4": "u4", "int4": "i4", "float4e2m1": "f4e2m1",
    "float8e8m0": "f8e8m0", "uint2": "u2", "int2": "i2",
}


def tensor_types(types):
    out = set()
    for t in types:
        m = re.fullmatch(r"tensor\((\w+)\)", t)
        if m:
            out.add(SHORT[m.group(1)])
    return ",".join(sorted(out))


lines = [
    "# ONNX Runtime 1.31.1 CPU kernels that accept f16 or bf16 (written by gen_ort_cpu_kernels.py).",
    "# A line: `DOMAIN OP FIRST-LAST | PARAM={types} ...` (tensor types only; `-` is the default domain).",
]
rows = set()
for k in C.get_all_opkernel_def():
    if k.provider != "CPUExecutionProvider":
        continue
    cons = {p: tensor_types(v) for p, v in k.type_constraints.items()}
    if not any("f16" in v.split(",") or "bf16" in v.split(",") for v in cons.values()):
        continue
    lo, hi = k.version_range
    body = " ".join(f"{p}={{{v}}}" for p, v in sorted(cons.items()))
    rows.add((k.domain or "-", k.op_name, lo, hi, body))
for d, op, lo, hi, body in sorted(rows):
    lines.append(f"{d} {op} {lo}-{hi} | {body}")
(HERE / "ort_cpu_kernels.txt").write_text("\n".join(lines) + "\n")
print(len(rows), "kernels")
