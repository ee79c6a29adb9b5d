//! The tools the bench compares, and the command line each one is given.

/// How Kiln is asked to optimize: `{model}` is the input, `{out}` the artifact folder, whose
/// model is `{out}/model.onnx`. `--kiln-args` replaces it (to compare levels or branches).
pub(super) const KILN_ARGS: &str = "{model} --opt O3 --target cpu -o {out}";

/// Largest max |diff| against the original before an fp32 row is flagged; the fixtures'
/// outputs are probabilities and embeddings of magnitude about 1.
const FP32_TOLERANCE: Tolerance = Tolerance::MaxAbsDiff(1e-3);

/// When a row's outputs are too far from the original's to count as the same model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Tolerance {
    /// Largest max |diff| on the timing input (seed 1): for rows meant to be exact up to
    /// float reassociation.
    MaxAbsDiff(f64),
    /// Smallest cosine of any output on any evaluation sample: for lowered precisions, whose
    /// outputs differ by far more than rounding and are judged by how close they stay.
    CosineMin(f64),
}

/// Which program a tool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Program {
    /// The release `optimize` binary.
    Kiln,
    /// The venv's Python.
    Python,
    /// A console script installed into the venv's `bin`.
    VenvScript(&'static str),
    /// A script of the repository (path relative to its root), run by the venv's Python; its
    /// absolute path goes before the tool's arguments.
    Script(&'static str),
}

/// What a tool's argument builder gets. Paths are UTF-8 (checked before).
pub(super) struct Invocation<'a> {
    pub(super) fixture: &'a str,
    pub(super) model: &'a str,
    /// An empty folder the tool writes into; the model must end up as `<out>/model.onnx`.
    pub(super) out: &'a str,
    /// A folder of `.npz` calibration samples (recipe inputs of the calibration seeds, never
    /// the evaluation seeds); `{data}` in Kiln's arguments.
    pub(super) data: &'a str,
    pub(super) kiln_args: &'a [String],
}

/// One row of the benchmark per fixture.
pub(super) struct Tool {
    pub(super) id: &'static str,
    /// Rows compare within a group: the group's `kiln*` row against its peers.
    pub(super) group: &'static str,
    /// A peer (as opposed to Kiln itself).
    pub(super) peer: bool,
    pub(super) program: Program,
    pub(super) args: fn(&Invocation) -> Vec<String>,
    /// How far the row's outputs may be from the original's before it is flagged a mismatch.
    pub(super) tolerance: Tolerance,
}

/// Every group's tools, in row order. A precision adds its rows as a `const` slice in a file
/// of its own (`tools_int8.rs`, …) and one line here.
pub(super) const GROUPS: &[&[Tool]] =
    &[FP32_TOOLS, super::tools_int8::INT8_TOOLS, super::tools_half::FP16_TOOLS, super::tools_int4::INT4_TOOLS];

/// Every tool of every group, in row order.
pub(super) fn all_tools() -> impl Iterator<Item = &'static Tool> {
    GROUPS.iter().flat_map(|g| g.iter())
}

/// The graph optimizers, compared at FP32.
pub(super) const FP32_TOOLS: &[Tool] = &[
    Tool { id: "kiln", group: "fp32", peer: false, program: Program::Kiln, args: kiln_args, tolerance: FP32_TOLERANCE },
    Tool {
        id: "ort-transformers",
        group: "fp32",
        peer: true,
        program: Program::Python,
        args: ort_transformers_args,
        tolerance: FP32_TOLERANCE,
    },
    Tool {
        id: "onnxsim",
        group: "fp32",
        peer: true,
        program: Program::VenvScript("onnxsim"),
        args: in_out_args,
        tolerance: FP32_TOLERANCE,
    },
    Tool {
        id: "onnxslim",
        group: "fp32",
        peer: true,
        program: Program::VenvScript("onnxslim"),
        args: in_out_args,
        tolerance: FP32_TOLERANCE,
    },
];

/// FP32 peers whose optimize time the fp32 Kiln row's is divided by in the summary (every
/// group also gets a ratio against each of its own peers).
pub(super) const OPT_TIME_BASELINES: &[&str] = &["onnxsim", "ort-transformers"];

fn kiln_args(inv: &Invocation) -> Vec<String> {
    inv.kiln_args
        .iter()
        .map(|a| a.replace("{model}", inv.model).replace("{out}", inv.out).replace("{data}", inv.data))
        .collect()
}

pub(super) fn out_model(inv: &Invocation) -> String {
    format!("{}/model.onnx", inv.out)
}

/// `onnxsim IN OUT`, `onnxslim IN OUT`: their defaults.
fn in_out_args(inv: &Invocation) -> Vec<String> {
    vec![inv.model.to_string(), out_model(inv)]
}

/// `python -m onnxruntime.transformers.optimizer` with the model type that fits the fixture.
///
/// `--opt_level 0` runs the Python fusions only: ORT's own graph optimizations run again when
/// a session loads the model anyway, and in onnxruntime 1.31.1 a level above 0 imports torch,
/// which the bench does not install.
fn ort_transformers_args(inv: &Invocation) -> Vec<String> {
    let model_type: &[&str] = match inv.fixture {
        // BERT encoder (MiniLM-L3): 12 heads, hidden 384.
        "transformer" => &["--model_type", "bert", "--num_heads", "12", "--hidden_size", "384"],
        // SVTR blocks over image columns: ViT-style attention and LayerNorm.
        "transformer_ocr" => &["--model_type", "vit"],
        // CNNs and the recurrent model have no model type of their own: the tool's default
        // type is its generic path, which fuses the patterns it finds (LayerNorm, Gelu...).
        _ => &["--model_type", "bert"],
    };
    let mut args: Vec<String> = ["-m", "onnxruntime.transformers.optimizer", "--input", inv.model, "--output"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(out_model(inv));
    args.extend(model_type.iter().map(|s| s.to_string()));
    args.extend(["--opt_level".to_string(), "0".to_string()]);
    args
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::split_args;

    #[test]
    fn tools_build_their_command_lines() {
        let kiln_template = split_args(KILN_ARGS);
        let inv =
            Invocation { fixture: "transformer", model: "/m.onnx", out: "/o", data: "/d", kiln_args: &kiln_template };
        let by_id = |id: &str| all_tools().find(|t| t.id == id).unwrap();
        assert_eq!((by_id("kiln").args)(&inv), ["/m.onnx", "--opt", "O3", "--target", "cpu", "-o", "/o"]);
        assert_eq!((by_id("onnxsim").args)(&inv), ["/m.onnx", "/o/model.onnx"]);
        let ort = (by_id("ort-transformers").args)(&inv);
        assert_eq!(
            &ort[..6],
            ["-m", "onnxruntime.transformers.optimizer", "--input", "/m.onnx", "--output", "/o/model.onnx"]
        );
        assert!(ort.windows(2).any(|w| w == ["--model_type", "bert"]));
        assert!(ort.windows(2).any(|w| w == ["--opt_level", "0"]));
        let cnn = Invocation { fixture: "cnn", ..inv };
        assert!((by_id("ort-transformers").args)(&cnn).windows(2).any(|w| w == ["--model_type", "bert"]));
        // Every group has a Kiln row and at least one peer, and ids are unique.
        for t in all_tools() {
            assert!(all_tools().any(|k| k.group == t.group && !k.peer), "{}", t.id);
            assert!(all_tools().any(|p| p.group == t.group && p.peer), "{}", t.id);
            assert_eq!(all_tools().filter(|o| o.id == t.id).count(), 1);
        }
        for base in OPT_TIME_BASELINES {
            assert!(all_tools().any(|t| t.id == *base && t.peer && t.group == "fp32"));
        }
    }
}
