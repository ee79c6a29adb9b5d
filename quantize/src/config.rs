//! Static INT8 settings: the quantization scheme, where Q/DQ go, and which nodes are
//! selected. Each target has its constructor; the plan ([`crate::plan`]) reads them.

use std::collections::BTreeSet;

use crate::weights::IntType;

/// Where the Q/DQ go around weighted ops (Conv, ConvTranspose, MatMul, Gemm): the form the
/// target fuses into integer kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// ONNX Runtime's node units: a weighted op's inputs and its output are quantized (QLinearConv
    /// takes and gives integers), element-wise ops too, and every consumer of a quantized tensor
    /// reads it through a DequantizeLinear.
    #[default]
    OutputsAndInputs,
    /// TensorRT explicit quantization: the inputs of weighted ops are quantized, their outputs
    /// are not (TensorRT fuses the next Q into the op when a quantized consumer follows, and the
    /// activation after it into its epilogue); a residual Add fed by a quantized weighted op
    /// has its other input quantized (the Add fuses into that op); only the consumers that read
    /// a tensor quantized get a DequantizeLinear, the others keep the float tensor.
    WeightedInputs,
}

/// Scheme and selection for static INT8.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Config {
    /// Where Q/DQ go around weighted ops.
    pub placement: Placement,
    /// Integer type of activations.
    pub activation: IntType,
    /// Symmetric activations (zero point 0); asymmetric ones use the whole range.
    pub symmetric_activations: bool,
    /// Weights per output channel (else per tensor).
    pub per_channel: bool,
    /// Node names or op types left in float.
    pub exclude: Vec<String>,
    /// When not empty, only these node names or op types are quantized.
    pub include: Vec<String>,
    /// Ops quantized only because the target runs them on integers (Sigmoid, Softmax…).
    pub target_ops: BTreeSet<String>,
    /// Remove a ReLU after a quantized op and let the output quantizer clamp (asymmetric only).
    pub absorb_relu: bool,
    /// Leave depthwise convolutions (`group` equal to the input channels) in float: the
    /// target's integer kernel for them is slower than its float one.
    pub float_depthwise: bool,
    /// Convs with fewer weights stay in float: the Q/DQ at their edges cost more than their
    /// integer kernel saves, and small layers lose the most accuracy to 8 bits. 0: none.
    pub min_conv_weights: usize,
    /// Store biases as int32 with scale `s_input · s_weight` (what ORT's integer kernels take);
    /// TensorRT takes float biases and only int8/int4 Q/DQ.
    pub quantize_bias: bool,
    /// Store large constant Gather tables (embeddings) as S8, dequantized after the Gather
    /// ([`crate::handlers::gather`]).
    pub embeddings: bool,
    /// Fused `com.microsoft.Attention` becomes QAttention (S8 QKV weight, input quantized at
    /// run time, [`crate::handlers::attention`]).
    pub qattention: bool,
}

impl Int8Config {
    /// ONNX Runtime on CPU: weights S8 symmetric per channel, activations asymmetric, the form
    /// its QDQ transformers fuse into QLinearConv/QLinearMatMul/QGemm and the contrib QLinear*
    /// kernels. Activations are U8 on x86 and S8 on ARM: ORT 1.31 fuses S8 activations only on
    /// ARM (`QDQIsInt8Allowed`); on x86 it rewrites an S8 Q→DQ pair to U8 only when the Q has a
    /// single DQ, so a tensor read by two consumers stays S8 and neither node fuses (measured on
    /// the cnn fixture: 30 of 53 Conv fused with S8, 2.8× slower than FP32).
    pub fn ort_cpu() -> Int8Config {
        let ops = ["Sigmoid", "LeakyRelu", "Softmax", "AveragePool", "GlobalAveragePool"];
        Int8Config {
            placement: Placement::OutputsAndInputs,
            activation: if cfg!(any(target_arch = "aarch64", target_arch = "arm")) { IntType::S8 } else { IntType::U8 },
            symmetric_activations: false,
            per_channel: true,
            exclude: Vec::new(),
            include: Vec::new(),
            target_ops: ops.iter().map(|s| s.to_string()).collect(),
            absorb_relu: true,
            // ORT 1.31 x86: QLinearConv on a depthwise 3x3 ran about 5x slower than the float
            // depthwise Conv (cnn fixture, 1 thread, ORT profile); quantized, the cnn fixture
            // was 1.7x slower than FP32. On ARM the int8 depthwise kernel is the fast one.
            float_depthwise: kiln_passes::fuse::INT8_DEPTHWISE_SLOWER_THAN_FLOAT,
            // ORT 1.31 x86, 1 thread: with Convs under 4096 weights in float, PP-LCNet's INT8
            // model went from 1.34x to 0.93x its FP32 time (cosine 0.9980 -> 0.9994), the PP-OCR
            // classifier from 1.21x to 1.02x (0.99926 -> 0.99982), PP-OCRv4 rec 2% faster.
            // The same size decides which Conv + Relu stay unfused for INT8 (`fuse-ort`).
            min_conv_weights: kiln_passes::fuse::INT8_MIN_CONV_WEIGHT,
            quantize_bias: true,
            embeddings: true,
            qattention: true,
        }
    }

    /// ONNX Runtime CUDA: the CPU scheme with FP32 biases. The CUDA provider has no INT8 Conv
    /// or MatMul for a Q/DQ graph (it runs them in float between the Q/DQ pairs) and no kernel
    /// for an INT32 DequantizeLinear: an INT32 bias would run on the CPU with a copy each side
    /// (measured on an H100, ONNX Runtime 1.31: 19 of 19 bias DQs of cnn_lcnet left the GPU).
    pub fn ort_cuda() -> Int8Config {
        Int8Config { quantize_bias: false, min_conv_weights: 0, ..Int8Config::ort_cpu() }
    }

    /// TensorRT: symmetric S8 everywhere, Q/DQ on the inputs of weighted ops
    /// ([`Placement::WeightedInputs`]), float biases. Of the ops without a weight only pooling
    /// runs in int8 there (activations fuse into the weighted op before them).
    pub fn tensorrt() -> Int8Config {
        let ops = ["AveragePool", "GlobalAveragePool"];
        Int8Config {
            placement: Placement::WeightedInputs,
            activation: IntType::S8,
            symmetric_activations: true,
            per_channel: true,
            exclude: Vec::new(),
            include: Vec::new(),
            target_ops: ops.iter().map(|s| s.to_string()).collect(),
            absorb_relu: false,
            float_depthwise: false,
            min_conv_weights: 0,
            quantize_bias: false,
            // TensorRT chooses its own precision for a Gather; a DQ after it is left as is.
            embeddings: false,
            qattention: false,
        }
    }

    /// Whether the user's selection leaves this node out, and why.
    pub fn excluded(&self, name: Option<&str>, op_type: &str) -> Option<String> {
        let named = |list: &[String]| list.iter().any(|e| e == op_type || Some(e.as_str()) == name);
        if named(&self.exclude) {
            return Some("excluded".into());
        }
        if !self.include.is_empty() && !named(&self.include) {
            return Some("not included".into());
        }
        None
    }
}
