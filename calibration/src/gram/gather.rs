//! Large constant tables gathered by a model input (word embeddings: `Gather(table, input_ids)`).
//! For Gram matrices the runtime would copy the whole table into its session (for MiniLM, 47 of
//! its 69 MB, copied twice while loading) to read a few rows per sample. Instead the node is
//! taken out of the session's model and Kiln gathers the rows itself, feeding them as an input:
//! the runtime's `Gather` copies rows as they are, so every activation, and every Gram matrix,
//! is the same.

use std::sync::Arc;

use bytes::Bytes;
use kiln_compiler::ir::{AttrLookup, Model, NodeId, TensorType, Type, ValueDef};
use kiln_compiler::{DataType, Tensor};

use crate::collect::CalibError;
use crate::data::Sample;

/// A `Gather` Kiln computes on the host for the runtime.
#[derive(Debug)]
pub(super) struct HostGather {
    /// The model input holding the indices.
    indices: String,
    /// The input that takes the gathered rows' place.
    input: String,
    table: Arc<Tensor>,
}

/// Takes out of `model`'s main graph every `Gather` along axis 0 of a constant table of at least
/// `min_bytes` whose indices are a graph input and whose output is not a graph output; the table
/// goes too once nothing else reads it.
pub(super) fn host_gathers(model: &mut Model, min_bytes: u64) -> Vec<HostGather> {
    let Some(g) = model.graph.as_mut() else { return Vec::new() };
    let candidates: Vec<NodeId> =
        g.nodes().filter(|(_, n)| n.is_onnx("Gather") && n.inputs().len() == 2).map(|(id, _)| id).collect();
    let mut found = Vec::new();
    for id in candidates {
        let node = g.node(id);
        let (Some(t), Some(ix), Some(out)) = (node.input(0), node.input(1), node.output(0)) else { continue };
        let Some(table) = g.value(t).initializer().cloned() else { continue };
        let axis = node.attr_int("axis").unwrap_or(0);
        let rank = table.rank() as i64;
        if rank == 0 || (axis != 0 && axis != -rank) || table.byte_size() < min_bytes || table.bytes().is_none() {
            continue;
        }
        let index_type = g.value(ix).ty.as_ref().and_then(|t| t.as_tensor()).and_then(|t| t.dtype());
        if !matches!(g.value(ix).def(), ValueDef::Input)
            || !matches!(index_type, Some(DataType::I64 | DataType::I32))
            || g.outputs().contains(&out)
        {
            continue;
        }
        let indices = g.value(ix).name.clone();
        let input = g.fresh_name(&format!("{}.gathered", g.value(out).name));
        // Declared without a shape: whatever shape inference said of the output, the runtime
        // takes the rows Kiln gathers.
        let new = g.add_input(input.clone(), Some(Type::tensor(TensorType::new(table.dtype(), None))));
        g.replace_uses(out, new);
        g.remove_node(id);
        let info: Vec<_> = g.value_info().iter().copied().filter(|&v| v != out).collect();
        g.set_value_info(info);
        if g.value(t).uses().is_empty() && !g.outputs().contains(&t) {
            g.remove_initializers(&[t]);
        }
        found.push(HostGather { indices, input, table });
    }
    found
}

impl HostGather {
    /// The input to feed for `sample`: the table's rows at the sample's indices (negative ones
    /// counting from the end, as `Gather` does).
    pub(super) fn gather(&self, sample: &Sample) -> Result<(String, Tensor), CalibError> {
        let err = |m: String| CalibError::Model(format!("{}: {m}", sample.origin));
        let (_, ix) = sample
            .inputs
            .iter()
            .find(|(n, _)| *n == self.indices)
            .ok_or_else(|| err(format!("no value for input `{}`", self.indices)))?;
        let indices: Vec<i64> = match ix.dtype() {
            DataType::I64 => ix.to_vec::<i64>(),
            DataType::I32 => ix.to_vec::<i32>().map(|v| v.into_iter().map(i64::from).collect()),
            other => return Err(err(format!("input `{}` is {other}, not an integer index", self.indices))),
        }
        .map_err(|e| err(format!("input `{}`: {e}", self.indices)))?;
        let dims = self.table.dims();
        let rows = dims[0];
        let data = self.table.bytes().map(|b| &b[..]).unwrap_or(&[]);
        let row_bytes = data.len().checked_div(rows).unwrap_or(0);
        let mut out = Vec::with_capacity(indices.len() * row_bytes);
        for &i in &indices {
            let j = if i < 0 { i + rows as i64 } else { i };
            if !(0..rows as i64).contains(&j) {
                return Err(err(format!(
                    "index {i} in input `{}` is outside the {rows} rows of the table it gathers from",
                    self.indices
                )));
            }
            let j = j as usize;
            out.extend_from_slice(&data[j * row_bytes..(j + 1) * row_bytes]);
        }
        let shape: Vec<usize> = ix.dims().iter().chain(&dims[1..]).copied().collect();
        let t = Tensor::new(self.table.dtype(), shape, Bytes::from(out)).map_err(|e| err(e.to_string()))?;
        Ok((self.input.clone(), t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Distribution, SampleSource, Synthetic, SyntheticSpec, model_inputs};
    use crate::gram::{GramOptions, collect_grams};
    use kiln_compiler::ir::{Graph, NodeSpec};
    use kiln_compiler::runtime::OrtExecutor;

    /// ids i64[2, 3] → Gather(table f32[40, 4]) → Relu → h → MatMul → y; with `through_identity`
    /// the ids reach the Gather through an Identity.
    fn embedding(through_identity: bool) -> Model {
        let mut g = Graph::new();
        let ids = g.add_input("ids", Some(Type::tensor(TensorType::with_dims(DataType::I64, &[2, 3]))));
        let values: Vec<f32> = (0..160).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let table = g.add_initializer("table", Arc::new(Tensor::from_slice(vec![40, 4], &values).unwrap()));
        let w = Tensor::from_slice(vec![4, 2], &[1.0f32, 0.5, -1.0, 2.0, 0.25, -0.5, 1.5, 1.0]).unwrap();
        let w = g.add_initializer("w", Arc::new(w));
        let ix = if through_identity {
            let n = g.add_node(NodeSpec::new("Identity").inputs([ids]).outputs(["ids2"]));
            g.node(n).output(0).unwrap()
        } else {
            ids
        };
        let e = g.add_node(NodeSpec::new("Gather").inputs([table, ix]).outputs(["e"]));
        let e = g.node(e).output(0).unwrap();
        let h = g.add_node(NodeSpec::new("Relu").inputs([e]).outputs(["h"]));
        let h = g.node(h).output(0).unwrap();
        let y = g.add_node(NodeSpec::new("MatMul").inputs([h, w]).outputs(["y"]));
        let y = g.node(y).output(0).unwrap();
        g.push_output(y);
        Model::of_graph(g, 17)
    }

    fn ids(low: i64, high: i64, seed: u64) -> Synthetic {
        let spec = SyntheticSpec {
            samples: 5,
            seed,
            values: [("ids".to_string(), Distribution::Integers { low, high })].into(),
            ..Default::default()
        };
        Synthetic::new(&model_inputs(&embedding(false)).unwrap(), &spec).unwrap()
    }

    #[test]
    fn a_table_gathered_by_an_input_leaves_the_session_model() {
        let mut m = embedding(false);
        // Below the size threshold: untouched.
        assert!(host_gathers(&mut m, 1 << 20).is_empty());
        let gathers = host_gathers(&mut m, 0);
        assert_eq!(gathers.len(), 1);
        let g = m.graph.as_ref().unwrap();
        assert!(!g.nodes().any(|(_, n)| n.is_onnx("Gather")));
        assert!(g.find_value("table").is_none_or(|t| g.value(t).initializer().is_none()));
        assert!(!g.initializers().iter().any(|&v| g.value(v).name == "table"));
        let names: Vec<&str> = g.inputs().iter().map(|&v| g.value(v).name.as_str()).collect();
        assert_eq!(names, ["ids", "e.gathered"]);
        // The indices come through another node: left to the runtime.
        let mut m = embedding(true);
        assert!(host_gathers(&mut m, 0).is_empty());
        // The gathered rows are a requested output: left to the runtime.
        let mut m = embedding(false);
        if let Some(g) = m.graph.as_mut() {
            let e = g.find_value("e").unwrap();
            g.set_outputs(vec![e]);
        }
        assert!(host_gathers(&mut m, 0).is_empty());
    }

    #[test]
    fn host_gathered_rows_give_the_same_gram_matrices() {
        // Negative indices count from the end, as in the runtime's Gather.
        let src = ids(-40, 40, 3);
        let collect = |host_gather_bytes| {
            let mut got = Vec::new();
            let options = GramOptions { host_gather_bytes, ..GramOptions::default() };
            let names = [("h".to_string(), 4)];
            collect_grams(&OrtExecutor::new(), &embedding(false), None, &src, &names, &options, &mut |g| {
                got.extend(g);
                Ok(())
            })
            .unwrap();
            got
        };
        let (host, runtime) = (collect(0), collect(u64::MAX));
        assert_eq!(host, runtime);
        assert_eq!(host[0].rows, 30);
        assert!(host[0].xtx.iter().any(|&v| v != 0.0));
        // Other rows, other matrices: the comparison can fail. (With this seed, `0..40` would
        // draw the very rows `-40..40` does, each index 40 apart from its twin.)
        let other = {
            let mut got = Vec::new();
            collect_grams(
                &OrtExecutor::new(),
                &embedding(false),
                None,
                &ids(0, 40, 4),
                &[("h".to_string(), 4)],
                &GramOptions { host_gather_bytes: 0, ..GramOptions::default() },
                &mut |g| {
                    got.extend(g);
                    Ok(())
                },
            )
            .unwrap();
            got
        };
        assert_ne!(other, host);
    }

    #[test]
    fn an_index_past_the_table_names_the_sample() {
        let src = ids(40, 42, 3);
        let mut m = embedding(false);
        let gathers = host_gathers(&mut m, 0);
        let err = gathers[0].gather(&src.read(0).unwrap()).unwrap_err().to_string();
        assert!(err.contains(&src.origin(0)) && err.contains("outside the 40 rows"), "{err}");
        // In range: the rows themselves.
        let src = ids(0, 40, 3);
        let s = src.read(0).unwrap();
        let (name, t) = gathers[0].gather(&s).unwrap();
        assert_eq!((name.as_str(), t.dims()), ("e.gathered", &[2usize, 3, 4][..]));
        let table: Vec<f32> = gathers[0].table.to_vec().unwrap();
        let rows: Vec<f32> = t.to_vec().unwrap();
        for (i, &ix) in s.inputs[0].1.to_vec::<i64>().unwrap().iter().enumerate() {
            let ix = ix as usize;
            assert_eq!(rows[i * 4..(i + 1) * 4], table[ix * 4..(ix + 1) * 4]);
        }
    }
}
