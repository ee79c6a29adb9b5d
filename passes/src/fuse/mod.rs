//! Operator fusion as rules.
//!
//! A [`Rule`] names the root operators it starts from, matches a pattern around a root node
//! with guards, and returns a [`Patch`]; a [`FusionPass`] runs a rule set over every graph and
//! subgraph to a fixed point, applies each patch atomically and reports every applied fusion and
//! every candidate that did not match, with the reason. Adding a fusion is one rule plus one
//! line in [`PORTABLE`] or [`ORT`].
//!
//! Two rule sets: `fuse-portable` (standard ONNX operators, good for every target) and
//! `fuse-ort` (ONNX Runtime's `com.microsoft` contrib operators; only for ORT targets).
//! Rules never rewrite to something slower, and commutative operands are matched by writing
//! both orders in the pattern, never by a generic commutativity search.

mod attention;
mod matcher;
mod ort;
mod patch;
mod portable;

use std::collections::HashMap;

use kiln_compiler::ir::{Graph, Model, NodeId, OpsetImport};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

pub use matcher::{Matcher, NoMatch, OrMiss, ensure, here};
pub use ort::{FUSED_CONV_BEFORE_INT8, INT8_DEPTHWISE_SLOWER_THAN_FLOAT, INT8_MIN_CONV_WEIGHT};
pub use patch::{Applied, MS_DOMAIN, NewNode, NewOutput, PValue, Patch, captured_values, restore_topological_order};

/// One fusion: a pattern rooted at one of `roots`, its guards and its rewrite.
pub trait Rule: Sync {
    /// Stable kebab-case name used in reports (`conv-bn`, `attention`…).
    fn name(&self) -> &'static str;
    /// The operators a match starts from, as (domain, op type); `""` is the ONNX domain.
    fn roots(&self) -> &'static [(&'static str, &'static str)];
    /// Matches at `root` and returns the rewrite, or why not.
    fn apply(&self, m: &Matcher<'_>, root: NodeId) -> Result<Patch, NoMatch>;
}

/// Standard ONNX fusions, good for every target, in the order they are tried.
pub static PORTABLE: &[&dyn Rule] = &[
    &portable::ConvBatchNorm,
    &portable::ConvMul,
    &portable::ConvAdd,
    &portable::MatMulAddGemm,
    &portable::LayerNorm,
    &portable::GeluErf,
];

/// ONNX Runtime contrib fusions (`com.microsoft`), in the order they are tried.
pub static ORT: &[&dyn Rule] = &[
    &ort::LayerNormOrt,
    &ort::GeluErfOrt,
    &ort::FastGelu,
    &ort::BiasGelu,
    &ort::BiasFastGelu,
    &attention::Attention,
    &ort::EmbedLayerNorm,
    &ort::SkipLayerNorm,
    &ort::FUSED_CONV,
    &ort::FusedGemm,
];

/// Runs a rule set to a fixed point over a model's graphs.
pub struct FusionPass {
    name: &'static str,
    rules: Vec<&'static dyn Rule>,
    max_sweeps: usize,
}

impl FusionPass {
    pub fn new(name: &'static str, rules: impl IntoIterator<Item = &'static dyn Rule>) -> FusionPass {
        FusionPass { name, rules: rules.into_iter().collect(), max_sweeps: 32 }
    }

    /// `fuse-portable`: the standard ONNX rule set.
    pub fn portable() -> FusionPass {
        FusionPass::new("fuse-portable", PORTABLE.iter().copied())
    }

    /// `fuse-ort`: the ONNX Runtime contrib rule set.
    pub fn ort() -> FusionPass {
        FusionPass::new("fuse-ort", ORT.iter().copied())
    }

    /// Bounds the sweeps over one graph (each sweep visits every node once).
    pub fn max_sweeps(mut self, n: usize) -> FusionPass {
        self.max_sweeps = n.max(1);
        self
    }

    pub fn rule_names(&self) -> Vec<&'static str> {
        self.rules.iter().map(|r| r.name()).collect()
    }

    fn index(&self) -> HashMap<(&'static str, &'static str), Vec<&'static dyn Rule>> {
        let mut idx: HashMap<(&'static str, &'static str), Vec<&'static dyn Rule>> = HashMap::new();
        for r in &self.rules {
            for &root in r.roots() {
                idx.entry(root).or_default().push(*r);
            }
        }
        idx
    }

    /// Runs the rules over one graph to a fixed point; returns the operator sets new nodes need.
    fn run_graph(
        &self,
        g: &mut Graph,
        path: &str,
        opset: i64,
        idx: &HashMap<(&'static str, &'static str), Vec<&'static dyn Rule>>,
        cx: &mut PassContext,
    ) -> (bool, Vec<(String, i64)>) {
        let mut changed = false;
        let mut domains: Vec<(String, i64)> = Vec::new();
        let mut last_misses: Vec<(&'static str, String, String, bool)> = Vec::new();
        let mut converged = false;
        for _ in 0..self.max_sweeps {
            let mut misses = Vec::new();
            let mut captured = captured_values(g);
            let mut any = false;
            for id in g.node_ids() {
                let Some(node) = g.get_node(id) else { continue };
                let key = (node.domain().to_string(), node.op_type.clone());
                let Some(rules) = idx.get(&(key.0.as_str(), key.1.as_str())) else { continue };
                for rule in rules {
                    if g.get_node(id).is_none() {
                        break;
                    }
                    let label = format!("{path}{}", g.node(id).label(id));
                    let result = {
                        let m = Matcher::new(g, opset, &captured);
                        rule.apply(&m, id)
                    };
                    match result {
                        Ok(patch) => match patch.apply(g) {
                            Ok(done) => {
                                captured = captured_values(g);
                                cx.applied(
                                    rule.name(),
                                    label,
                                    format!(
                                        "{} (-{} nodes, +{}; +{} initializers, -{})",
                                        done.detail,
                                        done.removed,
                                        done.added,
                                        done.initializers_added,
                                        done.initializers_removed
                                    ),
                                );
                                for d in done.domains {
                                    if !domains.iter().any(|(x, _)| *x == d.0) {
                                        domains.push(d);
                                    }
                                }
                                any = true;
                                break;
                            }
                            Err(why) => misses.push((rule.name(), label, format!("patch rejected: {why}"), false)),
                        },
                        Err(NoMatch::NotHere) => {}
                        Err(NoMatch::Missed(why)) => misses.push((rule.name(), label, why, false)),
                        Err(NoMatch::Skipped(why)) => misses.push((rule.name(), label, why, true)),
                    }
                }
            }
            last_misses = misses;
            changed |= any;
            if !any {
                converged = true;
                break;
            }
        }
        // Only the last sweep's misses are final: earlier ones may have matched later.
        for (rule, node, why, skipped) in last_misses {
            if skipped {
                cx.skipped(rule, node, why);
            } else {
                cx.missed(rule, node, why);
            }
        }
        if !converged {
            cx.skipped(self.name, path.to_string(), format!("stopped after {} sweeps", self.max_sweeps));
        }
        (changed, domains)
    }
}

impl Pass for FusionPass {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let idx = self.index();
        let opset = model.opset("").unwrap_or(1);
        let Model { graph, opset_import, .. } = model;
        let Some(g) = graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        let mut domains: Vec<(String, i64)> = Vec::new();
        let mut depth = 0usize;
        g.visit_graphs_mut(&mut |sg| {
            let path =
                if depth == 0 { String::new() } else { format!("{}: ", sg.name.as_deref().unwrap_or("subgraph")) };
            depth += 1;
            let (c, d) = self.run_graph(sg, &path, opset, &idx, cx);
            changed |= c;
            for x in d {
                if !domains.iter().any(|(n, _)| *n == x.0) {
                    domains.push(x);
                }
            }
        });
        for (domain, version) in domains {
            if !opset_import.iter().any(|o| o.domain() == domain) {
                opset_import.push(OpsetImport { domain: Some(domain), version: Some(version) });
            }
        }
        Ok(Changed::from_bool(changed))
    }
}
