//! `eliminate-dead-code`: nodes whose outputs nobody reads, and initializers nobody reads.
//!
//! "Read" means: used by a node, listed as a graph output, or named by a subgraph of a node of
//! the same graph (captures are by name, not in use lists). Graph inputs stay, initializers
//! that are also graph inputs included. Nodes of unknown domains may have side effects and
//! stay.

use std::collections::HashSet;

use kiln_compiler::ir::{Graph, Model, ValueDef, ValueId};
use kiln_compiler::pass::{Changed, Pass, PassContext, PassError};

use super::common::{Scope, captured, is_used, label, may_have_side_effects, prune_value_info, visit_with_scope};

const RULE: &str = "eliminate-dead-code";

/// Removes unused nodes and initializers in the main graph and every subgraph.
#[derive(Debug, Clone, Copy, Default)]
pub struct EliminateDeadCode;

impl Pass for EliminateDeadCode {
    fn name(&self) -> &'static str {
        RULE
    }

    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
        let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
        let mut changed = false;
        visit_with_scope(g, &Scope::new(), "main", &mut |g, _, path| changed |= dce(g, path, cx));
        Ok(Changed::from_bool(changed))
    }
}

fn dce(g: &mut Graph, path: &str, cx: &mut PassContext) -> bool {
    let mut changed = false;
    let mut reported: HashSet<String> = HashSet::new();
    loop {
        // Removing a node with subgraphs can free what they captured: recompute each sweep.
        let captured = captured(g);
        let mut removed = 0;
        for id in g.node_ids().into_iter().rev() {
            let Some(n) = g.get_node(id) else { continue };
            let dead = n.outputs().iter().flatten().all(|&v| !is_used(g, v, &captured));
            if !dead {
                continue;
            }
            if may_have_side_effects(n) {
                let l = label(path, g, id);
                if reported.insert(l.clone()) {
                    cx.missed(RULE, l, format!("unused, but domain '{}' may have side effects", n.domain()));
                }
                continue;
            }
            cx.applied(RULE, label(path, g, id), "outputs unused");
            g.remove_node(id);
            removed += 1;
        }
        let dead: Vec<ValueId> = g
            .initializers()
            .iter()
            .copied()
            .filter(|&v| {
                matches!(g.value(v).def(), ValueDef::Initializer(_))
                    && !g.inputs().contains(&v)
                    && !is_used(g, v, &captured)
            })
            .collect();
        for &v in &dead {
            cx.applied(RULE, format!("{path}: initializer '{}'", g.value(v).name), "unused");
        }
        removed += g.remove_initializers(&dead);
        if removed == 0 {
            break;
        }
        changed = true;
    }
    if changed {
        prune_value_info(g);
    }
    changed
}
