//! Finding groups of coupled channels.
//!
//! Every weighted layer that creates channels (a Conv's output channels, a MatMul's or Gemm's
//! output features) starts a group. A walk in node order carries each tensor's *tracked axis*
//! and its *layout* (which groups' channels lie along that axis, in order: one group, or
//! several after a Concat) through the ops of [`super::axes`]: elementwise ops and Adds tie
//! the groups they join into one (union-find), depthwise Convs and BatchNormalization follow
//! their input, Conv/MatMul/Gemm consume them through their weights. Each place that must
//! shrink with a group is recorded as an [`Action`]. A group that reaches anything Kiln cannot
//! follow (an unknown op, a model output, a Reshape that mixes channels, a tensor it does not
//! track) is blocked with the reason, and is never pruned.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_compiler::Tensor;
use kiln_compiler::ir::{AttrLookup, Dim, Graph, Node, NodeId, ValueDef, ValueId};

use super::axes::{AxisRule, rule};

mod layers;
mod shapes;

use layers::{conv, gemm, matmul};
use shapes::{broadcast, concat, reshape};

pub(crate) type GroupId = usize;

/// A stretch of a tracked axis: the channels of a group, or channels Kiln does not prune.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Group(GroupId, usize),
    Fixed(usize),
}

pub(crate) type Layout = Vec<Seg>;

pub(crate) fn layout_len(l: &Layout) -> usize {
    l.iter()
        .map(|s| match s {
            Seg::Group(_, n) | Seg::Fixed(n) => *n,
        })
        .sum()
}

/// What created a group's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Conv output channels.
    Channels,
    /// MatMul/Gemm output features (FFN neurons).
    Ffn,
}

/// A weighted node whose output channels belong to a group.
#[derive(Debug, Clone)]
pub(crate) struct Producer {
    pub node: NodeId,
    /// The input holding the weight.
    pub weight: usize,
    /// The weight axis of the output channels.
    pub axis: usize,
    /// Per-channel scale applied right after (a BatchNormalization's gamma/sqrt(var+eps)), so
    /// importance is the same before and after BN folding.
    pub scale: Option<Vec<f64>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Group {
    parent: GroupId,
    pub size: usize,
    pub kind: Kind,
    pub blocked: Option<String>,
    pub protected: Option<String>,
    pub producers: Vec<Producer>,
}

/// A change a group's pruning requires.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Keep only the layout's surviving indices along `axis` of the constant at `input`.
    /// `consumer`: the constant reads the channels (a next layer's weight) rather than
    /// producing or scaling them.
    Slice { node: NodeId, input: usize, axis: usize, layout: Layout, consumer: bool },
    /// Set a depthwise Conv's `group` to the layout's surviving length.
    ConvGroups { node: NodeId, layout: Layout },
    /// Set element `index` of a Reshape's constant shape to the layout's surviving length.
    ShapeElem { node: NodeId, index: usize, layout: Layout },
}

/// The result of the walk.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    pub groups: Vec<Group>,
    pub tracked: HashMap<ValueId, (usize, Layout)>,
    pub actions: Vec<Action>,
}

impl Analysis {
    pub(crate) fn root(&self, mut g: GroupId) -> GroupId {
        while self.groups[g].parent != g {
            g = self.groups[g].parent;
        }
        g
    }

    /// Roots of the live groups, in creation order.
    pub(crate) fn roots(&self) -> Vec<GroupId> {
        (0..self.groups.len()).filter(|&g| self.groups[g].parent == g).collect()
    }

    fn new_group(&mut self, size: usize, kind: Kind, producer: Producer) -> GroupId {
        let id = self.groups.len();
        self.groups.push(Group { parent: id, size, kind, blocked: None, protected: None, producers: vec![producer] });
        id
    }

    fn block_group(&mut self, g: GroupId, why: &str) {
        let r = self.root(g);
        if self.groups[r].blocked.is_none() {
            self.groups[r].blocked = Some(why.to_string());
        }
    }

    fn block(&mut self, l: &Layout, why: &str) {
        for s in l {
            if let Seg::Group(g, _) = s {
                self.block_group(*g, why);
            }
        }
    }

    fn union(&mut self, a: GroupId, b: GroupId) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra == rb {
            return;
        }
        let gb = self.groups[rb].clone();
        self.groups[rb].parent = ra;
        let ga = &mut self.groups[ra];
        ga.blocked = ga.blocked.take().or(gb.blocked);
        ga.protected = ga.protected.take().or(gb.protected);
        ga.producers.extend(gb.producers);
        ga.kind = ga.kind.min(gb.kind);
    }

    /// Ties two layouts together position by position; blocks both when they differ in form.
    fn unite(&mut self, a: &Layout, b: &Layout, where_: &str) -> bool {
        let same_form = a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| match (x, y) {
                (Seg::Group(_, n), Seg::Group(_, m)) | (Seg::Fixed(n), Seg::Fixed(m)) => n == m,
                _ => false,
            });
        if !same_form {
            let why = format!("{where_} joins channel layouts that do not line up");
            self.block(a, &why);
            self.block(b, &why);
            return false;
        }
        for (x, y) in a.iter().zip(b) {
            if let (Seg::Group(p, _), Seg::Group(q, _)) = (x, y) {
                self.union(*p, *q);
            }
        }
        true
    }

    fn track(&mut self, v: Option<ValueId>, axis: usize, l: Layout) {
        if let Some(v) = v {
            self.tracked.insert(v, (axis, l));
        }
    }
}

/// A constant input (an initializer that is not also an overridable graph input).
pub(crate) fn constant(g: &Graph, v: ValueId) -> Option<Arc<Tensor>> {
    match g.value(v).def() {
        ValueDef::Initializer(t) if !g.inputs().contains(&v) => Some(t.clone()),
        _ => None,
    }
}

/// The shape of a value: a constant's dims, else its type's.
pub(crate) fn dims(g: &Graph, v: ValueId) -> Option<Vec<Dim>> {
    if let Some(t) = g.value(v).initializer() {
        return Some(t.dims().iter().map(|&d| Dim::known(d as i64)).collect());
    }
    g.tensor_type(v)?.shape.clone()
}

fn known(d: &Dim) -> Option<i64> {
    d.as_known()
}

/// Walks the main graph and returns its channel groups.
pub(crate) fn analyze(g: &Graph) -> Analysis {
    let mut a = Analysis::default();
    for (id, n) in g.nodes() {
        visit(g, &mut a, id, n);
    }
    let captured: HashSet<String> = g.nodes().flat_map(|(_, n)| Graph::captured_names(n)).collect();
    let mut ends: Vec<(ValueId, String)> = Vec::new();
    for &v in a.tracked.keys() {
        if g.is_output(v) {
            ends.push((v, format!("reaches the model output '{}'", g.value(v).name)));
        } else if captured.contains(&g.value(v).name) {
            ends.push((v, format!("'{}' is read inside a subgraph", g.value(v).name)));
        }
    }
    ends.sort();
    for (v, why) in ends {
        if let Some((_, l)) = a.tracked.get(&v).cloned() {
            a.block(&l, &why);
        }
    }
    a
}

/// One node under visit: what every op rule reads.
#[derive(Clone, Copy)]
struct Visit<'v> {
    g: &'v Graph,
    id: NodeId,
    n: &'v Node,
    tracked_in: &'v [(usize, ValueId, usize, Layout)],
    label: &'v str,
}

fn visit(g: &Graph, a: &mut Analysis, id: NodeId, n: &Node) {
    let label = n.label(id);
    let tracked_in: Vec<(usize, ValueId, usize, Layout)> = n
        .inputs()
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let v = (*v)?;
            a.tracked.get(&v).map(|(ax, l)| (i, v, *ax, l.clone()))
        })
        .collect();
    let visit = Visit { g, id, n, tracked_in: &tracked_in, label: &label };
    let block_all = |a: &mut Analysis, why: String| {
        for (_, _, _, l) in &tracked_in {
            a.block(l, &why);
        }
    };
    match rule(n) {
        AxisRule::Opaque => {
            if !tracked_in.is_empty() {
                block_all(a, format!("flows into {label}, whose channel mapping Kiln does not know"));
            }
        }
        AxisRule::Unary => {
            if tracked_in.iter().any(|t| t.0 != 0) {
                block_all(a, format!("is a parameter input of {label}"));
            } else if let Some((_, _, ax, l)) = tracked_in.first() {
                for o in n.outputs().iter().flatten() {
                    a.track(Some(*o), *ax, l.clone());
                }
            }
        }
        AxisRule::Broadcast => broadcast(a, &visit),
        AxisRule::PerChannel => {
            if let Some((i, _, ax, l)) = tracked_in.first() {
                if *i != 0 || *ax != 1 || n.outputs().iter().skip(1).flatten().any(|o| !g.value(*o).uses().is_empty()) {
                    block_all(a, format!("{label} does not keep channels on axis 1"));
                } else {
                    a.track(n.output(0), 1, l.clone());
                }
            }
        }
        AxisRule::BatchNorm | AxisRule::InstanceNorm => {
            let params: &[usize] = if rule(n) == AxisRule::BatchNorm { &[1, 2, 3, 4] } else { &[1, 2] };
            let Some((0, x, 1, l)) = tracked_in.first().cloned() else {
                if !tracked_in.is_empty() {
                    block_all(a, format!("{label} normalizes another axis than the tracked one"));
                }
                return;
            };
            if tracked_in.len() > 1 || n.outputs().iter().skip(1).flatten().next().is_some() {
                block_all(a, format!("{label} has tracked parameters or training outputs"));
                return;
            }
            let consts: Option<Vec<Arc<Tensor>>> =
                params.iter().map(|&i| n.input(i).and_then(|v| constant(g, v))).collect();
            let Some(consts) = consts else {
                block_all(a, format!("{label} has parameters that are not constants"));
                return;
            };
            for &i in params {
                a.actions.push(Action::Slice { node: id, input: i, axis: 0, layout: l.clone(), consumer: false });
            }
            if rule(n) == AxisRule::BatchNorm {
                record_bn_scale(g, a, x, &l, &consts, n.attributes.attr_float("epsilon").unwrap_or(1e-5));
            }
            a.track(n.output(0), 1, l);
        }
        AxisRule::Conv => conv(a, &visit),
        AxisRule::MatMul => matmul(a, &visit),
        AxisRule::Gemm => gemm(a, &visit),
        AxisRule::Transpose => {
            let Some((0, x, ax, l)) = tracked_in.first().cloned() else { return };
            let rank = dims(g, x).map(|d| d.len());
            let perm: Option<Vec<usize>> = match n.attributes.attr_ints("perm") {
                Some(p) => p.iter().map(|&v| usize::try_from(v).ok()).collect(),
                None => rank.map(|r| (0..r).rev().collect()),
            };
            match perm.and_then(|p| p.iter().position(|&q| q == ax)) {
                Some(out) => a.track(n.output(0), out, l),
                None => block_all(a, format!("{label} has no readable permutation")),
            }
        }
        AxisRule::Flatten => {
            let Some((0, x, ax, l)) = tracked_in.first().cloned() else { return };
            let d = dims(g, x).unwrap_or_default();
            let axis = n.attributes.attr_int("axis").unwrap_or(1);
            let axis = if axis < 0 { axis + d.len() as i64 } else { axis };
            let trailing_ones = d.len() > ax && d[ax + 1..].iter().all(|x| known(x) == Some(1));
            if axis == ax as i64 && trailing_ones {
                a.track(n.output(0), 1, l);
            } else {
                block_all(a, format!("{label} mixes the channel axis with others"));
            }
        }
        AxisRule::Reshape => reshape(a, &visit),
        AxisRule::Concat => concat(a, &visit),
    }
}

/// Records a BatchNormalization's per-channel scale on the producer that feeds it directly.
fn record_bn_scale(g: &Graph, a: &mut Analysis, x: ValueId, l: &Layout, consts: &[Arc<Tensor>], eps: f32) {
    let (Some(producer), [Seg::Group(grp, _)]) = (g.value(x).producer(), l.as_slice()) else { return };
    let (Ok(gamma), Ok(var)) = (consts[0].to_f64_vec(), consts[3].to_f64_vec()) else { return };
    let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g.abs() / (v + f64::from(eps)).sqrt()).collect();
    let root = a.root(*grp);
    if let Some(p) = a.groups[root].producers.iter_mut().find(|p| p.node == producer) {
        p.scale = Some(scale);
    }
}
