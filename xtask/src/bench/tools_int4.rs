//! The INT4 weight-only rows: Kiln's round to nearest and GPTQ (on the bench's calibration
//! samples) against ONNX Runtime's `MatMulNBitsQuantizer` (`xtask/bench/ort_int4.py`), all at
//! block size 32 for ORT's CPU provider. Kiln runs at O2, where every projection is still a
//! MatMul (O3 folds Q, K and V into a float `Attention`), so both tools quantize the same 18
//! weights; Kiln keeps the output projection at 8 bits by default. One more Kiln row stores the
//! word and position embedding tables in 4 bits too (`--int4-embeddings`, which ORT's
//! quantizer does only when asked for Gather). Kiln's rows skip the
//! validation `optimize` runs by default, so that their time is the quantizer's, as ORT's is;
//! the bench measures every row's accuracy on its evaluation samples anyway.

use super::tools::{Invocation, Program, Tolerance, Tool};

/// Smallest cosine of any output on any evaluation sample before an int4 row is flagged: 4-bit
/// weights move embeddings of magnitude about 1 by tenths; the cosines compare the tools.
const INT4_TOLERANCE: Tolerance = Tolerance::CosineMin(0.9);

/// Block size every row uses.
const BLOCK: &str = "32";

pub(super) const INT4_TOOLS: &[Tool] = &[
    Tool {
        id: "kiln-int4-rtn",
        group: "int4",
        peer: false,
        program: Program::Kiln,
        args: kiln_rtn_args,
        tolerance: INT4_TOLERANCE,
    },
    Tool {
        id: "kiln-int4-gptq",
        group: "int4",
        peer: false,
        program: Program::Kiln,
        args: kiln_gptq_args,
        tolerance: INT4_TOLERANCE,
    },
    Tool {
        id: "kiln-int4-gptq-embed",
        group: "int4",
        peer: false,
        program: Program::Kiln,
        args: kiln_gptq_embed_args,
        tolerance: INT4_TOLERANCE,
    },
    Tool {
        id: "ort-int4",
        group: "int4",
        peer: true,
        program: Program::Python,
        args: ort_symmetric_args,
        tolerance: INT4_TOLERANCE,
    },
    Tool {
        id: "ort-int4-asym",
        group: "int4",
        peer: true,
        program: Program::Python,
        args: ort_asymmetric_args,
        tolerance: INT4_TOLERANCE,
    },
];

fn kiln_int4(inv: &Invocation, method: &[&str]) -> Vec<String> {
    let mut args = vec![inv.model, "--opt", "O2", "--target", "cpu", "--precision", "int4", "--block", BLOCK];
    args.extend(method);
    args.extend(["--skip-validation", "-o", inv.out]);
    args.into_iter().map(String::from).collect()
}

fn kiln_rtn_args(inv: &Invocation) -> Vec<String> {
    kiln_int4(inv, &["--int4-method", "rtn"])
}

fn kiln_gptq_args(inv: &Invocation) -> Vec<String> {
    kiln_int4(inv, &["--int4-method", "gptq", "--data", inv.data])
}

/// GPTQ with the word and position embedding tables as 4-bit `GatherBlockQuantized` too.
fn kiln_gptq_embed_args(inv: &Invocation) -> Vec<String> {
    kiln_int4(inv, &["--int4-method", "gptq", "--data", inv.data, "--int4-embeddings"])
}

fn ort_args(inv: &Invocation, asymmetric: bool) -> Vec<String> {
    let script = crate::repo_root().join("xtask/bench/ort_int4.py");
    let mut args =
        vec![script.to_string_lossy().into_owned(), inv.model.to_string(), format!("{}/model.onnx", inv.out)];
    args.extend(["--block".to_string(), BLOCK.to_string()]);
    if asymmetric {
        args.push("--asymmetric".to_string());
    }
    args
}

fn ort_symmetric_args(inv: &Invocation) -> Vec<String> {
    ort_args(inv, false)
}

fn ort_asymmetric_args(inv: &Invocation) -> Vec<String> {
    ort_args(inv, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_rows_build_their_command_lines() {
        let inv = Invocation { fixture: "transformer", model: "/m.onnx", out: "/o", data: "/d", kiln_args: &[] };
        let by_id = |id: &str| INT4_TOOLS.iter().find(|t| t.id == id).unwrap();
        let rtn = (by_id("kiln-int4-rtn").args)(&inv);
        assert_eq!(rtn[0], "/m.onnx");
        assert!(rtn.windows(2).any(|w| w == ["--precision", "int4"]));
        assert!(rtn.windows(2).any(|w| w == ["--block", "32"]));
        assert!(!rtn.contains(&"--data".to_string()));
        let gptq = (by_id("kiln-int4-gptq").args)(&inv);
        assert!(gptq.windows(2).any(|w| w == ["--int4-method", "gptq"]));
        assert!(gptq.windows(2).any(|w| w == ["--data", "/d"]));
        assert!(!gptq.contains(&"--int4-embeddings".to_string()));
        assert!((by_id("kiln-int4-gptq-embed").args)(&inv).contains(&"--int4-embeddings".to_string()));
        let ort = (by_id("ort-int4").args)(&inv);
        assert!(ort[0].ends_with("xtask/bench/ort_int4.py"));
        assert_eq!(&ort[1..5], ["/m.onnx", "/o/model.onnx", "--block", "32"]);
        assert!(!ort.contains(&"--asymmetric".to_string()));
        assert!((by_id("ort-int4-asym").args)(&inv).contains(&"--asymmetric".to_string()));
    }
}
