//! The graph: arenas of nodes and values, addressed by typed ids, with use lists kept by this
//! API only. Node order is kept as given (serialization order); passes that insert nodes say
//! where.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::attr::{AttrLookup, AttrValue, Attribute};
use super::ids::{NodeId, ValueId};
use super::types::Type;
use crate::tensor::Tensor;

/// A key/value entry of `metadata_props`; both sides may be absent in a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataEntry {
    pub key: Option<String>,
    pub value: Option<String>,
}

impl MetadataEntry {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> MetadataEntry {
        MetadataEntry { key: Some(key.into()), value: Some(value.into()) }
    }
}

/// Where a value comes from.
#[derive(Debug, Clone)]
pub enum ValueDef {
    /// A graph input without an initializer.
    Input,
    /// A constant (ONNX initializer). It may also be listed as a graph input (old IR versions).
    Initializer(Arc<Tensor>),
    /// Output `output` of a node.
    Node { node: NodeId, output: usize },
    /// Not defined in this graph: a subgraph's capture of an enclosing scope's value, or (in a
    /// top-level graph) a dangling reference the verifier reports.
    Outer,
    /// Its definition was removed.
    Detached,
}

/// A use of a value as input `input` of `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Use {
    pub node: NodeId,
    pub input: usize,
}

/// A value: one definition, any number of uses.
#[derive(Debug, Clone)]
pub struct Value {
    pub name: String,
    /// The declared or inferred type, if any.
    pub ty: Option<Type>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<MetadataEntry>,
    def: ValueDef,
    uses: Vec<Use>,
}

impl Value {
    pub fn def(&self) -> &ValueDef {
        &self.def
    }

    /// Node uses, in no particular order (graph outputs are not uses).
    pub fn uses(&self) -> &[Use] {
        &self.uses
    }

    /// The constant behind this value, if it is an initializer.
    pub fn initializer(&self) -> Option<&Arc<Tensor>> {
        match &self.def {
            ValueDef::Initializer(t) => Some(t),
            _ => None,
        }
    }

    /// The node producing this value, if any.
    pub fn producer(&self) -> Option<NodeId> {
        match self.def {
            ValueDef::Node { node, .. } => Some(node),
            _ => None,
        }
    }
}

/// Serialized fields no pass reads, carried untouched.
#[derive(Debug, Clone, Default)]
pub struct OpaqueFields {
    /// (ONNX field number, serialized message) in file order.
    pub messages: Vec<(u32, Bytes)>,
}

/// An operation.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: Option<String>,
    pub op_type: String,
    /// As written: `None` and `Some("")` both mean the default ONNX domain.
    pub domain: Option<String>,
    pub overload: Option<String>,
    pub attributes: Vec<Attribute>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<MetadataEntry>,
    pub opaque: OpaqueFields,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<Option<ValueId>>,
}

impl Node {
    /// The normalized domain: `""` for the default ONNX domain.
    pub fn domain(&self) -> &str {
        match self.domain.as_deref() {
            None | Some("ai.onnx") => "",
            Some(d) => d,
        }
    }

    /// Whether this is `op_type` of the default ONNX domain.
    pub fn is_onnx(&self, op_type: &str) -> bool {
        self.domain().is_empty() && self.op_type == op_type
    }

    /// Inputs; `None` is an omitted optional input (written as `""`).
    pub fn inputs(&self) -> &[Option<ValueId>] {
        &self.inputs
    }

    pub fn input(&self, i: usize) -> Option<ValueId> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn outputs(&self) -> &[Option<ValueId>] {
        &self.outputs
    }

    pub fn output(&self, i: usize) -> Option<ValueId> {
        self.outputs.get(i).copied().flatten()
    }

    /// A name for messages: the node's name, else its op type and id.
    pub fn label(&self, id: NodeId) -> String {
        match self.name.as_deref() {
            Some(n) if !n.is_empty() => format!("'{n}' ({})", self.op_type),
            _ => format!("{} {id}", self.op_type),
        }
    }

    /// Subgraphs held by attributes (If branches, Loop and Scan bodies…).
    pub fn subgraphs(&self) -> impl Iterator<Item = &Graph> {
        self.attributes.iter().flat_map(|a| match &a.value {
            AttrValue::Graph(g) => std::slice::from_ref(g.as_ref()).iter(),
            AttrValue::Graphs(gs) => gs.iter(),
            _ => [].iter(),
        })
    }

    pub fn subgraphs_mut(&mut self) -> impl Iterator<Item = &mut Graph> {
        self.attributes.iter_mut().flat_map(|a| match &mut a.value {
            AttrValue::Graph(g) => std::slice::from_mut(g.as_mut()).iter_mut(),
            AttrValue::Graphs(gs) => gs.iter_mut(),
            _ => [].iter_mut(),
        })
    }
}

impl AttrLookup for Node {
    fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.attributes.attr(name)
    }
}

/// What a new node looks like; `Graph::add_node` creates its output values.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    pub name: Option<String>,
    pub op_type: String,
    pub domain: Option<String>,
    pub inputs: Vec<Option<ValueId>>,
    /// Output names; an empty name is an omitted optional output.
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

impl NodeSpec {
    pub fn new(op_type: impl Into<String>) -> NodeSpec {
        NodeSpec { op_type: op_type.into(), ..NodeSpec::default() }
    }

    pub fn domain(mut self, d: impl Into<String>) -> NodeSpec {
        self.domain = Some(d.into());
        self
    }

    pub fn name(mut self, n: impl Into<String>) -> NodeSpec {
        self.name = Some(n.into());
        self
    }

    pub fn inputs(mut self, v: impl IntoIterator<Item = ValueId>) -> NodeSpec {
        self.inputs = v.into_iter().map(Some).collect();
        self
    }

    pub fn input_opt(mut self, v: Option<ValueId>) -> NodeSpec {
        self.inputs.push(v);
        self
    }

    pub fn outputs(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> NodeSpec {
        self.outputs = names.into_iter().map(Into::into).collect();
        self
    }

    pub fn attr(mut self, a: Attribute) -> NodeSpec {
        self.attributes.push(a);
        self
    }
}

/// A graph (the main graph, or a subgraph inside an attribute).
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: Option<String>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<MetadataEntry>,
    pub opaque: OpaqueFields,
    nodes: Vec<Option<Node>>,
    order: Vec<NodeId>,
    values: Vec<Value>,
    inputs: Vec<ValueId>,
    outputs: Vec<ValueId>,
    initializers: Vec<ValueId>,
    value_info: Vec<ValueId>,
    /// First definition of each name (imports may hold duplicates, which the verifier reports).
    by_name: HashMap<String, ValueId>,
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    // ---- values ----

    fn push_value(&mut self, name: String, ty: Option<Type>, def: ValueDef) -> ValueId {
        let id = ValueId::new(self.values.len());
        if !name.is_empty() {
            self.by_name.entry(name.clone()).or_insert(id);
        }
        self.values.push(Value { name, ty, doc_string: None, metadata_props: Vec::new(), def, uses: Vec::new() });
        id
    }

    /// Adds a graph input (appended to the input list).
    pub fn add_input(&mut self, name: impl Into<String>, ty: Option<Type>) -> ValueId {
        let id = self.push_value(name.into(), ty, ValueDef::Input);
        self.inputs.push(id);
        id
    }

    /// Adds an initializer (appended to the initializer list).
    pub fn add_initializer(&mut self, name: impl Into<String>, tensor: Arc<Tensor>) -> ValueId {
        let id = self.push_value(name.into(), None, ValueDef::Initializer(tensor));
        self.initializers.push(id);
        id
    }

    /// A value this graph uses but does not define (a capture from the enclosing scope).
    pub fn add_outer(&mut self, name: impl Into<String>) -> ValueId {
        self.push_value(name.into(), None, ValueDef::Outer)
    }

    /// Lists an existing value (an initializer, in old IR versions) as a graph input too.
    pub fn push_input(&mut self, v: ValueId) {
        self.inputs.push(v);
    }

    pub fn push_output(&mut self, v: ValueId) {
        self.outputs.push(v);
    }

    pub fn set_outputs(&mut self, outputs: Vec<ValueId>) {
        self.outputs = outputs;
    }

    pub fn set_inputs(&mut self, inputs: Vec<ValueId>) {
        self.inputs = inputs;
    }

    /// Records that `v` has a `value_info` entry.
    pub fn push_value_info(&mut self, v: ValueId) {
        self.value_info.push(v);
    }

    pub fn set_value_info(&mut self, list: Vec<ValueId>) {
        self.value_info = list;
    }

    /// Replaces the constant of an initializer value.
    pub fn set_initializer(&mut self, v: ValueId, tensor: Arc<Tensor>) {
        if let Some(val) = self.values.get_mut(v.index()) {
            if !matches!(val.def, ValueDef::Initializer(_)) {
                self.initializers.push(v);
            }
            val.def = ValueDef::Initializer(tensor);
        }
    }

    /// Drops unused initializers from the list and detaches them; returns how many.
    pub fn remove_initializers(&mut self, dead: &[ValueId]) -> usize {
        let before = self.initializers.len();
        self.initializers.retain(|v| !dead.contains(v));
        self.inputs.retain(|v| !dead.contains(v));
        for &v in dead {
            if let Some(val) = self.values.get_mut(v.index()) {
                val.def = ValueDef::Detached;
            }
        }
        before - self.initializers.len()
    }

    pub fn value(&self, v: ValueId) -> &Value {
        &self.values[v.index()]
    }

    pub fn value_mut(&mut self, v: ValueId) -> &mut Value {
        &mut self.values[v.index()]
    }

    /// Every value ever created in this graph, detached ones included.
    pub fn values(&self) -> impl Iterator<Item = (ValueId, &Value)> {
        self.values.iter().enumerate().map(|(i, v)| (ValueId::new(i), v))
    }

    pub fn value_count(&self) -> usize {
        self.values.len()
    }

    /// The first value defined with this name.
    pub fn find_value(&self, name: &str) -> Option<ValueId> {
        self.by_name.get(name).copied()
    }

    /// A name not used by any value of this graph, derived from `base`.
    pub fn fresh_name(&self, base: &str) -> String {
        if !self.by_name.contains_key(base) {
            return base.to_string();
        }
        (1..).map(|i| format!("{base}_{i}")).find(|n| !self.by_name.contains_key(n)).unwrap_or_default()
    }

    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[ValueId] {
        &self.outputs
    }

    pub fn initializers(&self) -> &[ValueId] {
        &self.initializers
    }

    pub fn value_info(&self) -> &[ValueId] {
        &self.value_info
    }

    pub fn is_output(&self, v: ValueId) -> bool {
        self.outputs.contains(&v)
    }

    /// Graph inputs that have no initializer (what a caller must feed).
    pub fn runtime_inputs(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.inputs.iter().copied().filter(|&v| matches!(self.value(v).def, ValueDef::Input))
    }

    // ---- nodes ----

    /// Adds a node at the end of the node order.
    pub fn add_node(&mut self, spec: NodeSpec) -> NodeId {
        let id = self.create_node(spec);
        self.order.push(id);
        id
    }

    /// Adds a node just before `anchor` in the node order.
    pub fn insert_node_before(&mut self, anchor: NodeId, spec: NodeSpec) -> NodeId {
        let id = self.create_node(spec);
        let pos = self.order.iter().position(|&n| n == anchor).unwrap_or(self.order.len());
        self.order.insert(pos, id);
        id
    }

    /// Adds a node just after `anchor` in the node order.
    pub fn insert_node_after(&mut self, anchor: NodeId, spec: NodeSpec) -> NodeId {
        let id = self.create_node(spec);
        let pos = self.order.iter().position(|&n| n == anchor).map_or(self.order.len(), |p| p + 1);
        self.order.insert(pos, id);
        id
    }

    fn create_node(&mut self, spec: NodeSpec) -> NodeId {
        let id = NodeId::new(self.nodes.len());
        let outputs = spec
            .outputs
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                if name.is_empty() {
                    None
                } else {
                    Some(self.push_value(name, None, ValueDef::Node { node: id, output: i }))
                }
            })
            .collect();
        for (i, input) in spec.inputs.iter().enumerate() {
            if let Some(v) = input {
                self.values[v.index()].uses.push(Use { node: id, input: i });
            }
        }
        self.nodes.push(Some(Node {
            name: spec.name,
            op_type: spec.op_type,
            domain: spec.domain,
            overload: None,
            attributes: spec.attributes,
            doc_string: None,
            metadata_props: Vec::new(),
            opaque: OpaqueFields::default(),
            inputs: spec.inputs,
            outputs,
        }));
        id
    }

    /// Declares that `node`'s output `index` is the existing value `v` (importers bind values
    /// referenced before their producer appears; passes rebind an output to keep a name). The
    /// value the node wrote there before, if any, is detached.
    pub fn bind_output(&mut self, node: NodeId, index: usize, v: ValueId) {
        if let Some(Some(n)) = self.nodes.get_mut(node.index()) {
            if n.outputs.len() <= index {
                n.outputs.resize(index + 1, None);
            }
            let previous = n.outputs[index].replace(v);
            if let Some(old) = previous.filter(|&old| old != v) {
                self.values[old.index()].def = ValueDef::Detached;
            }
            self.values[v.index()].def = ValueDef::Node { node, output: index };
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        // Ids come from this graph; a removed node is a logic error in a pass.
        self.nodes[id.index()].as_ref().expect("node was removed")
    }

    /// The node, if it still exists.
    pub fn get_node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.index()).and_then(Option::as_ref)
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id.index()].as_mut().expect("node was removed")
    }

    /// Live nodes in order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.order.iter().filter_map(|&id| self.get_node(id).map(|n| (id, n)))
    }

    /// Ids of live nodes in order (a snapshot, so the graph can change while iterating).
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.order.clone()
    }

    pub fn node_count(&self) -> usize {
        self.order.len()
    }

    /// Sets input `index` of `node` (growing the input list if needed), keeping use lists.
    pub fn set_input(&mut self, node: NodeId, index: usize, v: Option<ValueId>) {
        let old = {
            let n = self.node_mut(node);
            if n.inputs.len() <= index {
                n.inputs.resize(index + 1, None);
            }
            std::mem::replace(&mut n.inputs[index], v)
        };
        if let Some(o) = old {
            self.values[o.index()].uses.retain(|u| !(u.node == node && u.input == index));
        }
        if let Some(nv) = v {
            self.values[nv.index()].uses.push(Use { node, input: index });
        }
    }

    /// Truncates the input list of `node` to `len` entries.
    pub fn truncate_inputs(&mut self, node: NodeId, len: usize) {
        let n = self.node(node).inputs.len();
        for i in (len..n).rev() {
            self.set_input(node, i, None);
        }
        self.node_mut(node).inputs.truncate(len);
    }

    /// Redirects every node use of `old` to `new` (graph outputs are left alone).
    pub fn replace_uses(&mut self, old: ValueId, new: ValueId) -> usize {
        let uses = std::mem::take(&mut self.values[old.index()].uses);
        for u in &uses {
            self.node_mut(u.node).inputs[u.input] = Some(new);
        }
        let n = uses.len();
        self.values[new.index()].uses.extend(uses);
        n
    }

    /// Redirects graph outputs from `old` to `new`.
    pub fn replace_output(&mut self, old: ValueId, new: ValueId) {
        for o in &mut self.outputs {
            if *o == old {
                *o = new;
            }
        }
    }

    /// Removes a node: its inputs lose this use, its outputs become detached.
    pub fn remove_node(&mut self, id: NodeId) -> Option<Node> {
        let node = self.nodes.get_mut(id.index())?.take()?;
        self.order.retain(|&n| n != id);
        for v in node.inputs.iter().flatten() {
            self.values[v.index()].uses.retain(|u| u.node != id);
        }
        for v in node.outputs.iter().flatten() {
            self.values[v.index()].def = ValueDef::Detached;
        }
        Some(node)
    }

    /// Replaces the node order (for a topological re-sort); must hold every live node once.
    pub fn set_order(&mut self, order: Vec<NodeId>) {
        self.order = order;
    }

    /// Nodes of this graph, then of every subgraph, recursively, mutably.
    pub fn visit_graphs_mut(&mut self, f: &mut dyn FnMut(&mut Graph)) {
        f(self);
        for slot in self.nodes.iter_mut().flatten() {
            for g in slot.subgraphs_mut() {
                g.visit_graphs_mut(f);
            }
        }
    }

    /// This graph and every subgraph, recursively.
    pub fn visit_graphs(&self, f: &mut dyn FnMut(&Graph)) {
        f(self);
        for (_, n) in self.nodes() {
            for g in n.subgraphs() {
                g.visit_graphs(f);
            }
        }
    }

    /// The dense tensor type of a value, if declared or inferred.
    pub fn tensor_type(&self, v: ValueId) -> Option<&super::types::TensorType> {
        self.value(v).ty.as_ref()?.as_tensor()
    }

    /// Names that subgraphs of `node` read from enclosing scopes (at any depth), in order.
    pub fn captured_names(node: &Node) -> Vec<String> {
        let mut out = Vec::new();
        for g in node.subgraphs() {
            g.collect_free_names(&mut out);
        }
        out
    }

    fn collect_free_names(&self, out: &mut Vec<String>) {
        for (_, v) in self.values() {
            if matches!(v.def, ValueDef::Outer) && !v.uses.is_empty() && !out.contains(&v.name) {
                out.push(v.name.clone());
            }
        }
        for (_, v) in self.outputs.iter().map(|&o| (o, self.value(o))) {
            if matches!(v.def, ValueDef::Outer) && !out.contains(&v.name) {
                out.push(v.name.clone());
            }
        }
        for (_, n) in self.nodes() {
            for g in n.subgraphs() {
                let mut inner = Vec::new();
                g.collect_free_names(&mut inner);
                for name in inner {
                    // Defined here? Then it is not free beyond this graph.
                    let defined_here =
                        self.find_value(&name).is_some_and(|id| !matches!(self.value(id).def, ValueDef::Outer));
                    if !defined_here && !out.contains(&name) {
                        out.push(name);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DataType;
    use crate::ir::types::TensorType;

    fn tiny() -> (Graph, ValueId, NodeId, NodeId) {
        let mut g = Graph::new();
        let x = g.add_input("x", Some(Type::tensor(TensorType::with_dims(DataType::F32, &[2]))));
        let a = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["a"]));
        let av = g.node(a).output(0).unwrap();
        let b = g.add_node(NodeSpec::new("Neg").inputs([av]).outputs(["y"]));
        let y = g.node(b).output(0).unwrap();
        g.push_output(y);
        (g, x, a, b)
    }

    #[test]
    fn use_lists_follow_edits() {
        let (mut g, x, a, b) = tiny();
        let av = g.node(a).output(0).unwrap();
        assert_eq!(g.value(x).uses(), &[Use { node: a, input: 0 }]);
        assert_eq!(g.value(av).uses(), &[Use { node: b, input: 0 }]);
        // Bypass the Relu.
        assert_eq!(g.replace_uses(av, x), 1);
        assert!(g.value(av).uses().is_empty());
        assert_eq!(g.value(x).uses().len(), 2);
        g.remove_node(a);
        assert_eq!(g.value(x).uses(), &[Use { node: b, input: 0 }]);
        assert!(matches!(g.value(av).def(), ValueDef::Detached));
        assert_eq!(g.nodes().count(), 1);
    }

    #[test]
    fn rebinding_an_output_detaches_the_old_value() {
        let (mut g, _, a, _) = tiny();
        let old = g.node(a).output(0).unwrap();
        let keep = g.add_outer("kept_name");
        g.bind_output(a, 0, keep);
        assert_eq!(g.node(a).output(0), Some(keep));
        assert!(matches!(g.value(old).def(), ValueDef::Detached));
        assert!(matches!(g.value(keep).def(), ValueDef::Node { output: 0, .. }));
    }

    #[test]
    fn fresh_names_are_unique() {
        let (g, ..) = tiny();
        assert_eq!(g.fresh_name("z"), "z");
        assert_eq!(g.fresh_name("a"), "a_1");
    }

    #[test]
    fn set_input_keeps_uses() {
        let (mut g, x, _a, b) = tiny();
        g.set_input(b, 1, Some(x));
        assert_eq!(g.node(b).inputs().len(), 2);
        assert!(g.value(x).uses().contains(&Use { node: b, input: 1 }));
        g.truncate_inputs(b, 1);
        assert!(!g.value(x).uses().contains(&Use { node: b, input: 1 }));
    }
}
