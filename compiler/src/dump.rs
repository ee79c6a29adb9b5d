//! A readable text dump of the IR, stable enough for golden tests.

use std::fmt::Write;

use crate::ir::{AttrValue, Graph, Model, ValueDef, ValueId};
use crate::tensor::Tensor;

/// The whole model as text.
pub fn dump_model(model: &Model) -> String {
    let mut s = String::new();
    let opsets: Vec<String> = model
        .opset_import
        .iter()
        .map(|o| format!("{}={}", if o.domain().is_empty() { "ai.onnx" } else { o.domain() }, o.version.unwrap_or(0)))
        .collect();
    let _ = writeln!(
        s,
        "model ir_version={} opsets=[{}] producer='{} {}'",
        model.ir_version.unwrap_or(0),
        opsets.join(", "),
        model.producer_name.as_deref().unwrap_or(""),
        model.producer_version.as_deref().unwrap_or("")
    );
    if let Some(g) = &model.graph {
        dump_graph_into(g, 0, &mut s);
    }
    for f in &model.functions {
        let _ = writeln!(s, "function {}.{}", f.domain.as_deref().unwrap_or(""), f.name.as_deref().unwrap_or(""));
        dump_graph_into(&f.body, 1, &mut s);
    }
    s
}

/// One graph as text.
pub fn dump_graph(g: &Graph) -> String {
    let mut s = String::new();
    dump_graph_into(g, 0, &mut s);
    s
}

fn value_ref(g: &Graph, v: Option<ValueId>) -> String {
    match v {
        None => "_".to_string(),
        Some(v) => format!("%{}", g.value(v).name),
    }
}

fn typed(g: &Graph, v: ValueId) -> String {
    let val = g.value(v);
    match &val.ty {
        Some(t) => format!("%{}: {t}", val.name),
        None => format!("%{}", val.name),
    }
}

fn tensor_summary(t: &Tensor) -> String {
    let dims: Vec<String> = t.dims().iter().map(ToString::to_string).collect();
    if t.len() <= 4
        && t.dtype() != crate::DataType::String
        && let Ok(vals) = t.to_f64_vec()
    {
        let vals: Vec<String> = vals.iter().map(|v| format!("{v}")).collect();
        return format!("{}[{}] = [{}]", t.dtype(), dims.join(","), vals.join(", "));
    }
    format!("{}[{}]", t.dtype(), dims.join(","))
}

fn attr_text(a: &AttrValue) -> String {
    let list = |v: Vec<String>| format!("[{}]", v.join(","));
    match a {
        AttrValue::Float(f) => format!("{f}"),
        AttrValue::Int(i) => format!("{i}"),
        AttrValue::String(b) => format!("{:?}", String::from_utf8_lossy(b)),
        AttrValue::Tensor(t) => tensor_summary(t),
        AttrValue::Graph(_) => "<graph>".into(),
        AttrValue::SparseTensor(_) => "<sparse tensor>".into(),
        AttrValue::Type(t) => t.to_string(),
        AttrValue::Floats(v) => list(v.iter().map(|x| format!("{x}")).collect()),
        AttrValue::Ints(v) => list(v.iter().map(|x| format!("{x}")).collect()),
        AttrValue::Strings(v) => list(v.iter().map(|b| format!("{:?}", String::from_utf8_lossy(b))).collect()),
        AttrValue::Tensors(v) => list(v.iter().map(|t| tensor_summary(t)).collect()),
        AttrValue::Graphs(v) => format!("<{} graphs>", v.len()),
        AttrValue::SparseTensors(v) => format!("<{} sparse tensors>", v.len()),
        AttrValue::Types(v) => list(v.iter().map(ToString::to_string).collect()),
        AttrValue::Raw(_) => "<unparsed>".into(),
    }
}

fn dump_graph_into(g: &Graph, depth: usize, s: &mut String) {
    let pad = "  ".repeat(depth);
    let _ = writeln!(s, "{pad}graph '{}' {{", g.name.as_deref().unwrap_or(""));
    for &v in g.inputs() {
        let kind =
            if matches!(g.value(v).def(), ValueDef::Initializer(_)) { "input (with initializer)" } else { "input" };
        let _ = writeln!(s, "{pad}  {kind} {}", typed(g, v));
    }
    for &v in g.initializers() {
        if let Some(t) = g.value(v).initializer() {
            let _ = writeln!(s, "{pad}  init %{} = {}", g.value(v).name, tensor_summary(t));
        }
    }
    for (_, n) in g.nodes() {
        let outs: Vec<String> = n.outputs().iter().map(|&o| value_ref(g, o)).collect();
        let ins: Vec<String> = n.inputs().iter().map(|&i| value_ref(g, i)).collect();
        let op = if n.domain().is_empty() { n.op_type.clone() } else { format!("{}.{}", n.domain(), n.op_type) };
        let attrs: Vec<String> = n
            .attributes
            .iter()
            .filter(|a| !matches!(a.value, AttrValue::Graph(_) | AttrValue::Graphs(_)))
            .map(|a| format!("{}={}", a.name, attr_text(&a.value)))
            .collect();
        let attrs = if attrs.is_empty() { String::new() } else { format!(" {{{}}}", attrs.join(", ")) };
        let name = n.name.as_deref().filter(|n| !n.is_empty()).map(|n| format!("  # {n}")).unwrap_or_default();
        let _ = writeln!(s, "{pad}  {} = {op}({}){attrs}{name}", outs.join(", "), ins.join(", "));
        for a in &n.attributes {
            match &a.value {
                AttrValue::Graph(sg) => {
                    let _ = writeln!(s, "{pad}    {}:", a.name);
                    dump_graph_into(sg, depth + 3, s);
                }
                AttrValue::Graphs(gs) => {
                    for (i, sg) in gs.iter().enumerate() {
                        let _ = writeln!(s, "{pad}    {}[{i}]:", a.name);
                        dump_graph_into(sg, depth + 3, s);
                    }
                }
                _ => {}
            }
        }
    }
    for &v in g.outputs() {
        let _ = writeln!(s, "{pad}  output {}", typed(g, v));
    }
    let _ = writeln!(s, "{pad}}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataType;
    use crate::ir::{Attribute, NodeSpec, TensorType, Type};
    use std::sync::Arc;

    #[test]
    fn dump_is_readable() {
        let mut g = Graph::new();
        g.name = Some("g".into());
        let x = g.add_input("x", Some(Type::tensor(TensorType::with_dims(DataType::F32, &[1, 4]))));
        let w = g.add_initializer("w", Arc::new(Tensor::from_slice(vec![4], &[1.0f32, 2.0, 3.0, 4.0]).unwrap()));
        let n =
            g.add_node(NodeSpec::new("Mul").name("scale").inputs([x, w]).outputs(["y"]).attr(Attribute::int("k", 2)));
        let y = g.node(n).output(0).unwrap();
        g.push_output(y);
        let text = dump_graph(&g);
        let expected = "graph 'g' {\n  input %x: f32[1,4]\n  init %w = f32[4] = [1, 2, 3, 4]\n  %y = Mul(%x, %w) {k=2}  # scale\n  output %y\n}\n";
        assert_eq!(text, expected);
    }
}
