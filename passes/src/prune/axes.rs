//! How each op maps the axes of its inputs to the axes of its outputs, as far as pruning
//! needs to know it: which ops carry a channel axis through unchanged, which broadcast their
//! inputs together, which consume or produce channels through a weight, and which Kiln does
//! not understand (anything not listed: the channels that reach it are left alone).

use kiln_compiler::ir::Node;

/// The channel behaviour of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AxisRule {
    /// Elementwise on input 0; other inputs are scalars or attributes (Relu, Clip, Gelu…).
    /// Every output has the shape of input 0.
    Unary,
    /// Elementwise over all inputs with numpy broadcasting (Add, Mul, Where, Sum…).
    Broadcast,
    /// Works per channel on axis 1 and keeps it (pooling, BatchNormalization's data path).
    PerChannel,
    /// Conv-like: input channels on axis 1, weight `[out, in/group, k…]`, optional bias.
    Conv,
    /// MatMul: contracts the last axis of input 0 with a weight.
    MatMul,
    /// Gemm: 2-D with `transA`/`transB`.
    Gemm,
    /// BatchNormalization: per-channel parameters in inputs 1..=4.
    BatchNorm,
    /// InstanceNormalization: per-channel scale and bias in inputs 1 and 2.
    InstanceNorm,
    /// Transpose: axes move by `perm`.
    Transpose,
    /// Flatten around `axis`.
    Flatten,
    /// Reshape with a shape input.
    Reshape,
    /// Concat along `axis`.
    Concat,
    /// Unknown to pruning.
    Opaque,
}

/// The rule for a node.
pub(crate) fn rule(n: &Node) -> AxisRule {
    use AxisRule::*;
    match n.domain() {
        "" => match n.op_type.as_str() {
            "Relu" | "LeakyRelu" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "Tanh" | "Clip" | "Elu" | "Selu"
            | "Celu" | "Softplus" | "Softsign" | "Erf" | "Gelu" | "Mish" | "Exp" | "Log" | "Abs" | "Neg" | "Sqrt"
            | "Reciprocal" | "Identity" | "Dropout" | "Cast" | "Floor" | "Ceil" | "Round" | "Sin" | "Cos"
            | "ThresholdedRelu" | "Sign" => Unary,
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mean" | "PRelu" | "Where" => Broadcast,
            "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "LpPool" | "GlobalLpPool" => PerChannel,
            "Conv" => Conv,
            "MatMul" => MatMul,
            "Gemm" => Gemm,
            "BatchNormalization" => BatchNorm,
            "InstanceNormalization" => InstanceNorm,
            "Transpose" => Transpose,
            "Flatten" => Flatten,
            "Reshape" => Reshape,
            "Concat" => Concat,
            _ => Opaque,
        },
        "com.microsoft" => match n.op_type.as_str() {
            "Gelu" | "FastGelu" | "QuickGelu" | "BiasGelu" => Broadcast,
            "FusedConv" => Conv,
            _ => Opaque,
        },
        _ => Opaque,
    }
}
