//! Reading QuantizeLinear / DequantizeLinear nodes: their constant scales and zero points,
//! the quantized element type, the axis and block size, and where they sit in the graph.

use std::sync::Arc;

use kiln_compiler::ir::{AttrLookup, Graph, NodeId, ValueId};
use kiln_compiler::{DataType, Tensor};

/// ONNX Runtime's `com.microsoft` QuantizeLinear/DequantizeLinear mean the same as the
/// standard ones (they take a per-channel `axis` below opset 13); whether a target accepts
/// their domain is the capability table's business, not the Q/DQ reader's.
fn is_qdq_op(g: &Graph, n: NodeId, op: &str) -> bool {
    let node = g.node(n);
    node.op_type == op && matches!(node.domain(), "" | "com.microsoft")
}

/// Whether the node is a QuantizeLinear (standard or `com.microsoft`).
pub fn is_q(g: &Graph, n: NodeId) -> bool {
    is_qdq_op(g, n, "QuantizeLinear")
}

/// Whether the node is a DequantizeLinear (standard or `com.microsoft`).
pub fn is_dq(g: &Graph, n: NodeId) -> bool {
    is_qdq_op(g, n, "DequantizeLinear")
}

/// The constant behind a value: an initializer or a Constant node's `value`.
pub fn constant(g: &Graph, v: ValueId) -> Option<Arc<Tensor>> {
    if let Some(t) = g.value(v).initializer() {
        return Some(t.clone());
    }
    let p = g.value(v).producer()?;
    let node = g.node(p);
    if node.is_onnx("Constant") { node.attr_tensor("value").cloned() } else { None }
}

/// The DequantizeLinear producing `v`, if any.
pub fn dq_producer(g: &Graph, v: ValueId) -> Option<NodeId> {
    g.value(v).producer().filter(|&p| is_dq(g, p))
}

/// The quantization parameters of one Q or DQ node.
#[derive(Debug, Clone)]
pub struct QParams {
    /// Scales, when constant.
    pub scale: Option<Arc<Tensor>>,
    /// Zero points, when given and constant.
    pub zero_point: Option<Arc<Tensor>>,
    /// Whether a zero-point input is given at all (constant or not).
    pub has_zero_point: bool,
    /// The quantized element type (Q's output, DQ's input).
    pub qtype: Option<DataType>,
    /// `axis` as written (default 1).
    pub axis: i64,
    /// `block_size` (0 or absent: not blocked).
    pub block_size: i64,
}

impl QParams {
    /// Number of scales (1 for per-tensor), when the scale is constant.
    pub fn scale_count(&self) -> Option<u64> {
        self.scale.as_ref().map(|t| t.len())
    }

    /// Per-axis (more than one scale, not blocked).
    pub fn per_axis(&self) -> bool {
        self.block_size == 0 && self.scale.as_ref().is_some_and(|t| t.rank() == 1 && t.len() > 1)
    }

    /// Blocked (`block_size` > 0).
    pub fn blocked(&self) -> bool {
        self.block_size > 0
    }

    /// Whether every zero point is 0 (absent zero points are 0). `None`: not constant.
    pub fn zero_points_are_zero(&self) -> Option<bool> {
        if !self.has_zero_point {
            return Some(true);
        }
        // Zero is all-zero bits in every integer and float8 encoding (packed or not).
        self.zero_point.as_ref().and_then(|t| t.bytes()).map(|b| b.iter().all(|&x| x == 0))
    }

    /// The scales as f64, when constant and of a float type.
    pub fn scales(&self) -> Option<Vec<f64>> {
        self.scale.as_ref().and_then(|t| t.to_f64_vec().ok())
    }

    /// The axis normalized against the rank of the quantized tensor.
    pub fn axis_for_rank(&self, rank: usize) -> Option<usize> {
        let r = rank as i64;
        let a = if self.axis < 0 { self.axis + r } else { self.axis };
        (0..r).contains(&a).then_some(a as usize)
    }

    /// Whether two nodes quantize with the same parameters (a Q and its DQ must).
    pub fn same_as(&self, other: &QParams) -> Option<bool> {
        let eq = |a: &Option<Arc<Tensor>>, b: &Option<Arc<Tensor>>| match (a, b) {
            (Some(a), Some(b)) => Some(a.dtype() == b.dtype() && a.dims() == b.dims() && a.bytes() == b.bytes()),
            (None, None) => None,
            _ => None,
        };
        let scale = eq(&self.scale, &other.scale)?;
        let zp = match (self.has_zero_point, other.has_zero_point) {
            (false, false) => true,
            _ => match (self.zero_points_are_zero(), other.zero_points_are_zero()) {
                (Some(true), Some(true)) => true,
                _ => eq(&self.zero_point, &other.zero_point)?,
            },
        };
        let axis = !(self.per_axis() || other.per_axis()) || self.axis == other.axis;
        Some(scale && zp && axis && self.block_size == other.block_size)
    }
}

/// Reads a Q or DQ node's parameters.
pub fn params(g: &Graph, n: NodeId) -> QParams {
    let node = g.node(n);
    let scale = node.input(1).and_then(|v| constant(g, v));
    let zp_value = node.input(2);
    let zero_point = zp_value.and_then(|v| constant(g, v));
    let value_type = |v: Option<ValueId>| {
        v.and_then(|v| constant(g, v).map(|t| t.dtype()).or_else(|| g.tensor_type(v).and_then(|t| t.dtype())))
    };
    let qtype = if node.op_type == "QuantizeLinear" {
        zero_point
            .as_ref()
            .map(|t| t.dtype())
            .or_else(|| node.attr_int("output_dtype").filter(|&c| c != 0).and_then(|c| DataType::from_onnx(c as i32)))
            .or_else(|| value_type(node.output(0)))
            .or(Some(DataType::U8))
    } else {
        value_type(node.input(0)).or_else(|| zero_point.as_ref().map(|t| t.dtype()))
    };
    QParams {
        scale,
        zero_point,
        has_zero_point: zp_value.is_some(),
        qtype,
        axis: node.attr_int("axis").unwrap_or(1),
        block_size: node.attr_int("block_size").unwrap_or(0),
    }
}

/// The rank of a value (from its constant or its type).
pub fn rank(g: &Graph, v: ValueId) -> Option<usize> {
    constant(g, v).map(|t| t.rank()).or_else(|| g.tensor_type(v).and_then(|t| t.rank()))
}

/// Whether the graph holds any Q or DQ node.
pub fn has_qdq(g: &Graph) -> bool {
    g.node_ids().into_iter().any(|n| is_q(g, n) || is_dq(g, n))
}
