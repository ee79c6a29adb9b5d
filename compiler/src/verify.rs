//! The verifier: reports every problem of a graph at once, each naming its node or value.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::ir::{AttrValue, Graph, Model, NodeId, ValueDef, ValueId};

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// One problem, located by graph path and node or value name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// `main`, or `main/'loop1' (Loop).body` for subgraphs.
    pub graph: String,
    /// The node (`'conv1' (Conv)`) or value (`value 'x'`) concerned.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}: {}: {}: {}", self.graph, self.location, self.message)
    }
}

/// The problems that made a graph invalid.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} problem(s) in the graph:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
pub struct VerifyError(pub Vec<Problem>);

/// Every problem of a model (errors and warnings).
pub fn verify_model(model: &Model) -> Vec<Problem> {
    let mut out = Vec::new();
    match &model.graph {
        Some(g) => verify_graph_in(g, "main", &HashSet::new(), &mut out),
        None => out.push(Problem {
            severity: Severity::Error,
            graph: "model".into(),
            location: "model".into(),
            message: "the model has no graph".into(),
        }),
    }
    for f in &model.functions {
        let name = format!("function '{}'", f.name.as_deref().unwrap_or(""));
        let inputs: HashSet<String> = f.body.inputs().iter().map(|&v| f.body.value(v).name.clone()).collect();
        verify_graph_in(&f.body, &name, &inputs, &mut out);
    }
    out
}

/// Errors only, as a `Result`.
pub fn check_model(model: &Model) -> Result<(), VerifyError> {
    let errors: Vec<Problem> = verify_model(model).into_iter().filter(|p| p.severity == Severity::Error).collect();
    if errors.is_empty() { Ok(()) } else { Err(VerifyError(errors)) }
}

/// Every problem of a top-level graph.
pub fn verify_graph(g: &Graph) -> Vec<Problem> {
    let mut out = Vec::new();
    verify_graph_in(g, "main", &HashSet::new(), &mut out);
    out
}

fn verify_graph_in(g: &Graph, path: &str, outer: &HashSet<String>, out: &mut Vec<Problem>) {
    let mut push = |severity, location: String, message: String| {
        out.push(Problem { severity, graph: path.to_string(), location, message });
    };
    let vname = |v: ValueId| format!("value '{}'", g.value(v).name);

    // Duplicate definitions of a name.
    let mut defined: HashMap<&str, ValueId> = HashMap::new();
    for (id, v) in g.values() {
        if v.name.is_empty() || matches!(v.def(), ValueDef::Outer | ValueDef::Detached) {
            continue;
        }
        if let Some(&first) = defined.get(v.name.as_str()) {
            push(
                Severity::Error,
                vname(id),
                format!("defined twice: by {} and by {}", def_label(g, first), def_label(g, id)),
            );
        } else {
            defined.insert(&v.name, id);
        }
    }

    // Uses of undefined or removed values.
    let resolvable = |v: ValueId| match g.value(v).def() {
        ValueDef::Outer => outer.contains(&g.value(v).name),
        ValueDef::Detached => false,
        _ => true,
    };
    for (nid, n) in g.nodes() {
        if n.op_type.is_empty() {
            push(Severity::Error, n.label(nid), "has an empty op_type".into());
        }
        for (i, inp) in n.inputs().iter().enumerate() {
            if let Some(v) = *inp
                && !resolvable(v)
            {
                push(
                    Severity::Error,
                    n.label(nid),
                    format!("input {i} '{}' is not defined by any node, input or initializer", g.value(v).name),
                );
            }
        }
        let mut seen = HashSet::new();
        for a in &n.attributes {
            if !seen.insert(a.name.as_str()) {
                push(Severity::Error, n.label(nid), format!("attribute '{}' appears twice", a.name));
            }
        }
        check_control_flow(g, nid, &mut push);
    }
    for &o in g.outputs() {
        if !resolvable(o) {
            push(Severity::Error, vname(o), "is a graph output but nothing defines it".into());
        }
    }

    // Initializers against their declared types.
    for &v in g.initializers() {
        let val = g.value(v);
        let (Some(t), Some(ty)) = (val.initializer(), g.tensor_type(v)) else {
            continue;
        };
        if let Some(dt) = ty.dtype()
            && dt != t.dtype()
        {
            push(Severity::Error, vname(v), format!("declared as {dt} but its initializer holds {}", t.dtype()));
        }
        if let Some(dims) = ty.concrete_dims()
            && dims != t.dims()
        {
            push(
                Severity::Error,
                vname(v),
                format!("declared with shape {dims:?} but its initializer has shape {:?}", t.dims()),
            );
        }
    }

    check_order(g, &mut push);

    // Subgraphs see every name of this graph and of the enclosing scopes.
    let mut scope: HashSet<String> = outer.clone();
    scope.extend(defined.keys().map(|s| s.to_string()));
    for (nid, n) in g.nodes() {
        for a in &n.attributes {
            let graphs: Vec<&Graph> = match &a.value {
                AttrValue::Graph(sg) => vec![sg.as_ref()],
                AttrValue::Graphs(gs) => gs.iter().collect(),
                _ => continue,
            };
            for sg in graphs {
                let sub_path = format!("{path}/{}.{}", n.label(nid), a.name);
                verify_graph_in(sg, &sub_path, &scope, out);
            }
        }
    }
}

/// Arity checks that need no shape inference: If branches, Loop and Scan bodies.
fn check_control_flow(g: &Graph, nid: NodeId, push: &mut impl FnMut(Severity, String, String)) {
    let n = g.node(nid);
    if !n.domain().is_empty() {
        return;
    }
    let graph_attr = |name: &str| match n.attributes.iter().find(|a| a.name == name).map(|a| &a.value) {
        Some(AttrValue::Graph(sg)) => Some(sg.as_ref()),
        _ => None,
    };
    match n.op_type.as_str() {
        "If" => {
            for branch in ["then_branch", "else_branch"] {
                match graph_attr(branch) {
                    Some(sg) if sg.outputs().len() != n.outputs().len() => push(
                        Severity::Error,
                        n.label(nid),
                        format!("{branch} has {} outputs but the If has {}", sg.outputs().len(), n.outputs().len()),
                    ),
                    Some(_) => {}
                    None => push(Severity::Error, n.label(nid), format!("has no graph attribute '{branch}'")),
                }
            }
        }
        "Loop" => match graph_attr("body") {
            Some(body) => {
                let carried = n.inputs().len().saturating_sub(2);
                if body.inputs().len() != carried + 2 {
                    push(
                        Severity::Error,
                        n.label(nid),
                        format!(
                            "body takes {} inputs but the Loop passes {} (iteration, condition and {carried} carried)",
                            body.inputs().len(),
                            carried + 2
                        ),
                    );
                }
                if body.outputs().len() < carried + 1 {
                    push(
                        Severity::Error,
                        n.label(nid),
                        format!("body has {} outputs, fewer than condition + {carried} carried", body.outputs().len()),
                    );
                }
            }
            None => push(Severity::Error, n.label(nid), "has no graph attribute 'body'".into()),
        },
        "Scan" if graph_attr("body").is_none() => {
            push(Severity::Error, n.label(nid), "has no graph attribute 'body'".into());
        }
        _ => {}
    }
}

/// Cycles are errors (naming the nodes on one); a valid DAG listed out of order is a warning.
fn check_order(g: &Graph, push: &mut impl FnMut(Severity, String, String)) {
    let ids: Vec<NodeId> = g.nodes().map(|(id, _)| id).collect();
    let pos: HashMap<NodeId, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let preds = |i: usize| -> Vec<usize> {
        let n = g.node(ids[i]);
        n.inputs()
            .iter()
            .flatten()
            .filter_map(|&v| g.value(v).producer())
            .filter_map(|p| pos.get(&p).copied())
            .collect()
    };
    let mut out_of_order = None;
    for i in 0..ids.len() {
        if let Some(&p) = preds(i).iter().find(|&&p| p >= i) {
            out_of_order.get_or_insert((i, p));
        }
    }
    let Some((first_i, _)) = out_of_order else {
        return;
    };

    // Kahn's algorithm: whatever is left unsorted lies on or behind a cycle.
    let mut indegree = vec![0usize; ids.len()];
    let mut succs = vec![Vec::new(); ids.len()];
    for (i, deg) in indegree.iter_mut().enumerate() {
        for p in preds(i) {
            *deg += 1;
            succs[p].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..ids.len()).filter(|&i| indegree[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for &s in &succs[i] {
            indegree[s] -= 1;
            if indegree[s] == 0 {
                ready.push(s);
            }
        }
    }
    if done == ids.len() {
        let n = g.node(ids[first_i]);
        push(
            Severity::Warning,
            n.label(ids[first_i]),
            "uses a value produced by a later node: the graph is not topologically sorted".into(),
        );
        return;
    }
    // Walk predecessors among the unsorted nodes until one repeats: that is a cycle.
    let stuck: Vec<usize> = (0..ids.len()).filter(|&i| indegree[i] > 0).collect();
    let mut path = vec![stuck[0]];
    let mut seen = HashMap::from([(stuck[0], 0usize)]);
    let start = loop {
        let cur = *path.last().unwrap_or(&stuck[0]);
        let Some(next) = preds(cur).into_iter().find(|p| indegree[*p] > 0) else {
            break 0;
        };
        if let Some(&at) = seen.get(&next) {
            break at;
        }
        seen.insert(next, path.len());
        path.push(next);
    };
    let mut cycle: Vec<String> = path[start..].iter().rev().map(|&i| g.node(ids[i]).label(ids[i])).collect();
    cycle.push(cycle[0].clone());
    let first = cycle[0].clone();
    push(Severity::Error, first, format!("is on a cycle: {}", cycle.join(" -> ")));
}

fn def_label(g: &Graph, v: ValueId) -> String {
    match g.value(v).def() {
        ValueDef::Input => "a graph input".into(),
        ValueDef::Initializer(_) => "an initializer".into(),
        ValueDef::Node { node, output } => {
            format!("output {output} of {}", g.node(*node).label(*node))
        }
        ValueDef::Outer => "an enclosing scope".into(),
        ValueDef::Detached => "a removed node".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Graph, NodeSpec};

    #[test]
    fn reports_every_problem_with_names() {
        let mut g = Graph::new();
        let x = g.add_input("x", None);
        let ghost = g.add_outer("ghost");
        let a = g.add_node(NodeSpec::new("Add").name("add1").inputs([x, ghost]).outputs(["a"]));
        let a_out = g.node(a).output(0).unwrap();
        g.add_node(NodeSpec::new("Relu").name("dup").inputs([a_out]).outputs(["x"]));
        g.push_output(a_out);
        let problems = verify_graph(&g);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|p| p.contains("'add1' (Add)") && p.contains("'ghost' is not defined")), "{text:?}");
        assert!(text.iter().any(|p| p.contains("value 'x'") && p.contains("defined twice")), "{text:?}");
        assert_eq!(problems.len(), 2, "{text:?}");
    }

    #[test]
    fn finds_a_cycle() {
        let mut g = Graph::new();
        let x = g.add_input("x", None);
        let b_out = g.add_outer("b");
        let a = g.add_node(NodeSpec::new("Add").name("A").inputs([x, b_out]).outputs(["a"]));
        let a_out = g.node(a).output(0).unwrap();
        let b = g.add_node(NodeSpec::new("Relu").name("B").inputs([a_out]).outputs([""]));
        g.bind_output(b, 0, b_out);
        g.push_output(a_out);
        let problems = verify_graph(&g);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].severity, Severity::Error);
        assert!(problems[0].message.contains("cycle"), "{}", problems[0]);
        assert!(problems[0].message.contains("'A' (Add)") && problems[0].message.contains("'B' (Relu)"));
    }

    #[test]
    fn clean_graph_has_no_problems() {
        let mut g = Graph::new();
        let x = g.add_input("x", None);
        let a = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["y"]));
        let y = g.node(a).output(0).unwrap();
        g.push_output(y);
        assert!(verify_graph(&g).is_empty());
    }
}
