//! The `Pass` trait and the `PassManager` that runs an ordered list of passes, verifies the
//! model after each, and records what every pass changed.

use std::time::Instant;

use serde::Serialize;

use crate::ir::Model;
use crate::verify::{Problem, Severity, verify_model};

/// Whether a pass changed the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changed {
    Yes,
    No,
}

impl Changed {
    pub fn from_bool(b: bool) -> Changed {
        if b { Changed::Yes } else { Changed::No }
    }

    pub fn any(self, other: Changed) -> Changed {
        Changed::from_bool(self == Changed::Yes || other == Changed::Yes)
    }
}

/// A pass failed. "Does not apply" is never an error: that is `Ok(Changed::No)`.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("pass {pass}: node {node}: {message}")]
    Node { pass: String, node: String, message: String },
    #[error("pass {pass}: {message}")]
    Failed { pass: String, message: String },
    #[error("pass {pass} left an invalid model:\n{}", .problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { pass: String, problems: Vec<Problem> },
}

/// One entry of a pass's report: what it did, or why a candidate did not match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportEntry {
    /// `applied`, `skipped`, `missed`…
    pub kind: String,
    /// The rule or sub-step (`fold-constant`, `conv-bn`…).
    pub rule: String,
    /// The node(s) concerned.
    pub node: String,
    pub detail: String,
}

/// What a pass reports to the manager while it runs.
#[derive(Debug, Default)]
pub struct PassContext {
    entries: Vec<ReportEntry>,
}

impl PassContext {
    pub fn new() -> PassContext {
        PassContext::default()
    }

    /// Records that `rule` changed `node`.
    pub fn applied(&mut self, rule: &str, node: impl Into<String>, detail: impl Into<String>) {
        self.push("applied", rule, node, detail);
    }

    /// Records that a candidate for `rule` at `node` was left alone, and why.
    pub fn missed(&mut self, rule: &str, node: impl Into<String>, why: impl Into<String>) {
        self.push("missed", rule, node, why);
    }

    /// Records that `node` was skipped (for example: its shape is unknown).
    pub fn skipped(&mut self, rule: &str, node: impl Into<String>, why: impl Into<String>) {
        self.push("skipped", rule, node, why);
    }

    fn push(&mut self, kind: &str, rule: &str, node: impl Into<String>, detail: impl Into<String>) {
        self.entries.push(ReportEntry {
            kind: kind.into(),
            rule: rule.into(),
            node: node.into(),
            detail: detail.into(),
        });
    }

    pub fn entries(&self) -> &[ReportEntry] {
        &self.entries
    }

    fn take(&mut self) -> Vec<ReportEntry> {
        std::mem::take(&mut self.entries)
    }
}

/// A rewrite of the model.
pub trait Pass {
    /// A stable kebab-case name used by `--disable` and in reports.
    fn name(&self) -> &'static str;
    fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError>;
}

/// The record of one pass run.
#[derive(Debug, Clone, Serialize)]
pub struct PassRecord {
    pub pass: String,
    /// Fixed-point iteration this run belongs to (from 1).
    pub iteration: usize,
    pub changed: bool,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub millis: f64,
    pub entries: Vec<ReportEntry>,
}

/// What a pipeline run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PipelineReport {
    pub passes: Vec<PassRecord>,
    pub iterations: usize,
    /// Passes named in `disabled` that were not run.
    pub disabled: Vec<String>,
    /// Set when `stop_after` ended the run early.
    pub stopped_after: Option<usize>,
}

impl PipelineReport {
    /// All entries of a kind (`applied`, `missed`, `skipped`) over every pass.
    pub fn entries_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a ReportEntry> + 'a {
        self.passes.iter().flat_map(|p| p.entries.iter()).filter(move |e| e.kind == kind)
    }
}

/// Runs passes in order, repeating the list until nothing changes (bounded).
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    max_iterations: usize,
    verify: bool,
    disabled: Vec<String>,
    stop_after: Option<usize>,
}

impl Default for PassManager {
    fn default() -> Self {
        PassManager::new()
    }
}

fn model_nodes(m: &Model) -> usize {
    let mut n = 0;
    if let Some(g) = &m.graph {
        g.visit_graphs(&mut |sg| n += sg.node_count());
    }
    n
}

impl PassManager {
    /// Verification after each pass is on in debug builds and tests, off in release.
    pub fn new() -> PassManager {
        PassManager {
            passes: Vec::new(),
            max_iterations: 8,
            verify: cfg!(debug_assertions),
            disabled: Vec::new(),
            stop_after: None,
        }
    }

    pub fn with(mut self, pass: impl Pass + 'static) -> PassManager {
        self.passes.push(Box::new(pass));
        self
    }

    pub fn add_boxed(mut self, pass: Box<dyn Pass>) -> PassManager {
        self.passes.push(pass);
        self
    }

    pub fn max_iterations(mut self, n: usize) -> PassManager {
        self.max_iterations = n.max(1);
        self
    }

    pub fn verify(mut self, on: bool) -> PassManager {
        self.verify = on;
        self
    }

    /// Passes not to run, by name (bisection: `--disable`).
    pub fn disable(mut self, names: impl IntoIterator<Item = String>) -> PassManager {
        self.disabled.extend(names);
        self
    }

    /// Stop after this many pass runs in total (bisection: `--stop-after`).
    pub fn stop_after(mut self, n: Option<usize>) -> PassManager {
        self.stop_after = n;
        self
    }

    /// Names of the passes, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs the pipeline to a fixed point.
    pub fn run(&self, model: &mut Model) -> Result<PipelineReport, PassError> {
        let mut report = PipelineReport {
            disabled: self
                .disabled
                .iter()
                .filter(|d| self.passes.iter().any(|p| p.name() == d.as_str()))
                .cloned()
                .collect(),
            ..PipelineReport::default()
        };
        let mut runs = 0usize;
        for iteration in 1..=self.max_iterations {
            report.iterations = iteration;
            let mut any = false;
            for pass in &self.passes {
                if self.disabled.iter().any(|d| d == pass.name()) {
                    continue;
                }
                if self.stop_after.is_some_and(|n| runs >= n) {
                    report.stopped_after = Some(runs);
                    return Ok(report);
                }
                runs += 1;
                let mut cx = PassContext::new();
                let before = model_nodes(model);
                let start = Instant::now();
                let changed = pass.run(model, &mut cx)?;
                let millis = start.elapsed().as_secs_f64() * 1000.0;
                if self.verify && changed == Changed::Yes {
                    let problems: Vec<Problem> =
                        verify_model(model).into_iter().filter(|p| p.severity == Severity::Error).collect();
                    if !problems.is_empty() {
                        return Err(PassError::Invalid { pass: pass.name().to_string(), problems });
                    }
                }
                any |= changed == Changed::Yes;
                report.passes.push(PassRecord {
                    pass: pass.name().to_string(),
                    iteration,
                    changed: changed == Changed::Yes,
                    nodes_before: before,
                    nodes_after: model_nodes(model),
                    millis,
                    entries: cx.take(),
                });
            }
            if !any {
                break;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Graph, NodeSpec};

    /// Removes one Identity per run, to exercise the fixed point.
    struct DropOneIdentity;
    impl Pass for DropOneIdentity {
        fn name(&self) -> &'static str {
            "drop-one-identity"
        }
        fn run(&self, model: &mut Model, cx: &mut PassContext) -> Result<Changed, PassError> {
            let Some(g) = model.graph.as_mut() else { return Ok(Changed::No) };
            let Some((id, input, output)) =
                g.nodes().find(|(_, n)| n.is_onnx("Identity")).map(|(id, n)| (id, n.input(0), n.output(0)))
            else {
                return Ok(Changed::No);
            };
            let (Some(i), Some(o)) = (input, output) else { return Ok(Changed::No) };
            if g.is_output(o) {
                cx.missed("identity", format!("{id}"), "feeds a graph output");
                return Ok(Changed::No);
            }
            g.replace_uses(o, i);
            g.remove_node(id);
            cx.applied("identity", format!("{id}"), "removed");
            Ok(Changed::Yes)
        }
    }

    fn chain(n: usize) -> Model {
        let mut g = Graph::new();
        let mut v = g.add_input("x", None);
        for i in 0..n {
            let id = g.add_node(NodeSpec::new("Identity").inputs([v]).outputs([format!("i{i}")]));
            v = g.node(id).output(0).unwrap();
        }
        let r = g.add_node(NodeSpec::new("Relu").inputs([v]).outputs(["y"]));
        let y = g.node(r).output(0).unwrap();
        g.push_output(y);
        Model { graph: Some(g), ..Model::default() }
    }

    #[test]
    fn runs_to_a_fixed_point_and_reports() {
        let mut m = chain(3);
        let report = PassManager::new().with(DropOneIdentity).max_iterations(10).run(&mut m).unwrap();
        assert_eq!(m.graph.as_ref().unwrap().node_count(), 1);
        assert_eq!(report.entries_of("applied").count(), 3);
        assert_eq!(report.iterations, 4);
    }

    #[test]
    fn stop_after_and_disable_bisect() {
        let mut m = chain(3);
        let report = PassManager::new().with(DropOneIdentity).stop_after(Some(1)).run(&mut m).unwrap();
        assert_eq!(m.graph.as_ref().unwrap().node_count(), 3);
        assert_eq!(report.stopped_after, Some(1));
        let mut m = chain(3);
        let report =
            PassManager::new().with(DropOneIdentity).disable(["drop-one-identity".to_string()]).run(&mut m).unwrap();
        assert_eq!(m.graph.as_ref().unwrap().node_count(), 4);
        assert_eq!(report.disabled, vec!["drop-one-identity".to_string()]);
    }
}
