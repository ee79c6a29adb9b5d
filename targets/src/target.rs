//! A deployment target: which runtime runs the artifact, what it runs fast (its
//! [`Capabilities`]), how a graph is made legal for it, what files it needs beside the model,
//! and whether it can run on this machine.

use kiln_compiler::ir::Model;
use kiln_compiler::pass::{Pass, PassManager, PipelineReport};
use kiln_compiler::runtime::{ExecutionProvider, RuntimeError};
use serde::Serialize;

use crate::capabilities::{self, Capabilities};
use crate::legalize::SplitSharedDequantize;
use crate::lint::LintReport;
use crate::tensorrt::{BuildProfile, ProfileError};

/// The deployment targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// ONNX Runtime, CPU execution provider.
    #[default]
    Cpu,
    /// ONNX Runtime, CUDA execution provider.
    Cuda,
    /// TensorRT (standard ONNX ops only).
    TensorRt,
}

impl TargetKind {
    pub const ALL: [TargetKind; 3] = [TargetKind::Cpu, TargetKind::Cuda, TargetKind::TensorRt];

    /// Whether the target runs ONNX Runtime's `com.microsoft` contrib ops.
    pub fn runs_ort_contrib_ops(self) -> bool {
        matches!(self, TargetKind::Cpu | TargetKind::Cuda)
    }

    /// Fusion rules this target leaves out, and why. A fusion that makes the target slower is
    /// not an optimization: on ONNX Runtime's CPU provider (1.31, MiniLM-L3, 1 thread, median of
    /// interleaved runs) SkipLayerNormalization made the model 5–13% slower than ORT's own
    /// LayerNormalization path, and EmbedLayerNormalization 6% slower; without both, O3 was
    /// 7% faster than the original at sequence length 16 and 2% at 128. GPU targets keep them.
    pub fn excluded_rules(self) -> &'static [(&'static str, &'static str)] {
        match self {
            TargetKind::Cpu => &[
                ("skip-layernorm", "slower than ORT CPU's own Add + LayerNormalization"),
                ("embed-layernorm", "slower than ORT CPU's own Gather + Add + LayerNormalization"),
            ],
            // Measured on an H100 with ONNX Runtime 1.31.1 (`cargo xtask gpu`): the CUDA
            // FusedConv refuses every activation but Relu at session creation ("unsupported conv
            // activation mode HardSigmoid") and has no FP16 kernel (FP16 ones ran on the CPU);
            // ONNX Runtime fuses Conv+Relu for CUDA by itself.
            TargetKind::Cuda => &[
                ("fused-conv", "the CUDA FusedConv takes Relu only and no FP16; ORT fuses Conv+Relu itself"),
                ("fused-gemm", "ONNX Runtime has a FusedGemm kernel for the CPU only"),
            ],
            TargetKind::TensorRt => &[],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Cpu => "cpu",
            TargetKind::Cuda => "cuda",
            TargetKind::TensorRt => "tensorrt",
        }
    }

    /// The target named `cpu`, `cuda` or `tensorrt`.
    pub fn parse(name: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// Whether a target can run on this machine, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Availability {
    pub runnable: bool,
    pub detail: String,
}

/// Extra files a target needs beside `model.onnx` (build profiles, scripts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmittedFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Whether the file should be executable (a shell script).
    pub executable: bool,
}

/// Why the emitter could not write a target's files.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// A target: its kind and capability table, and the passes and checks built on them.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub kind: TargetKind,
}

impl Target {
    pub fn new(kind: TargetKind) -> Target {
        Target { kind }
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// What the target runs and how fast (see [`capabilities`]).
    pub fn capabilities(&self) -> &'static Capabilities {
        capabilities::of(self.kind)
    }

    /// The INT8 form to emit here: for `cpu` it depends on this machine's VNNI support.
    pub fn preferred_int8(&self) -> crate::capabilities::Int8Form {
        match self.kind {
            TargetKind::Cpu => crate::cpu::CpuFeatures::detect().preferred_int8(),
            _ => self.capabilities().int8[0],
        }
    }

    /// The execution provider ONNX Runtime needs to run this target's artifacts.
    pub fn execution_provider(&self) -> ExecutionProvider {
        match self.kind {
            TargetKind::Cpu => ExecutionProvider::Cpu,
            TargetKind::Cuda => ExecutionProvider::Cuda { device_id: 0 },
            TargetKind::TensorRt => ExecutionProvider::TensorRt { device_id: 0 },
        }
    }

    /// The passes that make a (quantized) graph legal for the target. They run after the
    /// precision stage and change no numbers.
    pub fn legalization(&self) -> Vec<Box<dyn Pass>> {
        match self.kind {
            // TensorRT fuses a DequantizeLinear into one consumer only.
            TargetKind::TensorRt => vec![Box::new(SplitSharedDequantize)],
            TargetKind::Cpu | TargetKind::Cuda => Vec::new(),
        }
    }

    /// Runs the legalization passes.
    pub fn legalize(&self, model: &mut Model) -> Result<PipelineReport, kiln_compiler::pass::PassError> {
        let mut pm = PassManager::new();
        for p in self.legalization() {
            pm = pm.add_boxed(p);
        }
        pm.run(model)
    }

    /// Checks the model against the target's rules (see [`crate::lint`]), counting FLOPs at
    /// `shapes` (input name → shape) when given.
    pub fn lint(&self, model: &Model, shapes: &std::collections::BTreeMap<String, Vec<u64>>) -> LintReport {
        crate::lint::lint_model_at(model, self.kind, shapes)
    }

    /// The files the target needs beside the model: for TensorRT the engine build profile and
    /// the runtime options (`tensorrt.json`) and the `trtexec` command line (`trtexec.sh`).
    pub fn emit(&self, model: &Model, profile: &BuildProfile) -> Result<Vec<EmittedFile>, EmitError> {
        match self.kind {
            TargetKind::TensorRt => crate::tensorrt::emit(model, profile),
            TargetKind::Cpu | TargetKind::Cuda => Ok(Vec::new()),
        }
    }

    /// Whether the target can run here: ONNX Runtime loads and, for the GPU targets, its
    /// provider registers (a session on a one-node model is created with the provider and
    /// `error_on_failure`, so a silent CPU fallback counts as "not available").
    pub fn check(&self) -> Availability {
        match probe(self.execution_provider()) {
            Ok(()) => Availability { runnable: true, detail: format!("{} runs here", self.execution_provider()) },
            Err(e) => Availability { runnable: false, detail: e.to_string() },
        }
    }
}

fn probe(provider: ExecutionProvider) -> Result<(), RuntimeError> {
    use kiln_compiler::ir::{Graph, NodeSpec, TensorType, Type};
    use kiln_compiler::runtime::{OrtExecutor, SessionConfig};
    let mut g = Graph::new();
    let ty = Type::tensor(TensorType::with_dims(kiln_compiler::DataType::F32, &[1]));
    let x = g.add_input("x", Some(ty.clone()));
    let n = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["y"]));
    if let Some(y) = g.node(n).output(0) {
        g.value_mut(y).ty = Some(ty);
        g.push_output(y);
    }
    let model = Model {
        ir_version: Some(8),
        opset_import: vec![kiln_compiler::ir::OpsetImport { domain: None, version: Some(17) }],
        graph: Some(g),
        ..Model::default()
    };
    let config = SessionConfig { provider, ..SessionConfig::default() };
    kiln_compiler::execute::load_session(&OrtExecutor::new(), &model, None, &config).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_ort_targets_run_contrib_ops() {
        for t in TargetKind::ALL {
            assert_eq!(TargetKind::parse(t.name()), Some(t));
        }
        assert_eq!(TargetKind::parse("tpu"), None);
        assert!(TargetKind::Cpu.runs_ort_contrib_ops());
        assert!(!TargetKind::TensorRt.runs_ort_contrib_ops());
    }

    #[test]
    fn cpu_runs_here_and_gpu_targets_say_why_not() {
        assert!(Target::new(TargetKind::Cpu).check().runnable, "{:?}", Target::new(TargetKind::Cpu).check());
        // No GPU and no GPU build of ONNX Runtime on the test machines: both must say so, not
        // pretend (a GPU machine with the cargo features would report runnable).
        for kind in [TargetKind::Cuda, TargetKind::TensorRt] {
            let a = Target::new(kind).check();
            if !a.runnable {
                assert!(a.detail.contains("not available"), "{}: {}", kind.name(), a.detail);
            }
        }
    }
}
