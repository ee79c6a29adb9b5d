//! A transactional rewrite: a rule describes new nodes and initializers, which values they
//! replace and which nodes go away; `apply` checks the whole description against the graph
//! first (liveness, leftover uses, arity, element types) and only then edits it, so a rejected
//! patch leaves the graph exactly as it was.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_compiler::DataType;
use kiln_compiler::ir::{AttrLookup, Attribute, Graph, NodeId, NodeSpec, ValueDef, ValueId};
use kiln_compiler::tensor::Tensor;

/// A value a patch refers to: one already in the graph, a new initializer, or an output of a
/// new node (by its index in the patch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PValue {
    Existing(ValueId),
    Init(usize),
    Node { node: usize, output: usize },
}

impl From<ValueId> for PValue {
    fn from(v: ValueId) -> PValue {
        PValue::Existing(v)
    }
}

/// What a new node's output slot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewOutput {
    /// A new value; the name is made unique in the graph.
    Fresh(String),
    /// Takes over an output of a removed node: its id, name, type and uses stay.
    Reuse(ValueId),
    /// An omitted optional output.
    Omitted,
}

/// A node to add.
#[derive(Debug, Clone)]
pub struct NewNode {
    pub op_type: String,
    /// `""` for the default ONNX domain.
    pub domain: String,
    pub name: Option<String>,
    pub inputs: Vec<Option<PValue>>,
    pub outputs: Vec<NewOutput>,
    pub attributes: Vec<Attribute>,
}

impl NewNode {
    /// A node of the default ONNX domain.
    pub fn onnx(op_type: &str) -> NewNode {
        NewNode::in_domain("", op_type)
    }

    /// A node of ONNX Runtime's `com.microsoft` domain.
    pub fn ms(op_type: &str) -> NewNode {
        NewNode::in_domain(MS_DOMAIN, op_type)
    }

    pub fn in_domain(domain: &str, op_type: &str) -> NewNode {
        NewNode {
            op_type: op_type.to_string(),
            domain: domain.to_string(),
            name: None,
            inputs: Vec::new(),
            outputs: Vec::new(),
            attributes: Vec::new(),
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> NewNode {
        self.name = Some(name.into());
        self
    }

    pub fn input(mut self, v: impl Into<PValue>) -> NewNode {
        self.inputs.push(Some(v.into()));
        self
    }

    pub fn input_opt(mut self, v: Option<PValue>) -> NewNode {
        self.inputs.push(v);
        self
    }

    pub fn attr(mut self, a: Attribute) -> NewNode {
        self.attributes.push(a);
        self
    }

    pub fn attrs(mut self, a: impl IntoIterator<Item = Attribute>) -> NewNode {
        self.attributes.extend(a);
        self
    }

    /// Output slot that takes over `v` (an output of a removed node).
    pub fn reuse(mut self, v: ValueId) -> NewNode {
        self.outputs.push(NewOutput::Reuse(v));
        self
    }

    pub fn fresh(mut self, name: impl Into<String>) -> NewNode {
        self.outputs.push(NewOutput::Fresh(name.into()));
        self
    }

    pub fn omitted(mut self) -> NewNode {
        self.outputs.push(NewOutput::Omitted);
        self
    }
}

/// ONNX Runtime's contrib operator domain.
pub const MS_DOMAIN: &str = "com.microsoft";

/// A rewrite, described before anything changes.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    inits: Vec<(String, Arc<Tensor>)>,
    nodes: Vec<NewNode>,
    remove: Vec<NodeId>,
    redirects: Vec<(ValueId, PValue)>,
    domains: Vec<(String, i64)>,
    detail: String,
}

/// What applying a patch did, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    /// Nodes removed: the matched ones plus those that only fed them.
    pub removed: usize,
    pub initializers_added: usize,
    pub initializers_removed: usize,
    pub detail: String,
    /// Operator set imports the new nodes need (domain, version).
    pub domains: Vec<(String, i64)>,
}

impl Patch {
    pub fn new() -> Patch {
        Patch::default()
    }

    /// A line for the report (what was fused into what).
    pub fn detail(mut self, d: impl Into<String>) -> Patch {
        self.detail = d.into();
        self
    }

    pub fn set_detail(&mut self, d: impl Into<String>) {
        self.detail = d.into();
    }

    /// Adds an initializer; `base` is made unique.
    pub fn initializer(&mut self, base: impl Into<String>, t: Tensor) -> PValue {
        self.inits.push((base.into(), Arc::new(t)));
        PValue::Init(self.inits.len() - 1)
    }

    /// Adds a node; returns its index (use [`Patch::out`] for its outputs).
    pub fn node(&mut self, n: NewNode) -> usize {
        if n.domain == MS_DOMAIN && !self.domains.iter().any(|(d, _)| d == MS_DOMAIN) {
            self.domains.push((MS_DOMAIN.to_string(), 1));
        }
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    /// Output `output` of new node `node`.
    pub fn out(node: usize, output: usize) -> PValue {
        PValue::Node { node, output }
    }

    /// Removes matched nodes. Nodes that only fed them go too (see `apply`).
    pub fn remove(&mut self, nodes: impl IntoIterator<Item = NodeId>) {
        for n in nodes {
            if !self.remove.contains(&n) {
                self.remove.push(n);
            }
        }
    }

    /// Every use of `old` (an output of a removed node), graph outputs included, reads `new`.
    pub fn redirect(&mut self, old: ValueId, new: impl Into<PValue>) {
        self.redirects.push((old, new.into()));
    }

    pub fn nodes(&self) -> &[NewNode] {
        &self.nodes
    }

    pub fn removed(&self) -> &[NodeId] {
        &self.remove
    }

    /// Checks the patch against `g` and applies it, or changes nothing and says why.
    pub fn apply(self, g: &mut Graph) -> Result<Applied, String> {
        let plan = self.check(g)?;
        Ok(self.commit(g, plan))
    }

    fn check(&self, g: &Graph) -> Result<Plan, String> {
        let captured = captured_values(g);
        let removed: HashSet<NodeId> = self.remove.iter().copied().collect();
        for &n in &self.remove {
            if g.get_node(n).is_none() {
                return Err(format!("node {n} to remove is gone"));
            }
            if g.node(n).subgraphs().next().is_some() {
                return Err(format!("{} holds subgraphs", g.node(n).label(n)));
            }
        }
        let out_of_removed =
            |v: ValueId| matches!(g.value(v).def(), ValueDef::Node { node, .. } if removed.contains(node));

        // Values taken over by new nodes or redirected.
        let mut replaced: HashSet<ValueId> = HashSet::new();
        for (k, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                if let NewOutput::Reuse(v) = o {
                    if !out_of_removed(*v) {
                        return Err(format!(
                            "new node #{k} reuses '{}', not an output of a removed node",
                            g.value(*v).name
                        ));
                    }
                    if !replaced.insert(*v) {
                        return Err(format!("'{}' is replaced twice", g.value(*v).name));
                    }
                }
            }
        }
        for (old, _) in &self.redirects {
            if !out_of_removed(*old) {
                return Err(format!("redirected '{}' is not an output of a removed node", g.value(*old).name));
            }
            if !replaced.insert(*old) {
                return Err(format!("'{}' is replaced twice", g.value(*old).name));
            }
        }

        // Inputs of new nodes: live, and not something the patch deletes without replacing.
        let mut kept_alive: HashSet<ValueId> = HashSet::new();
        let check_ref = |p: &PValue, k: usize| -> Result<(), String> {
            match *p {
                PValue::Existing(v) => {
                    if v.index() >= g.value_count() {
                        return Err(format!("value {v} does not exist"));
                    }
                    if matches!(g.value(v).def(), ValueDef::Detached) {
                        return Err(format!("'{}' is detached", g.value(v).name));
                    }
                    if out_of_removed(v) && !replaced.contains(&v) {
                        return Err(format!("'{}' is read by a new node but its producer is removed", g.value(v).name));
                    }
                    Ok(())
                }
                PValue::Init(i) if i < self.inits.len() => Ok(()),
                PValue::Node { node, output } if node < k => match self.nodes[node].outputs.get(output) {
                    Some(NewOutput::Omitted) | None => Err(format!("new node #{node} has no output {output}")),
                    Some(_) => Ok(()),
                },
                _ => Err(format!("new node #{k} refers to a later or missing patch value")),
            }
        };
        for (k, n) in self.nodes.iter().enumerate() {
            for p in n.inputs.iter().flatten() {
                check_ref(p, k)?;
                if let PValue::Existing(v) = p {
                    kept_alive.insert(*v);
                }
            }
        }
        for (_, new) in &self.redirects {
            check_ref(new, self.nodes.len())?;
            if let PValue::Existing(v) = new {
                kept_alive.insert(*v);
            }
        }

        // Nodes that only fed removed nodes die with them.
        let dead = dead_feeders(g, &removed, &kept_alive, &captured);
        let gone: HashSet<NodeId> = removed.iter().chain(dead.iter()).copied().collect();
        for &n in gone.iter() {
            for v in g.node(n).outputs().iter().flatten() {
                if replaced.contains(v) {
                    continue;
                }
                let val = g.value(*v);
                if g.is_output(*v) {
                    return Err(format!("'{}' is a graph output and nothing replaces it", val.name));
                }
                if captured.contains(v) {
                    return Err(format!("'{}' is read by a subgraph", val.name));
                }
                if let Some(u) = val.uses().iter().find(|u| !gone.contains(&u.node)) {
                    return Err(format!("'{}' is still used by {}", val.name, g.node(u.node).label(u.node)));
                }
            }
        }

        // Arity and element types of the new nodes.
        let mut new_types: Vec<Vec<Option<DataType>>> = Vec::new();
        for (k, n) in self.nodes.iter().enumerate() {
            let dt = |p: &Option<PValue>| -> Option<DataType> {
                match p.as_ref()? {
                    PValue::Existing(v) => value_dtype(g, *v),
                    PValue::Init(i) => Some(self.inits[*i].1.dtype()),
                    PValue::Node { node, output } => new_types[*node].get(*output).copied().flatten(),
                }
            };
            let ins: Vec<Option<DataType>> = n.inputs.iter().map(dt).collect();
            let outs = check_signature(n, &ins).map_err(|e| format!("new {} (#{k}): {e}", n.op_type))?;
            for (o, slot) in n.outputs.iter().enumerate() {
                if let (NewOutput::Reuse(v), Some(Some(t))) = (slot, outs.get(o))
                    && let Some(old) = value_dtype(g, *v)
                    && old != *t
                {
                    return Err(format!("new {} output {o} is {t}, '{}' was {old}", n.op_type, g.value(*v).name));
                }
            }
            new_types.push(outs);
        }
        for (old, new) in &self.redirects {
            let nt = match new {
                PValue::Existing(v) => value_dtype(g, *v),
                PValue::Init(i) => Some(self.inits[*i].1.dtype()),
                PValue::Node { node, output } => new_types[*node].get(*output).copied().flatten(),
            };
            if let (Some(a), Some(b)) = (value_dtype(g, *old), nt)
                && a != b
            {
                return Err(format!("'{}' is {a}, its replacement is {b}", g.value(*old).name));
            }
        }
        Ok(Plan { gone, captured })
    }

    fn commit(self, g: &mut Graph, plan: Plan) -> Applied {
        let order = g.node_ids();
        let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        // New nodes go where the last removed node was; a re-sort fixes the rare other case.
        let last = self.remove.iter().filter_map(|n| pos.get(n)).max().copied();
        let anchor = last.and_then(|p| order[p + 1..].iter().copied().find(|n| !plan.gone.contains(n)));

        // Initializers read by what goes away, to drop if nothing else reads them.
        let mut fed: Vec<ValueId> = Vec::new();
        for &n in &plan.gone {
            for v in g.node(n).inputs().iter().flatten() {
                if g.value(*v).initializer().is_some() && !fed.contains(v) {
                    fed.push(*v);
                }
            }
        }
        let mut gone: Vec<NodeId> = plan.gone.iter().copied().collect();
        gone.sort_by_key(|n| pos.get(n).copied().unwrap_or(usize::MAX));
        let removed = gone.len();
        for n in gone {
            g.remove_node(n);
        }

        let init_ids: Vec<ValueId> =
            self.inits.into_iter().map(|(base, t)| g.add_initializer(g.fresh_name(&base), t)).collect();
        let mut outs: Vec<Vec<Option<ValueId>>> = Vec::new();
        let resolve = |p: PValue, outs: &Vec<Vec<Option<ValueId>>>| -> Option<ValueId> {
            match p {
                PValue::Existing(v) => Some(v),
                PValue::Init(i) => init_ids.get(i).copied(),
                PValue::Node { node, output } => outs.get(node).and_then(|o| o.get(output).copied().flatten()),
            }
        };
        let added = self.nodes.len();
        for n in self.nodes {
            let inputs: Vec<Option<ValueId>> = n.inputs.iter().map(|p| p.and_then(|p| resolve(p, &outs))).collect();
            let names: Vec<String> = n
                .outputs
                .iter()
                .map(|o| match o {
                    NewOutput::Fresh(base) => g.fresh_name(base),
                    _ => String::new(),
                })
                .collect();
            let spec = NodeSpec {
                name: n.name.clone(),
                op_type: n.op_type.clone(),
                domain: if n.domain.is_empty() { None } else { Some(n.domain.clone()) },
                inputs,
                outputs: names,
                attributes: n.attributes.clone(),
            };
            let id = match anchor {
                Some(a) => g.insert_node_before(a, spec),
                None => g.add_node(spec),
            };
            for (i, o) in n.outputs.iter().enumerate() {
                if let NewOutput::Reuse(v) = o {
                    g.bind_output(id, i, *v);
                }
            }
            outs.push((0..n.outputs.len()).map(|i| g.node(id).output(i)).collect());
        }
        for (old, new) in self.redirects {
            if let Some(nv) = resolve(new, &outs) {
                g.replace_uses(old, nv);
                g.replace_output(old, nv);
            }
        }
        let dead_inits: Vec<ValueId> = fed
            .into_iter()
            .filter(|&v| {
                g.value(v).uses().is_empty()
                    && !g.is_output(v)
                    && !g.inputs().contains(&v)
                    && !plan.captured.contains(&v)
            })
            .collect();
        let initializers_removed = g.remove_initializers(&dead_inits);
        restore_topological_order(g);
        Applied {
            added,
            removed,
            initializers_added: init_ids.len(),
            initializers_removed,
            detail: self.detail,
            domains: self.domains,
        }
    }
}

struct Plan {
    gone: HashSet<NodeId>,
    captured: HashSet<ValueId>,
}

/// Values of `g` that subgraphs of its nodes read by name (use lists do not show those reads).
pub fn captured_values(g: &Graph) -> HashSet<ValueId> {
    let mut out = HashSet::new();
    for (_, n) in g.nodes() {
        if n.subgraphs().next().is_none() {
            continue;
        }
        for name in Graph::captured_names(n) {
            if let Some(v) = g.find_value(&name) {
                out.insert(v);
            }
        }
    }
    out
}

/// Producers (transitively) whose every output is read only by removed or dead nodes.
fn dead_feeders(
    g: &Graph,
    removed: &HashSet<NodeId>,
    kept_alive: &HashSet<ValueId>,
    captured: &HashSet<ValueId>,
) -> HashSet<NodeId> {
    let mut dead: HashSet<NodeId> = HashSet::new();
    let mut work: Vec<NodeId> = Vec::new();
    let push_producers = |n: NodeId, work: &mut Vec<NodeId>| {
        for v in g.node(n).inputs().iter().flatten() {
            if let Some(p) = g.value(*v).producer() {
                work.push(p);
            }
        }
    };
    for &n in removed {
        push_producers(n, &mut work);
    }
    while let Some(n) = work.pop() {
        if removed.contains(&n) || dead.contains(&n) || g.get_node(n).is_none() {
            continue;
        }
        let node = g.node(n);
        if node.subgraphs().next().is_some() {
            continue;
        }
        let all_dead = node.outputs().iter().flatten().all(|v| {
            !g.is_output(*v)
                && !captured.contains(v)
                && !kept_alive.contains(v)
                && g.value(*v).uses().iter().all(|u| removed.contains(&u.node) || dead.contains(&u.node))
        });
        if all_dead {
            dead.insert(n);
            push_producers(n, &mut work);
        }
    }
    dead
}

/// Element type of a value: declared or inferred, or that of its constant.
pub fn value_dtype(g: &Graph, v: ValueId) -> Option<DataType> {
    if let Some(t) = g.value(v).initializer() {
        return Some(t.dtype());
    }
    if let Some(t) = g.tensor_type(v).and_then(|t| t.dtype()) {
        return Some(t);
    }
    let p = g.value(v).producer()?;
    let n = g.node(p);
    if n.is_onnx("Constant") {
        return n.attr_tensor("value").map(|t| t.dtype());
    }
    None
}

/// Arity and type rules of the operators fusions emit: (inputs min..=max, outputs min..=max,
/// inputs sharing the type of input 0, inputs that must be int32).
struct Signature {
    inputs: (usize, usize),
    outputs: (usize, usize),
    same_as_first: &'static [usize],
    int32: &'static [usize],
    /// Optional inputs below the minimum count (they may be left empty).
    optional: &'static [usize],
}

fn signature(domain: &str, op: &str) -> Option<Signature> {
    let s = |inputs, outputs, same_as_first, int32| Signature { inputs, outputs, same_as_first, int32, optional: &[] };
    Some(match (domain, op) {
        ("", "Conv") => s((2, 3), (1, 1), &[1, 2], &[]),
        ("", "Gemm") => s((2, 3), (1, 1), &[1, 2], &[]),
        ("", "LayerNormalization") => s((2, 3), (1, 3), &[1, 2], &[]),
        ("", "Gelu") => s((1, 1), (1, 1), &[], &[]),
        ("", "Cast") => s((1, 1), (1, 1), &[], &[]),
        (MS_DOMAIN, "Gelu") => s((1, 1), (1, 1), &[], &[]),
        (MS_DOMAIN, "FastGelu") => s((1, 2), (1, 1), &[1], &[]),
        (MS_DOMAIN, "BiasGelu") => s((2, 2), (1, 1), &[1], &[]),
        (MS_DOMAIN, "SkipLayerNormalization") => s((3, 5), (1, 4), &[1, 2, 3, 4], &[]),
        (MS_DOMAIN, "Attention") => s((2, 7), (1, 2), &[1, 2, 4, 5], &[3, 6]),
        (MS_DOMAIN, "EmbedLayerNormalization") => Signature { optional: &[1, 4], ..s((7, 9), (1, 3), &[], &[1, 7, 8]) },
        (MS_DOMAIN, "FusedConv") => s((2, 4), (1, 1), &[1, 2, 3], &[]),
        (MS_DOMAIN, "FusedGemm") => s((2, 3), (1, 1), &[1, 2], &[]),
        _ => return None,
    })
}

/// Checks a new node against its operator's signature; returns the output element types that
/// follow from the inputs.
fn check_signature(n: &NewNode, ins: &[Option<DataType>]) -> Result<Vec<Option<DataType>>, String> {
    let sig = signature(&n.domain, &n.op_type).ok_or("fusions may not emit this operator")?;
    let (lo, hi) = sig.inputs;
    let missing = n.inputs.iter().take(lo).enumerate().any(|(i, v)| v.is_none() && !sig.optional.contains(&i));
    if n.inputs.len() < lo || n.inputs.len() > hi || missing {
        return Err(format!("takes {lo} to {hi} inputs (required ones present), got {}", n.inputs.len()));
    }
    let (lo, hi) = sig.outputs;
    if n.outputs.len() < lo || n.outputs.len() > hi || matches!(n.outputs.first(), Some(NewOutput::Omitted)) {
        return Err(format!("has {lo} to {hi} outputs (the first one present), got {}", n.outputs.len()));
    }
    let first = ins.first().copied().flatten();
    for &i in sig.same_as_first {
        if let (Some(a), Some(Some(b))) = (first, ins.get(i))
            && a != *b
        {
            return Err(format!("input {i} is {b}, input 0 is {a}"));
        }
    }
    for &i in sig.int32 {
        if let Some(Some(t)) = ins.get(i)
            && *t != DataType::I32
        {
            return Err(format!("input {i} must be int32, is {t}"));
        }
    }
    let t0 = match (n.domain.as_str(), n.op_type.as_str()) {
        ("", "Cast") => n.attributes.attr_int("to").and_then(|c| DataType::from_onnx(c as i32)),
        (MS_DOMAIN, "EmbedLayerNormalization") => {
            let t = ins.get(2).copied().flatten();
            if let (Some(a), Some(b)) = (t, ins.get(3).copied().flatten())
                && a != b
            {
                return Err(format!("position embedding is {b}, word embedding is {a}"));
            }
            if let Some(Some(ids)) = ins.first()
                && *ids != DataType::I32
            {
                return Err(format!("input_ids must be int32, is {ids}"));
            }
            t
        }
        _ => first,
    };
    let mut outs = vec![t0];
    for i in 1..n.outputs.len() {
        let t = match (n.domain.as_str(), n.op_type.as_str(), i) {
            (MS_DOMAIN, "EmbedLayerNormalization", 1) => Some(DataType::I32),
            (MS_DOMAIN, "EmbedLayerNormalization", 2) => t0,
            (MS_DOMAIN, "SkipLayerNormalization", 3) => t0,
            (_, "LayerNormalization" | "SkipLayerNormalization", _) => Some(DataType::F32),
            _ => None,
        };
        outs.push(t);
    }
    Ok(outs)
}

/// Re-sorts the node order if a node reads a value defined after it (stable: nodes move only
/// as far as their inputs require).
pub fn restore_topological_order(g: &mut Graph) {
    let order = g.node_ids();
    let pos: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let deps = |n: NodeId| -> Vec<NodeId> {
        let node = g.node(n);
        let mut d: Vec<NodeId> = node.inputs().iter().flatten().filter_map(|v| g.value(*v).producer()).collect();
        if node.subgraphs().next().is_some() {
            for name in Graph::captured_names(node) {
                if let Some(p) = g.find_value(&name).and_then(|v| g.value(v).producer()) {
                    d.push(p);
                }
            }
        }
        d
    };
    let sorted = order.iter().all(|&n| deps(n).iter().all(|d| pos.get(d).is_some_and(|&p| p < pos[&n])));
    if sorted {
        return;
    }
    // Depth-first, in the current order; a cycle (which no patch creates) keeps the old order.
    let mut state: HashMap<NodeId, u8> = HashMap::new();
    let mut out: Vec<NodeId> = Vec::with_capacity(order.len());
    for &root in &order {
        let mut stack: Vec<(NodeId, bool)> = vec![(root, false)];
        while let Some((n, expanded)) = stack.pop() {
            match (state.get(&n).copied(), expanded) {
                (Some(2), _) => {}
                (_, true) => {
                    state.insert(n, 2);
                    out.push(n);
                }
                (Some(1), false) => return,
                (_, false) => {
                    state.insert(n, 1);
                    stack.push((n, true));
                    for d in deps(n).into_iter().rev() {
                        if pos.contains_key(&d) && state.get(&d).copied() != Some(2) {
                            stack.push((d, false));
                        }
                    }
                }
            }
        }
    }
    if out.len() == order.len() {
        g.set_order(out);
    }
}
