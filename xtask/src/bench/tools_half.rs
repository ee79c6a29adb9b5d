//! The `fp16` group: Kiln's FP16 against two float16 converters, onnxconverter-common's and
//! ONNX Runtime's (`OnnxModel.convert_float_to_float16`), both keeping float32 inputs and
//! outputs. A converted model that ONNX Runtime cannot load is a result (`ORT failed`).

use super::tools::{Invocation, Program, Tolerance, Tool, out_model};

/// FP16 keeps about 3 significant digits: an output whose cosine drops below this on any
/// evaluation sample has lost more than rounding (an overflow, a bad cast).
const FP16_TOLERANCE: Tolerance = Tolerance::CosineMin(0.999);

/// The converters' driver, relative to the repository root.
const FP16_PEERS_PY: &str = "xtask/bench/fp16_peers.py";

pub(super) const FP16_TOOLS: &[Tool] = &[
    Tool {
        id: "kiln-fp16",
        group: "fp16",
        peer: false,
        program: Program::Kiln,
        args: kiln_fp16,
        tolerance: FP16_TOLERANCE,
    },
    Tool {
        id: "onnxconverter-common",
        group: "fp16",
        peer: true,
        program: Program::Script(FP16_PEERS_PY),
        args: onnxconverter_common,
        tolerance: FP16_TOLERANCE,
    },
    Tool {
        id: "ort-fp16",
        group: "fp16",
        peer: true,
        program: Program::Script(FP16_PEERS_PY),
        args: ort_fp16,
        tolerance: FP16_TOLERANCE,
    },
];

/// `--precision fp16` at the fp32 row's level and target; `{data}` feeds Kiln's validation.
fn kiln_fp16(inv: &Invocation) -> Vec<String> {
    let mut args = vec![inv.model.to_string(), "--precision".into(), "fp16".into()];
    args.extend(["--data".into(), inv.data.to_string()]);
    args.extend(["--opt", "O3", "--target", "cpu", "-o"].map(String::from));
    args.push(inv.out.to_string());
    args
}

fn onnxconverter_common(inv: &Invocation) -> Vec<String> {
    vec!["onnxconverter-common".into(), inv.model.to_string(), out_model(inv)]
}

fn ort_fp16(inv: &Invocation) -> Vec<String> {
    vec!["ort".into(), inv.model.to_string(), out_model(inv)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_rows_name_their_converter() {
        let inv = Invocation { fixture: "cnn", model: "/m.onnx", out: "/o", data: "/d", kiln_args: &[] };
        let k = kiln_fp16(&inv);
        assert_eq!(k[..3], ["/m.onnx", "--precision", "fp16"]);
        assert_eq!(k[k.len() - 2..], ["-o", "/o"]);
        assert_eq!(onnxconverter_common(&inv), ["onnxconverter-common", "/m.onnx", "/o/model.onnx"]);
        assert_eq!(ort_fp16(&inv), ["ort", "/m.onnx", "/o/model.onnx"]);
    }
}
