"""Writes type_constraints.txt: the type constraints of every operator in Kiln's shape-inference
table, at every version whose signature differs from the previous one.

Source: the operator schemas that ONNX Runtime 1.31.1 validates models against
(`onnxruntime.capi._pybind_state.get_all_operator_schema()`: the ONNX specification's schemas as
built into ONNX Runtime, plus the `com.microsoft` contrib operators). Run with the bench venv:
    $KILN_CACHE_DIR/bench-venv/bin/python compiler/src/ops/gen_type_constraints.py
"""

import collections
import pathlib
import re

import onnxruntime.capi._pybind_state as C

HERE = pathlib.Path(__file__).parent
SHAPE_OPS = HERE.parent / "shape" / "ops"
DOMAINS = {"MS": "com.microsoft", "ML": "ai.onnx.ml", "TRAINING": "ai.onnx.preview.training"}
SHORT = {
    "float": "f32", "uint8": "u8", "int8": "i8", "uint16": "u16", "int16": "i16", "int32": "i32",
    "int64": "i64", "string": "string", "bool": "bool", "float16": "f16", "double": "f64",
    "uint32": "u32", "uint64": "u64", "complex64": "c64", "complex128": "c128", "bfloat16": "bf16",
    "float8e4m3fn": "f8e4m3fn", "float8e4m3fnuz": "f8e4m3fnuz", "float8e5m2": "f8e5m2",
    "float8e5m2fnuz": "f8e5m2fnuz", "uint4": "u4", "int4": "i4", "float4e2m1": "f4e2m1",
    "float8e8m0": "f8e8m0", "uint2": "u2", "int2": "i2",
}


def registered_ops():
    """(domain, op) pairs the shape table registers."""
    out = set()
    for f in sorted(SHAPE_OPS.glob("*.rs")):
        text = f.read_text()
        for m in re.finditer(r"r\.(onnx|add)\(\s*(?:(\w+),\s*)?&\[(.*?)\]", text, re.S):
            domain = "" if m.group(1) == "onnx" else DOMAINS[m.group(2)]
            for op in re.findall(r'"(\w+)"', m.group(3)):
                out.add((domain, op))
    return out


def short(t):
    """tensor(float) -> f32, seq(tensor(float)) -> seq<f32>, optional(...) -> opt<...>."""
    m = re.fullmatch(r"(\w+)\((.*)\)", t)
    if not m:
        raise ValueError(t)
    kind, inner = m.groups()
    if kind == "tensor":
        return SHORT[inner]
    if kind == "seq":
        return "seq<" + short(inner) + ">"
    if kind == "optional":
        return "opt<" + short(inner) + ">"
    if kind == "sparse_tensor":
        return "sparse<" + SHORT[inner] + ">"
    if kind == "map":
        k, v = inner.split(",", 1)
        return "map<" + SHORT[k.strip()] + "," + short(v.strip()) + ">"
    raise ValueError(t)


def type_set(types):
    return ",".join(sorted({short(t) for t in types}, key=lambda s: (s.count("<"), s)))


def slot(p, constraints):
    suffix = {0: "", 1: "?", 2: "*"}[int(p.option.value)]
    if suffix == "*" and not p.isHomogeneous:
        suffix = "*~"
    ty = p.typeStr if p.typeStr in constraints else "{" + type_set([p.typeStr]) + "}"
    return f"{p.name}:{ty}{suffix}"


def signature(s):
    constraints = {t.type_param_str: t.allowed_type_strs for t in s.type_constraints}
    ins = " ".join(slot(p, constraints) for p in s.inputs)
    outs = " ".join(slot(p, constraints) for p in s.outputs)
    cons = " ".join(f"{k}={{{type_set(v)}}}" for k, v in constraints.items())
    return f"{ins} -> {outs} | {cons}".strip()


def main():
    wanted = registered_ops()
    schemas = collections.defaultdict(list)
    for s in C.get_all_operator_schema():
        if (s.domain, s.name) in wanted:
            schemas[(s.domain, s.name)].append(s)
    lines = [
        "# Type constraints per operator version, from the schemas ONNX Runtime 1.31.1 validates",
        "# against (written by gen_type_constraints.py). A line: `OP VERSIONS | INPUTS -> OUTPUTS | PARAMS`,",
        "# VERSIONS the since-versions sharing this signature.",
        "# A slot is `name:TYPE` where TYPE is a type parameter or a literal set `{...}`; `?` optional,",
        "# `*` variadic (homogeneous), `*~` variadic heterogeneous. `[domain]` starts a domain.",
    ]
    missing = sorted(w for w in wanted if w not in schemas)
    for domain in sorted({d for d, _ in schemas}):
        lines.append(f"[{domain}]")
        for (d, op) in sorted(k for k in schemas if k[0] == domain):
            groups = []  # [versions, signature]: consecutive versions with one signature share a line
            for s in sorted(schemas[(d, op)], key=lambda s: s.since_version):
                sig = signature(s)
                if groups and groups[-1][1] == sig:
                    groups[-1][0].append(s.since_version)
                else:
                    groups.append([[s.since_version], sig])
            for versions, sig in groups:
                lines.append(f"{op} {','.join(map(str, versions))} | {sig}")
    (HERE / "type_constraints.txt").write_text("\n".join(lines) + "\n")
    print(f"{len(schemas)} ops written; without a schema: {missing}")


main()
