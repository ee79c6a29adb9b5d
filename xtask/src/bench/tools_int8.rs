//! The `int8` group: Kiln's static and dynamic INT8 against ONNX Runtime's quantization tool.
//!
//! Kiln's rows include its validation run (the artifact is checked against the original on a
//! held-apart share of `{data}`): that is part of what a user runs, so it counts in the tool
//! time, and ORT's rows include its `quant_pre_process`, which its documentation recommends.
//! Both get the same 32 samples in `{data}`; Kiln, at its default, calibrates on the first
//! 80% of them and validates on the rest, while ORT calibrates on all 32.
//!
//! Besides MinMax, both tools calibrate with Percentile and Entropy: ONNX Runtime's
//! calibrators for those keep every activation of every sample in memory before binning (the
//! memory the issue is about), Kiln's histograms stream. A peer that runs out of memory is
//! recorded as a failed row with its error line, and the bench goes on.

use super::tools::{Invocation, Program, Tolerance, Tool, out_model};

/// INT8 outputs differ from the original's by far more than rounding; a row is flagged only
/// when an output loses its direction (a wrong scale or a broken graph), and the accuracy
/// columns compare the rest.
const INT8_TOLERANCE: Tolerance = Tolerance::CosineMin(0.9);

/// ORT's quantization driver, relative to the repository root.
const ORT_QUANTIZE_PY: &str = "xtask/bench/ort_quantize.py";

pub(super) const INT8_TOOLS: &[Tool] = &[
    Tool {
        id: "kiln-int8",
        group: "int8",
        peer: false,
        program: Program::Kiln,
        args: kiln_static,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "kiln-int8-novalidate",
        group: "int8",
        peer: false,
        program: Program::Kiln,
        args: kiln_static_no_validation,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "kiln-int8-percentile",
        group: "int8",
        peer: false,
        program: Program::Kiln,
        args: kiln_percentile,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "kiln-int8-entropy",
        group: "int8",
        peer: false,
        program: Program::Kiln,
        args: kiln_entropy,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "kiln-int8-dynamic",
        group: "int8",
        peer: false,
        program: Program::Kiln,
        args: kiln_dynamic,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "kiln-int8-dynamic-novalidate",
        group: "int8",
        peer: false,
        program: Program::Kiln,
        args: kiln_dynamic_no_validation,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "ort-quantize-static",
        group: "int8",
        peer: true,
        program: Program::Script(ORT_QUANTIZE_PY),
        args: ort_static,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "ort-quantize-static-nopre",
        group: "int8",
        peer: true,
        program: Program::Script(ORT_QUANTIZE_PY),
        args: ort_static_no_preprocess,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "ort-quantize-static-percentile",
        group: "int8",
        peer: true,
        program: Program::Script(ORT_QUANTIZE_PY),
        args: ort_static_percentile,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "ort-quantize-static-entropy",
        group: "int8",
        peer: true,
        program: Program::Script(ORT_QUANTIZE_PY),
        args: ort_static_entropy,
        tolerance: INT8_TOLERANCE,
    },
    Tool {
        id: "ort-quantize-dynamic",
        group: "int8",
        peer: true,
        program: Program::Script(ORT_QUANTIZE_PY),
        args: ort_dynamic,
        tolerance: INT8_TOLERANCE,
    },
];

/// Static QDQ (U8 activations, S8 per-channel weights), MinMax calibration on `{data}`.
fn kiln_static(inv: &Invocation) -> Vec<String> {
    let mut args = vec![inv.model.to_string(), "--precision".into(), "int8".into()];
    args.extend(["--data".into(), inv.data.to_string(), "--calibration".into(), "minmax".into()]);
    args.extend(["--opt", "O3", "--target", "cpu", "-o"].map(String::from));
    args.push(inv.out.to_string());
    args
}

/// The static row with another calibration method in place of MinMax. Clipping methods trade
/// the extremes for resolution and may miss Kiln's default INT8 tolerance on these fixtures
/// (Entropy does on both); the artifact is then written but the run exits non-zero, and the
/// bench would lose the row's time and memory. So these rows are held to the bench's own
/// flagging floor ([`INT8_TOLERANCE`]) and compared by their accuracy columns like the rest.
fn kiln_static_with(inv: &Invocation, method: &str) -> Vec<String> {
    let mut args = kiln_static(inv);
    if let Some(i) = args.iter().position(|a| a == "minmax") {
        args[i] = method.to_string();
    }
    args.insert(args.len() - 2, "--tolerance".into());
    args.insert(args.len() - 2, "*:cosine_min>=0.9".into());
    args
}

/// Percentile calibration (99.99th, Kiln's default): the histogram-based methods are where
/// ONNX Runtime's calibrators hold every activation in memory; Kiln's histograms stream.
fn kiln_percentile(inv: &Invocation) -> Vec<String> {
    kiln_static_with(inv, "percentile:99.99")
}

/// Entropy (KL) calibration, as TensorRT does it.
fn kiln_entropy(inv: &Invocation) -> Vec<String> {
    kiln_static_with(inv, "entropy")
}

/// The static row without the validation run: the quantizer's own time and memory (the
/// default row is what a user runs).
fn kiln_static_no_validation(inv: &Invocation) -> Vec<String> {
    let mut args = kiln_static(inv);
    args.insert(args.len() - 2, "--skip-validation".into());
    args
}

/// Dynamic (`com.microsoft.DynamicQuantizeMatMul`): no calibration, but `{data}` still
/// feeds Kiln's validation, as it would for a user.
fn kiln_dynamic(inv: &Invocation) -> Vec<String> {
    let mut args = vec![inv.model.to_string(), "--precision".into(), "int8".into(), "--dynamic".into()];
    args.extend(["--data".into(), inv.data.to_string()]);
    args.extend(["--opt", "O3", "--target", "cpu", "-o"].map(String::from));
    args.push(inv.out.to_string());
    args
}

/// The dynamic row without the validation run: like for like with `quantize_dynamic`, which
/// neither calibrates nor validates.
fn kiln_dynamic_no_validation(inv: &Invocation) -> Vec<String> {
    let mut args = kiln_dynamic(inv);
    args.insert(args.len() - 2, "--skip-validation".into());
    args
}

/// `quantize_static`: QDQ, per-channel, activations QUInt8, weights QInt8, MinMax, after
/// `quant_pre_process`, calibrated on the same `{data}` samples.
fn ort_static(inv: &Invocation) -> Vec<String> {
    vec!["static".into(), inv.model.to_string(), out_model(inv), inv.data.to_string()]
}

/// `quantize_static` as above on the model as given: the pre-processing breaks ORT's static
/// quantization of opset-11 CNNs (ort_quantize.py says how), so a user would try without.
fn ort_static_no_preprocess(inv: &Invocation) -> Vec<String> {
    vec!["static-no-preprocess".into(), inv.model.to_string(), out_model(inv), inv.data.to_string()]
}

/// `quantize_static` as [`ort_static`] with ORT's Percentile calibrator (its default 99.999).
fn ort_static_percentile(inv: &Invocation) -> Vec<String> {
    let mut args = ort_static(inv);
    args.push("percentile".into());
    args
}

/// `quantize_static` as [`ort_static`] with ORT's Entropy calibrator.
fn ort_static_entropy(inv: &Invocation) -> Vec<String> {
    let mut args = ort_static(inv);
    args.push("entropy".into());
    args
}

/// `quantize_dynamic`: per-channel, weights QInt8, after `quant_pre_process`.
fn ort_dynamic(inv: &Invocation) -> Vec<String> {
    vec!["dynamic".into(), inv.model.to_string(), out_model(inv)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_get_the_calibration_data() {
        let inv = Invocation { fixture: "cnn", model: "/m.onnx", out: "/o", data: "/d", kiln_args: &[] };
        let s = kiln_static(&inv);
        assert_eq!(s[..3], ["/m.onnx", "--precision", "int8"]);
        assert!(s.windows(2).any(|w| w == ["--data", "/d"]) && s.windows(2).any(|w| w == ["--calibration", "minmax"]));
        assert_eq!(s[s.len() - 2..], ["-o", "/o"]);
        let d = kiln_dynamic(&inv);
        assert!(d.contains(&"--dynamic".to_string()) && !s.contains(&"--dynamic".to_string()));
        let n = kiln_static_no_validation(&inv);
        assert!(n.contains(&"--skip-validation".to_string()) && !s.contains(&"--skip-validation".to_string()));
        assert_eq!(n[n.len() - 2..], ["-o", "/o"]);
        let dn = kiln_dynamic_no_validation(&inv);
        assert!(dn.contains(&"--dynamic".to_string()) && dn.contains(&"--skip-validation".to_string()));
        assert!(!d.contains(&"--skip-validation".to_string()));
        assert_eq!(dn[dn.len() - 2..], ["-o", "/o"]);
        assert_eq!(ort_static(&inv), ["static", "/m.onnx", "/o/model.onnx", "/d"]);
        assert_eq!(ort_static_no_preprocess(&inv)[..2], ["static-no-preprocess", "/m.onnx"]);
        assert_eq!(ort_dynamic(&inv), ["dynamic", "/m.onnx", "/o/model.onnx"]);
        let p = kiln_percentile(&inv);
        assert!(p.windows(2).any(|w| w == ["--calibration", "percentile:99.99"]) && !p.contains(&"minmax".into()));
        assert!(p.windows(2).any(|w| w == ["--tolerance", "*:cosine_min>=0.9"]));
        assert_eq!(p[p.len() - 2..], ["-o", "/o"]);
        assert!(kiln_entropy(&inv).windows(2).any(|w| w == ["--calibration", "entropy"]));
        assert_eq!(ort_static_percentile(&inv)[4..], ["percentile"]);
        assert_eq!(ort_static_entropy(&inv)[..4], ort_static(&inv)[..]);
        assert_eq!(ort_static_entropy(&inv)[4], "entropy");
    }
}
