//! What each target runs fast: quantization schemes, the ops it executes in integer
//! arithmetic when their inputs are dequantized, low-precision forms, and ops it cannot run.
//! These tables are data: the linter, the FLOPs estimate and the emitters read them.
//!
//! Sources: ONNX Runtime's QDQ node-unit fusions (CPU execution provider only: the CUDA
//! provider runs a QDQ graph as DequantizeLinear followed by float kernels), the contrib ops
//! each provider registers, and TensorRT's explicit-quantization rules (signed, symmetric,
//! per-tensor activations, per-channel weights on the output-channel axis).

use kiln_compiler::DataType;
use serde::Serialize;

use crate::target::TargetKind;

/// How INT8 is expressed in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Int8Form {
    /// QuantizeLinear/DequantizeLinear with int8 activations and int8 weights.
    QdqS8S8,
    /// QDQ with uint8 activations and int8 weights quantized to 7 bits (`reduce_range`): the
    /// form that avoids u8×s8 overflow on x86 CPUs without VNNI.
    QdqU8S8ReduceRange,
    /// Weights stored int8, activations quantized at run time (DynamicQuantizeLinear +
    /// MatMulInteger / ConvInteger, or ORT's DynamicQuantizeMatMul).
    Dynamic,
    /// QDQ with zero points 0 (symmetric), int8 only.
    QdqSymmetric,
}

/// How 16-bit floats are expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HalfForm {
    /// Not faster on this target (ORT CPU computes most FP16 ops by upcasting).
    Slower,
    /// FP16 tensors with ORT contrib fusions (FP16 kernels on the GPU).
    Fp16ContribFusions,
    /// FP16 baked into the graph with explicit Casts: TensorRT 10 `--stronglyTyped` and
    /// TensorRT 11 take types from the graph.
    StronglyTypedCasts,
}

/// How 4-bit weights are expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Int4Form {
    /// `com.microsoft.MatMulNBits` (blocked along K, packed).
    MatMulNBits,
    /// An int4 initializer, a blocked DequantizeLinear, then the float MatMul / Gemm.
    DqBlockedWeights,
}

/// An op a target cannot run (or runs only by falling back to another device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rejected {
    /// `""` for the default ONNX domain.
    pub domain: &'static str,
    pub op: &'static str,
    pub why: &'static str,
}

/// A target's capability table.
#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// The runtime and provider that run the artifact.
    pub runtime: &'static str,
    /// Whether ONNX Runtime's `com.microsoft` ops run there.
    pub contrib_ops: bool,
    /// INT8 forms in order of preference.
    pub int8: &'static [Int8Form],
    /// Q/DQ zero points must be 0.
    pub symmetric_only: bool,
    /// Quantized element types allowed for activations and for weights.
    #[serde(serialize_with = "dtype_names")]
    pub activation_types: &'static [DataType],
    #[serde(serialize_with = "dtype_names")]
    pub weight_types: &'static [DataType],
    /// Activations may be quantized per channel (TensorRT: per tensor only).
    pub per_channel_activations: bool,
    /// Ops executed in integer arithmetic when their inputs come from DequantizeLinear.
    pub int8_ops: &'static [&'static str],
    /// Integer-domain ops (QOperator form, dynamic quantization) that run in INT8 here.
    pub integer_ops: &'static [&'static str],
    pub half: HalfForm,
    pub int4: &'static [Int4Form],
    /// Ops that cannot run (or only on a fallback device).
    pub rejected: &'static [Rejected],
    /// TensorRT: only the default ONNX domain (plus `ai.onnx.ml` nowhere) is accepted.
    pub onnx_domain_only: bool,
    /// Depthwise Convs run faster in float than through the integer kernel (ORT CPU on x86),
    /// so a quantized input with a float depthwise weight is the form to want there.
    pub float_depthwise: bool,
    /// Convs with fewer weights run faster in float than between Q/DQ (0: none).
    pub min_int8_conv_weights: usize,
}

fn dtype_names<S: serde::Serializer>(types: &&'static [DataType], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(types.iter().map(|t| t.name()))
}

/// The ops that take a weight in input 1 and do the bulk of the arithmetic.
pub const WEIGHTED_OPS: &[&str] = &["Conv", "ConvTranspose", "MatMul", "Gemm"];

/// Ops that only move data: a Q/DQ around them keeps the tensor in int8.
const DATA_MOVEMENT: &[&str] = &[
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "GatherElements",
    "Expand",
    "Tile",
    "MaxPool",
    "Resize",
    "Split",
    "DepthToSpace",
    "SpaceToDepth",
];

/// QOperator-form ops: integer in, integer out, with scales as inputs.
const QOPERATOR: &[&str] = &[
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearLeakyRelu",
    "QLinearSigmoid",
    "QLinearSoftmax",
    "QLinearWhere",
    "QLinearConvTranspose",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QAttention",
    "DynamicQuantizeLSTM",
];

const CPU_INT8_OPS: &[&str] = &[
    // ORT CPU's QDQ node units: Conv, MatMul, Gemm, ConvTranspose to integer kernels; the
    // elementwise and pooling units to QLinear* contrib ops; data movement drops its Q/DQ.
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Add",
    "Mul",
    "Concat",
    "AveragePool",
    "GlobalAveragePool",
    "LeakyRelu",
    "Sigmoid",
    "Softmax",
    "Where",
    "ArgMax",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "GatherElements",
    "Expand",
    "Tile",
    "MaxPool",
    "Resize",
    "Split",
    "DepthToSpace",
    "SpaceToDepth",
];

const TRT_INT8_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "Add",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "MaxPool",
    "Resize",
    "Split",
];

const fn cpu_qoperator(op: &'static str) -> Rejected {
    Rejected { domain: "", op, why: "a QOperator op: the CUDA provider has no kernel, ONNX Runtime runs it on the CPU" }
}

const CUDA_REJECTED: &[Rejected] = &[
    cpu_qoperator("QLinearConv"),
    cpu_qoperator("QLinearMatMul"),
    cpu_qoperator("ConvInteger"),
    Rejected { domain: "com.microsoft", op: "QGemm", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearAdd", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearMul", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearConcat", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearAveragePool", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearGlobalAveragePool", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearLeakyRelu", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearSigmoid", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearSoftmax", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearWhere", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "QLinearConvTranspose", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "DynamicQuantizeMatMul", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "MatMulIntegerToFloat", why: "CPU-only contrib op" },
    Rejected { domain: "com.microsoft", op: "NhwcConv", why: "CPU layout op" },
];

const TRT_REJECTED: &[Rejected] = &[
    Rejected { domain: "", op: "QLinearConv", why: "QOperator form: TensorRT takes Q/DQ only" },
    Rejected { domain: "", op: "QLinearMatMul", why: "QOperator form: TensorRT takes Q/DQ only" },
    Rejected { domain: "", op: "ConvInteger", why: "QOperator form: TensorRT takes Q/DQ only" },
    Rejected { domain: "", op: "MatMulInteger", why: "QOperator form: TensorRT takes Q/DQ only" },
    Rejected { domain: "", op: "DynamicQuantizeLinear", why: "TensorRT needs constant scales (no dynamic INT8)" },
];

static CPU: Capabilities = Capabilities {
    runtime: "onnxruntime CPUExecutionProvider",
    contrib_ops: true,
    int8: &[Int8Form::QdqS8S8, Int8Form::QdqU8S8ReduceRange, Int8Form::Dynamic],
    symmetric_only: false,
    activation_types: &[DataType::I8, DataType::U8],
    weight_types: &[DataType::I8, DataType::U8, DataType::I4, DataType::U4],
    per_channel_activations: true,
    int8_ops: CPU_INT8_OPS,
    integer_ops: QOPERATOR,
    half: HalfForm::Slower,
    int4: &[Int4Form::MatMulNBits, Int4Form::DqBlockedWeights],
    rejected: &[],
    onnx_domain_only: false,
    // The same facts `Int8Config::ort_cpu` keeps Convs float by.
    float_depthwise: kiln_passes::fuse::INT8_DEPTHWISE_SLOWER_THAN_FLOAT,
    min_int8_conv_weights: kiln_passes::fuse::INT8_MIN_CONV_WEIGHT,
};

static CUDA: Capabilities = Capabilities {
    runtime: "onnxruntime CUDAExecutionProvider",
    contrib_ops: true,
    // Q/DQ have CUDA kernels, but no QDQ fusion runs for this provider: the compute stays in
    // float after DequantizeLinear. MatMulInteger is the one integer GEMM it has.
    int8: &[Int8Form::Dynamic],
    symmetric_only: false,
    activation_types: &[DataType::I8, DataType::U8],
    weight_types: &[DataType::I8, DataType::U8, DataType::I4, DataType::U4],
    per_channel_activations: true,
    int8_ops: &[],
    integer_ops: &["MatMulInteger"],
    half: HalfForm::Fp16ContribFusions,
    int4: &[Int4Form::MatMulNBits],
    rejected: CUDA_REJECTED,
    onnx_domain_only: false,
    float_depthwise: false,
    min_int8_conv_weights: 0,
};

static TENSORRT: Capabilities = Capabilities {
    runtime: "TensorRT (trtexec, or onnxruntime TensorrtExecutionProvider)",
    contrib_ops: false,
    int8: &[Int8Form::QdqSymmetric],
    symmetric_only: true,
    activation_types: &[DataType::I8, DataType::F8E4M3FN],
    weight_types: &[DataType::I8, DataType::I4, DataType::F8E4M3FN],
    per_channel_activations: false,
    int8_ops: TRT_INT8_OPS,
    integer_ops: &[],
    half: HalfForm::StronglyTypedCasts,
    int4: &[Int4Form::DqBlockedWeights],
    rejected: TRT_REJECTED,
    onnx_domain_only: true,
    float_depthwise: false,
    min_int8_conv_weights: 0,
};

/// The capability table of a target.
pub fn of(kind: TargetKind) -> &'static Capabilities {
    match kind {
        TargetKind::Cpu => &CPU,
        TargetKind::Cuda => &CUDA,
        TargetKind::TensorRt => &TENSORRT,
    }
}

impl Capabilities {
    /// Whether `op` (default domain) runs in integer arithmetic when its inputs are dequantized.
    pub fn runs_int8(&self, op: &str) -> bool {
        self.int8_ops.contains(&op)
    }

    /// Whether `op` only moves data (its Q/DQ are dropped, the tensor stays int8).
    pub fn moves_data(op: &str) -> bool {
        DATA_MOVEMENT.contains(&op)
    }

    /// Why `op` of `domain` cannot run on the target, if it cannot.
    pub fn rejects(&self, domain: &str, op: &str) -> Option<String> {
        if let Some(r) = self.rejected.iter().find(|r| r.op == op && (r.domain == domain || r.domain.is_empty())) {
            return Some(r.why.to_string());
        }
        if self.onnx_domain_only && !domain.is_empty() {
            return Some(format!("an op of domain '{domain}': only standard ONNX ops are accepted"));
        }
        if !self.contrib_ops && domain == "com.microsoft" {
            return Some("an ONNX Runtime contrib op".into());
        }
        if !matches!(domain, "" | "com.microsoft" | "ai.onnx.ml") {
            return Some(format!("an op of domain '{domain}', which no ONNX Runtime provider registers"));
        }
        None
    }

    /// Whether the integer-domain op runs in INT8 here (QOperator / dynamic forms).
    pub fn runs_integer_op(&self, op: &str) -> bool {
        self.integer_ops.contains(&op)
    }

    /// Whether `t` is allowed for quantized activations.
    pub fn allows_activation(&self, t: DataType) -> bool {
        self.activation_types.contains(&t)
    }

    /// Whether `t` is allowed for quantized weights.
    pub fn allows_weight(&self, t: DataType) -> bool {
        self.weight_types.contains(&t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_reject_what_each_target_cannot_run() {
        let cpu = of(TargetKind::Cpu);
        let cuda = of(TargetKind::Cuda);
        let trt = of(TargetKind::TensorRt);
        assert_eq!(cpu.rejects("", "QLinearConv"), None);
        assert!(cuda.rejects("", "QLinearConv").is_some_and(|w| w.contains("CPU")));
        assert_eq!(cuda.rejects("com.microsoft", "FusedConv"), None);
        assert!(trt.rejects("com.microsoft", "FusedConv").is_some());
        assert!(trt.rejects("", "DynamicQuantizeLinear").is_some());
        assert_eq!(trt.rejects("", "Conv"), None);
        assert!(cpu.rejects("com.example", "Foo").is_some());
        assert!(cpu.runs_int8("Conv") && trt.runs_int8("Conv") && !cuda.runs_int8("Conv"));
        assert!(trt.symmetric_only && !cpu.symmetric_only);
        let json = serde_json::to_value(trt).unwrap();
        assert_eq!(json["activation_types"][0], "i8");
        assert_eq!(json["half"], "strongly-typed-casts");
    }
}
