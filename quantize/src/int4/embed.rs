//! Embedding tables as `com.microsoft.GatherBlockQuantized`: a `Gather` along axis 0 of a large
//! constant f32 table `[V, D]` becomes a gather of 4-bit codes blocked along `D`, dequantized as
//! it is read. ONNX Runtime 1.31's CPU kernel takes the `MatMulNBits` conventions: `uint8` data
//! `[V, D/2]` (two codes a byte, low nibble first), f32 scales `[V, ⌈D/block⌉]`, and either no
//! zero point (the implicit 8 of a symmetric block) or packed 4-bit zero points
//! `[V, ⌈blocks/2⌉]`.

use std::sync::Arc;

use bytes::Bytes;
use kiln_compiler::ir::{AttrLookup, Attribute, Graph, NodeId, NodeSpec, ValueId};
use kiln_compiler::{DataType, Tensor};

use super::Int4Error;
use super::block::{BlockQuantized, QuantSpec, RowMajor, matmul_nbits_zero_points, pack, rtn};
use super::select::{constant, node_name};

/// Tables with fewer values stay in float: position and token-type tables are a few hundred
/// KB, and rounding them buys nothing worth their error.
pub const MIN_TABLE_VALUES: u64 = 1 << 16;

/// What happened to one embedding table.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingReport {
    /// The `Gather` node.
    pub node: String,
    pub rows: usize,
    pub dim: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A `Gather` whose table can be quantized.
struct Table {
    node: NodeId,
    name: String,
    data: ValueId,
    tensor: Arc<Tensor>,
}

/// Why a `Gather` keeps its float table, or the table.
fn examine(g: &Graph, id: NodeId) -> Result<Option<Table>, String> {
    let node = g.node(id);
    if !node.is_onnx("Gather") {
        return Ok(None);
    }
    let (Some(data), Some(_)) = (node.input(0), node.input(1)) else { return Ok(None) };
    let Some(tensor) = constant(g, data) else { return Ok(None) };
    if tensor.dtype() != DataType::F32 || tensor.rank() != 2 || tensor.len() < MIN_TABLE_VALUES {
        return Ok(None);
    }
    if node.attr_int("axis").unwrap_or(0) != 0 {
        return Err("fp32 (embedding gathered along axis 1, not along rows)".into());
    }
    if tensor.dims()[1] % 2 != 0 {
        return Err(format!("fp32 (embedding width {} is odd: 4-bit codes pack in pairs)", tensor.dims()[1]));
    }
    let others = g.value(data).uses().iter().filter(|u| u.node != id).count();
    if others > 0 || g.is_output(data) {
        return Err("fp32 (embedding table is read by other nodes too)".into());
    }
    Ok(Some(Table { node: id, name: node_name(g, id), data, tensor }))
}

/// The tables rewritten, and the `Gather`s left alone with why.
pub type EmbeddingOutcome = (Vec<EmbeddingReport>, Vec<(String, String)>);

/// Quantizes every large embedding table of the main graph not named in `exclude`.
pub fn quantize_embeddings(
    g: &mut Graph,
    block: usize,
    symmetric: bool,
    exclude: &[String],
) -> Result<EmbeddingOutcome, Int4Error> {
    let mut tables = Vec::new();
    let mut skipped = Vec::new();
    for (id, node) in g.nodes() {
        let name = node_name(g, id);
        let excluded = exclude.iter().any(|e| *e == name || *e == node.op_type);
        match examine(g, id) {
            Ok(Some(_)) if excluded => skipped.push((name, "fp32 (excluded)".into())),
            Ok(Some(t)) => tables.push(t),
            Ok(None) => {}
            Err(why) => skipped.push((name, why)),
        }
    }
    let mut reports = Vec::new();
    let mut dead = Vec::new();
    for t in tables {
        let (rows, dim) = (t.tensor.dims()[0], t.tensor.dims()[1]);
        let values =
            t.tensor.to_vec::<f32>().map_err(|e| Int4Error::Weight { node: t.name.clone(), message: e.to_string() })?;
        let spec = QuantSpec { bits: 4, block, symmetric, negative_scales: true };
        let q = rtn(&RowMajor { n: rows, k: dim, values }, spec, None);
        let bytes_after = emit(g, &t, &q)?;
        reports.push(EmbeddingReport { node: t.name, rows, dim, bytes_before: t.tensor.byte_size(), bytes_after });
        dead.push(t.data);
    }
    super::emit::drop_dead_weights(g, &dead);
    Ok((reports, skipped))
}

fn tensor(dtype: DataType, dims: Vec<usize>, bytes: Vec<u8>) -> Result<Arc<Tensor>, Int4Error> {
    Tensor::new(dtype, dims, Bytes::from(bytes)).map(Arc::new).map_err(|e| Int4Error::Internal(e.to_string()))
}

/// The `GatherBlockQuantized` inputs of a quantized table: packed codes, scales and (when
/// asymmetric) packed zero points, as `(dtype, dims, bytes)`.
pub fn gather_block_quantized_inputs(q: &BlockQuantized) -> Vec<(DataType, Vec<usize>, Vec<u8>)> {
    let kb = q.k_blocks();
    let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut inputs =
        vec![(DataType::U8, vec![q.n, q.k / 2], pack(&q.codes, 4)), (DataType::F32, vec![q.n, kb], scales)];
    if let Some(z) = matmul_nbits_zero_points(q) {
        let cols = z.len() / q.n.max(1);
        inputs.push((DataType::U8, vec![q.n, cols], z));
    }
    inputs
}

/// Replaces the table's `Gather` by `GatherBlockQuantized` on the same indices and output;
/// returns the bytes of its new constants.
fn emit(g: &mut Graph, t: &Table, q: &BlockQuantized) -> Result<u64, Int4Error> {
    let node = g.node(t.node);
    let indices = node.input(1).ok_or_else(|| Int4Error::Internal(format!("{} has no indices", t.name)))?;
    let out = node.output(0).ok_or_else(|| Int4Error::Internal(format!("{} has no output", t.name)))?;
    let base = g.value(t.data).name.clone();
    let mut bytes = 0u64;
    let mut ids = Vec::new();
    for (i, (dtype, dims, data)) in gather_block_quantized_inputs(q).into_iter().enumerate() {
        bytes += data.len() as u64;
        let suffix = ["q4", "scales", "zero_points"][i];
        let name = g.fresh_name(&format!("{base}_{suffix}"));
        ids.push(g.add_initializer(name, tensor(dtype, dims, data)?));
    }
    let mut inputs = vec![ids[0], indices, ids[1]];
    inputs.extend(ids.get(2));
    let spec = NodeSpec::new("GatherBlockQuantized")
        .domain("com.microsoft")
        .name(t.name.clone())
        .inputs(inputs)
        .outputs([g.fresh_name(&format!("{}_out", t.name))])
        .attr(Attribute::int("gather_axis", 0))
        .attr(Attribute::int("quantize_axis", 1))
        .attr(Attribute::int("block_size", q.spec.block as i64))
        .attr(Attribute::int("bits", 4));
    let new = g.insert_node_before(t.node, spec);
    g.remove_node(t.node);
    g.bind_output(new, 0, out);
    Ok(bytes)
}
