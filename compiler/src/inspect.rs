//! A summary of a model for people and tools: opsets, I/O, op histogram, parameters,
//! external files and subgraphs.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ir::{AttrValue, Graph, Model, ValueDef};
use crate::tensor::{Tensor, TensorEncoding};
use crate::verify::{Problem, verify_model};

#[derive(Debug, Clone, Serialize)]
pub struct IoSummary {
    pub name: String,
    /// The type as text (`f32[N,3,224,224]`), or `?` when undeclared.
    pub r#type: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DtypeStats {
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExternalFileSummary {
    pub location: String,
    pub tensors: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubgraphSummary {
    /// `'loop1' (Loop).body`, nested paths joined with `/`.
    pub path: String,
    pub nodes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub ir_version: Option<i64>,
    pub producer: String,
    pub opsets: BTreeMap<String, i64>,
    pub inputs: Vec<IoSummary>,
    pub outputs: Vec<IoSummary>,
    /// Nodes of the main graph and every subgraph.
    pub nodes: usize,
    /// `op_type` (prefixed `domain.` outside the default domain) → count, subgraphs included.
    pub op_histogram: BTreeMap<String, usize>,
    /// Total elements of all initializers and constant attributes.
    pub parameters: u64,
    pub parameter_bytes: u64,
    pub by_dtype: BTreeMap<String, DtypeStats>,
    pub external_files: Vec<ExternalFileSummary>,
    pub subgraphs: Vec<SubgraphSummary>,
    pub functions: Vec<String>,
    pub problems: Vec<Problem>,
}

/// Summarizes a model.
pub fn summarize(model: &Model) -> ModelSummary {
    let mut s = ModelSummary {
        ir_version: model.ir_version,
        producer: format!(
            "{} {}",
            model.producer_name.as_deref().unwrap_or(""),
            model.producer_version.as_deref().unwrap_or("")
        )
        .trim()
        .to_string(),
        opsets: model
            .opset_import
            .iter()
            .map(|o| {
                (
                    if o.domain().is_empty() { "ai.onnx".to_string() } else { o.domain().to_string() },
                    o.version.unwrap_or(0),
                )
            })
            .collect(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        nodes: 0,
        op_histogram: BTreeMap::new(),
        parameters: 0,
        parameter_bytes: 0,
        by_dtype: BTreeMap::new(),
        external_files: Vec::new(),
        subgraphs: Vec::new(),
        functions: model
            .functions
            .iter()
            .map(|f| format!("{}.{}", f.domain.as_deref().unwrap_or(""), f.name.as_deref().unwrap_or("")))
            .collect(),
        problems: verify_model(model),
    };
    if let Some(g) = &model.graph {
        let io = |v| IoSummary {
            name: g.value(v).name.clone(),
            r#type: g.value(v).ty.as_ref().map_or_else(|| "?".to_string(), ToString::to_string),
        };
        s.inputs = g.runtime_inputs().map(io).collect();
        s.outputs = g.outputs().iter().map(|&v| io(v)).collect();
        let mut files: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        walk(g, "", &mut s, &mut files);
        s.external_files = files
            .into_iter()
            .map(|(location, (tensors, bytes))| ExternalFileSummary { location, tensors, bytes })
            .collect();
    }
    s
}

fn count_tensor(t: &Tensor, s: &mut ModelSummary, files: &mut BTreeMap<String, (usize, u64)>) {
    s.parameters += t.len();
    s.parameter_bytes += t.byte_size();
    let e = s.by_dtype.entry(t.dtype().name().to_string()).or_default();
    e.tensors += 1;
    e.elements += t.len();
    e.bytes += t.byte_size();
    if let Some(TensorEncoding::External { entries }) = &t.hints.encoding
        && let Some(loc) = entries.iter().find(|(k, _)| k.as_deref() == Some("location")).and_then(|(_, v)| v.clone())
    {
        let f = files.entry(loc).or_default();
        f.0 += 1;
        f.1 += t.byte_size();
    }
}

fn walk(g: &Graph, path: &str, s: &mut ModelSummary, files: &mut BTreeMap<String, (usize, u64)>) {
    for &v in g.initializers() {
        if let ValueDef::Initializer(t) = g.value(v).def() {
            count_tensor(t, s, files);
        }
    }
    for (id, n) in g.nodes() {
        s.nodes += 1;
        let key = if n.domain().is_empty() { n.op_type.clone() } else { format!("{}.{}", n.domain(), n.op_type) };
        *s.op_histogram.entry(key).or_default() += 1;
        for a in &n.attributes {
            match &a.value {
                AttrValue::Tensor(t) => count_tensor(t, s, files),
                AttrValue::Tensors(ts) => ts.iter().for_each(|t| count_tensor(t, s, files)),
                AttrValue::Graph(sg) => {
                    let p = format!("{path}{}.{}", n.label(id), a.name);
                    s.subgraphs.push(SubgraphSummary { path: p.clone(), nodes: sg.node_count() });
                    walk(sg, &format!("{p}/"), s, files);
                }
                AttrValue::Graphs(gs) => {
                    for (i, sg) in gs.iter().enumerate() {
                        let p = format!("{path}{}.{}[{i}]", n.label(id), a.name);
                        s.subgraphs.push(SubgraphSummary { path: p.clone(), nodes: sg.node_count() });
                        walk(sg, &format!("{p}/"), s, files);
                    }
                }
                _ => {}
            }
        }
    }
}
