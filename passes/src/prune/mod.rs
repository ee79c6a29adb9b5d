//! Structured pruning of ONNX graphs: convolution channels, FFN neurons and attention heads
//! are removed from the weights themselves, so the pruned model is smaller and faster on any
//! runtime, not just sparser.
//!
//! * Channels and FFN neurons: [`channels`] finds the groups of channels that are coupled
//!   through the graph (a Conv's outputs, the BatchNormalization and activations after it,
//!   residual Adds and squeeze-excite Muls that tie several layers, depthwise Convs that
//!   follow their input, Concats, the next layer's weights). Removing channel k of a group
//!   removes it from every tensor it flows through, so the model stays valid. A group that
//!   meets anything Kiln cannot follow is left whole, and the report says why.
//! * Heads: [`heads`] finds self-attention blocks (written out, or `com.microsoft.Attention`)
//!   and removes whole heads from Q, K, V and the output projection.
//!
//! Importance is data-free weight magnitude: for a channel, the L1 (or L2) norm of each
//! producing filter times the BatchNormalization scale that follows it (the norm of the
//! filter as it is after BN folding, so the original and the optimized graph rank channels
//! alike), normalized by the layer's mean and summed over the coupled producers; for a head,
//! the same over its slices of Wq, Wk, Wv and Wo. Magnitude needs no data, is deterministic,
//! and is what structured-pruning baselines (Li et al. 2017, "Pruning Filters for Efficient
//! ConvNets"; network slimming's BN-scale criterion) use; without fine-tuning any criterion
//! costs accuracy, which the pipeline's validation reports.

mod apply;
mod axes;
mod channels;
mod cost;
mod heads;
mod tensor;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use kiln_compiler::ir::{Graph, Model};
use kiln_compiler::pass::{Pass, PassContext};

pub use cost::{flops, flops_at, parameters};
pub use tensor::Norm;

use channels::{Analysis, Kind};

/// How the ratio is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every prunable group (or attention block) loses the same share.
    #[default]
    PerLayer,
    /// Channels of one kind are ranked across all groups by normalized importance and the
    /// least important share is removed wherever it is (each group keeps at least one).
    Global,
}

/// What to prune, and how much.
#[derive(Debug, Clone)]
pub struct PruneConfig {
    /// Share of prunable conv channels to remove.
    pub channels: f64,
    /// Share of attention heads to remove.
    pub heads: f64,
    /// Share of FFN neurons to remove.
    pub ffn: f64,
    pub norm: Norm,
    pub scope: Scope,
    /// Leave the first conv's output channels and the last weighted layer's input channels
    /// alone (the stem and the classifier input are the most sensitive).
    pub protect_ends: bool,
    /// Conv channels kept are rounded up to a multiple of this (ONNX Runtime's CPU kernels
    /// block channels by 8 or 16; odd counts measured slower than unpruned). 1: no rounding.
    pub align: usize,
    /// Concrete input shapes (name → dims) for the FLOP estimate; dims left symbolic count 1.
    pub input_shapes: Vec<(String, Vec<usize>)>,
}

impl Default for PruneConfig {
    fn default() -> PruneConfig {
        PruneConfig {
            channels: 0.0,
            heads: 0.0,
            ffn: 0.0,
            norm: Norm::L1,
            scope: Scope::PerLayer,
            protect_ends: true,
            align: 8,
            input_shapes: Vec::new(),
        }
    }
}

impl PruneConfig {
    /// Parses `channels:0.3,heads:0.25,ffn:0.2` (any subset), plus `importance:l1|l2`,
    /// `scope:layer|global` and `protect:ends|none`.
    pub fn parse(text: &str) -> Result<PruneConfig, String> {
        let mut o = PruneConfig::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once(':').ok_or_else(|| format!("'{part}': expected KIND:RATIO"))?;
            let v = v.trim();
            match k.trim() {
                "importance" => {
                    o.norm = match v {
                        "l1" => Norm::L1,
                        "l2" => Norm::L2,
                        _ => return Err(format!("'{part}': importance is l1 or l2")),
                    };
                    continue;
                }
                "scope" => {
                    o.scope = match v {
                        "layer" => Scope::PerLayer,
                        "global" => Scope::Global,
                        _ => return Err(format!("'{part}': scope is layer or global")),
                    };
                    continue;
                }
                "align" => {
                    o.align = v
                        .parse()
                        .ok()
                        .filter(|&a: &usize| a >= 1)
                        .ok_or_else(|| format!("'{part}': align is a positive integer"))?;
                    continue;
                }
                "protect" => {
                    o.protect_ends = match v {
                        "ends" => true,
                        "none" => false,
                        _ => return Err(format!("'{part}': protect is ends or none")),
                    };
                    continue;
                }
                _ => {}
            }
            let r: f64 = v.parse().map_err(|_| format!("'{part}': RATIO is not a number"))?;
            if !(0.0..1.0).contains(&r) {
                return Err(format!("'{part}': RATIO must be at least 0 and below 1"));
            }
            match k.trim() {
                "channels" => o.channels = r,
                "heads" => o.heads = r,
                "ffn" => o.ffn = r,
                other => {
                    return Err(format!("'{other}': expected channels, heads, ffn, importance, scope or protect"));
                }
            }
        }
        Ok(o)
    }
}

/// Why pruning failed (a model Kiln could not read or rewrite; "nothing to prune" is not an
/// error).
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("tensor '{tensor}': {message}")]
    Tensor { tensor: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("bad option: {0}")]
    Option(String),
}

/// One group of coupled channels (or an attention block) and what became of it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupReport {
    /// `channels`, `ffn` or `heads`.
    pub kind: String,
    /// The producing layers (node names), in graph order.
    pub layers: Vec<String>,
    /// Channels (or heads) before.
    pub size: usize,
    /// Channels (or heads) removed.
    pub removed: usize,
    /// Why the group was left whole (`None` when pruned or its ratio is 0).
    pub skipped: Option<String>,
}

/// What pruning did.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub parameters_before: u64,
    pub parameters_after: u64,
    pub flops_before: u64,
    pub flops_after: u64,
    pub groups: Vec<GroupReport>,
    /// Node → `pruned k/n channels` (or neurons, heads).
    pub decisions: BTreeMap<String, String>,
}

impl PruneReport {
    pub fn pruned(&self) -> impl Iterator<Item = &GroupReport> {
        self.groups.iter().filter(|g| g.removed > 0)
    }

    pub fn skipped(&self) -> impl Iterator<Item = &GroupReport> {
        self.groups.iter().filter(|g| g.skipped.is_some())
    }
}

fn check_ratio(name: &str, r: f64) -> Result<(), PruneError> {
    if (0.0..1.0).contains(&r) {
        Ok(())
    } else {
        Err(PruneError::Option(format!("{name} ratio {r} must be at least 0 and below 1")))
    }
}

/// Prunes the main graph of `model` in place.
///
/// Constants are lifted and folded first (weights written as `Constant` nodes, biases built
/// by `Reshape(constant)`) and shapes inferred, so the original export and an optimized graph
/// are handled alike.
pub fn prune(model: &mut Model, config: &PruneConfig) -> Result<PruneReport, PruneError> {
    run(model, config, false)
}

/// Like [`prune`] for channels and FFN neurons, but the chosen channels are set to zero
/// where they are produced instead of removed: the model keeps its shapes and computes
/// what the pruned model computes (heads are not masked). For sensitivity studies, and the
/// check that slicing is right: `prune(mask(m))` gives `mask(m)`'s outputs.
pub fn mask(model: &mut Model, config: &PruneConfig) -> Result<PruneReport, PruneError> {
    let config = PruneConfig { heads: 0.0, ..config.clone() };
    run(model, &config, true)
}

fn run(model: &mut Model, config: &PruneConfig, zero: bool) -> Result<PruneReport, PruneError> {
    check_ratio("channels", config.channels)?;
    check_ratio("heads", config.heads)?;
    check_ratio("ffn", config.ffn)?;
    prepare(model)?;
    let mut report = PruneReport {
        parameters_before: parameters(model),
        flops_before: flops_at(model, &config.input_shapes),
        ..PruneReport::default()
    };
    let g = model.graph.as_mut().ok_or_else(|| PruneError::Invalid("the model has no graph".into()))?;

    if config.heads > 0.0 {
        prune_heads(g, config, &mut report)?;
        apply::reinfer_types(model);
    }
    let g = model.graph.as_mut().ok_or_else(|| PruneError::Invalid("the model has no graph".into()))?;
    let analysis = channels::analyze(g);
    let keep = choose_channels(g, &analysis, config, &mut report)?;
    apply::apply_channels(g, &analysis, &keep, zero)?;
    apply::reinfer_types(model);
    kiln_compiler::verify::check_model(model)
        .map_err(|e| PruneError::Invalid(format!("pruning left an invalid model: {e}")))?;
    report.parameters_after = parameters(model);
    report.flops_after = flops_at(model, &config.input_shapes);
    Ok(report)
}

fn prepare(model: &mut Model) -> Result<(), PruneError> {
    let mut cx = PassContext::new();
    let fold = crate::FoldConstants::new();
    for pass in [&crate::LiftConstants as &dyn Pass, &fold] {
        pass.run(model, &mut cx).map_err(|e| PruneError::Invalid(e.to_string()))?;
    }
    kiln_compiler::shape::infer_model(model);
    Ok(())
}

fn node_name(g: &Graph, id: kiln_compiler::ir::NodeId) -> String {
    let n = g.node(id);
    match n.name.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => format!("{} {id}", n.op_type),
    }
}

/// How many of `n` to remove at `ratio`, leaving at least one.
fn count_to_remove(n: usize, ratio: f64) -> usize {
    ((n as f64 * ratio).floor() as usize).min(n.saturating_sub(1))
}

/// The `k` lowest-scoring indices (ties by index), and the rest sorted.
fn keep_after_removing(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order[k..].to_vec();
    keep.sort_unstable();
    keep
}

fn prune_heads(g: &mut Graph, config: &PruneConfig, report: &mut PruneReport) -> Result<(), PruneError> {
    let (blocks, skipped) = heads::find(g);
    for (id, why) in skipped {
        report.groups.push(GroupReport {
            kind: "heads".into(),
            layers: vec![node_name(g, id)],
            size: 0,
            removed: 0,
            skipped: Some(why),
        });
    }
    let mut plans = Vec::new();
    let mut all: Vec<(f64, usize, usize)> = Vec::new();
    for (bi, b) in blocks.iter().enumerate() {
        let mut s = heads::importance(g, b, config.norm)?;
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        if mean > 0.0 {
            s.iter_mut().for_each(|x| *x /= mean);
        }
        all.extend(s.iter().enumerate().map(|(h, &x)| (x, bi, h)));
        plans.push(s);
    }
    let removals = removals(&plans, &all, config.heads, config.scope);
    for (bi, b) in blocks.iter().enumerate() {
        let keep = keep_after_removing(&plans[bi], removals[bi]);
        let name = node_name(g, b.anchor);
        if keep.len() < b.heads {
            heads::apply(g, b, &keep)?;
            report.decisions.insert(name.clone(), format!("pruned {}/{} heads", b.heads - keep.len(), b.heads));
        }
        report.groups.push(GroupReport {
            kind: "heads".into(),
            layers: vec![name],
            size: b.heads,
            removed: b.heads - keep.len(),
            skipped: None,
        });
    }
    Ok(())
}

/// How many to remove from each unit (group or block), per layer or by a global ranking.
fn removals(scores: &[Vec<f64>], all: &[(f64, usize, usize)], ratio: f64, scope: Scope) -> Vec<usize> {
    match scope {
        Scope::PerLayer => scores.iter().map(|s| count_to_remove(s.len(), ratio)).collect(),
        Scope::Global => {
            let total = count_to_remove(all.len(), ratio);
            let mut order: Vec<&(f64, usize, usize)> = all.iter().collect();
            order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut out = vec![0usize; scores.len()];
            let mut left = total;
            for &&(_, u, _) in &order {
                if left == 0 {
                    break;
                }
                if out[u] + 1 < scores[u].len() {
                    out[u] += 1;
                    left -= 1;
                }
            }
            out
        }
    }
}

/// Per-channel importance of a group: producer norms × BN scale, normalized and summed.
fn group_scores(g: &Graph, a: &Analysis, root: usize, norm: Norm) -> Result<Vec<f64>, PruneError> {
    let grp = &a.groups[root];
    let mut score = vec![0.0; grp.size];
    for p in &grp.producers {
        let Some(wv) = g.node(p.node).input(p.weight) else { continue };
        let Some(w) = channels::constant(g, wv) else { continue };
        let mut s = tensor::slice_norms(&w, p.axis, norm, &g.value(wv).name)?;
        if let Some(scale) = &p.scale {
            s.iter_mut().zip(scale).for_each(|(x, c)| *x *= c);
        }
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        for (acc, x) in score.iter_mut().zip(&s) {
            *acc += if mean > 0.0 { x / mean } else { 0.0 };
        }
    }
    Ok(score)
}

/// Marks protected groups, picks the channels to keep, and reports every group.
fn choose_channels(
    g: &Graph,
    a: &Analysis,
    config: &PruneConfig,
    report: &mut PruneReport,
) -> Result<BTreeMap<usize, Vec<usize>>, PruneError> {
    let roots = a.roots();
    let mut protected: BTreeMap<usize, String> = BTreeMap::new();
    if config.protect_ends {
        // The first conv (in graph order) and the input of the last weighted layer.
        let order: BTreeMap<kiln_compiler::ir::NodeId, usize> =
            g.nodes().enumerate().map(|(i, (id, _))| (id, i)).collect();
        let producers: Vec<(usize, kiln_compiler::ir::NodeId, usize)> = roots
            .iter()
            .flat_map(|&r| {
                let order = &order;
                a.groups[r].producers.iter().map(move |p| (order.get(&p.node).copied().unwrap_or(0), p.node, r))
            })
            .collect();
        if let Some(&(_, id, r)) =
            producers.iter().filter(|(_, id, _)| g.node(*id).op_type.ends_with("Conv")).min_by_key(|p| p.0)
        {
            protected.insert(r, format!("first layer {} (protected)", node_name(g, id)));
        }
        let last =
            g.nodes().filter(|(_, n)| matches!(n.op_type.as_str(), "Conv" | "FusedConv" | "Gemm" | "MatMul")).last();
        if let Some((id, n)) = last
            && let Some(x) = n.input(0)
            && let Some((_, l)) = a.tracked.get(&x)
        {
            for s in l {
                if let channels::Seg::Group(gr, _) = s
                    && a.groups[a.root(*gr)].kind == Kind::Channels
                {
                    protected
                        .entry(a.root(*gr))
                        .or_insert_with(|| format!("input of the last layer {} (protected)", node_name(g, id)));
                }
            }
        }
    }
    // Prunable roots per kind, with scores.
    let mut keep = BTreeMap::new();
    for kind in [Kind::Channels, Kind::Ffn] {
        let ratio = if kind == Kind::Channels { config.channels } else { config.ffn };
        let kind_name = if kind == Kind::Channels { "channels" } else { "ffn" };
        let mut units = Vec::new();
        let mut scores = Vec::new();
        for &r in roots.iter().filter(|&&r| a.groups[r].kind == kind) {
            let grp = &a.groups[r];
            let mut layers: Vec<String> = grp.producers.iter().map(|p| node_name(g, p.node)).collect();
            layers.sort();
            let skipped = grp.blocked.clone().or_else(|| protected.get(&r).cloned());
            if skipped.is_some() || ratio == 0.0 {
                report.groups.push(GroupReport { kind: kind_name.into(), layers, size: grp.size, removed: 0, skipped });
                continue;
            }
            let mut s = group_scores(g, a, r, config.norm)?;
            let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
            if mean > 0.0 {
                s.iter_mut().for_each(|x| *x /= mean);
            }
            units.push((r, layers));
            scores.push(s);
        }
        let all: Vec<(f64, usize, usize)> =
            scores.iter().enumerate().flat_map(|(u, s)| s.iter().enumerate().map(move |(i, &x)| (x, u, i))).collect();
        let removals = removals(&scores, &all, ratio, config.scope);
        let noun = if kind == Kind::Channels { "channels" } else { "neurons" };
        for (u, (r, layers)) in units.into_iter().enumerate() {
            let size = a.groups[r].size;
            let mut remove = removals[u];
            if kind == Kind::Channels && config.align > 1 {
                let kept = (size - remove).div_ceil(config.align) * config.align;
                remove = size - kept.min(size);
            }
            let k = keep_after_removing(&scores[u], remove);
            let removed = size - k.len();
            if removed > 0 {
                for p in &a.groups[r].producers {
                    report.decisions.insert(node_name(g, p.node), format!("pruned {removed}/{size} {noun}"));
                }
                keep.insert(r, k);
            }
            report.groups.push(GroupReport { kind: kind_name.into(), layers, size, removed, skipped: None });
        }
    }
    Ok(keep)
}
