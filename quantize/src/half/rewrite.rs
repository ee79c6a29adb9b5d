//! Applies the plans of [`super::decide`] to one graph and, recursively, to its subgraphs:
//! element types of converted values, attributes that set a type, initializers (converted in
//! place, or copied when FP32 uses remain), casts where a use wants another type than its value
//! has, and casts at the graph's outputs.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_compiler::DataType;
use kiln_compiler::Tensor;
use kiln_compiler::ir::{AttrValue, Attribute, Graph, NodeId, NodeSpec, TensorType, Type, TypeKind, ValueDef, ValueId};

use super::decide::{NodePlan, Required, Verdict, captured_wants, decide_graph, orig_dtype};
use super::{Env, HalfError, HalfReport, Scope, ScopeEntry, child_scope, convert_tensor};

fn is_16_or_32(d: Option<DataType>, target: DataType) -> bool {
    d == Some(DataType::F32) || d == Some(target)
}

/// Sets the element type of a value, keeping its shape.
fn set_elem(g: &mut Graph, v: ValueId, d: DataType) {
    let val = g.value_mut(v);
    match val.ty.as_mut().map(|t| &mut t.kind) {
        Some(TypeKind::Tensor(t)) => t.elem_type = Some(d.onnx_code()),
        _ => val.ty = Some(Type::tensor(TensorType::new(d, None))),
    }
}

fn node_key(g: &Graph, id: NodeId, path: &str) -> String {
    let n = g.node(id);
    let label = match n.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("{} {id}", n.op_type),
    };
    if path == "main" { label } else { format!("{path}/{label}") }
}

/// Converts `g`. `required`: the element types its outputs must have (`None`: the main graph's
/// rule from `keep_io_types`, or as they were for a subgraph).
pub(super) fn convert_graph(
    g: &mut Graph,
    env: &Env,
    scope: &Scope,
    required: Option<&Required>,
    path: &str,
    report: &mut HalfReport,
) -> Result<(), HalfError> {
    let target = env.target();
    let keep_io = env.config.keep_io_types;
    // A subgraph output the node does not type (an If output shape inference left untyped)
    // keeps the type it had: both branches then agree as they did before conversion.
    let req: Required = g
        .outputs()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let d = orig_dtype(g, v, scope);
            match required {
                Some(r) => r.get(i).copied().flatten().or(d),
                None if env.is_main && !keep_io && d == Some(DataType::F32) => Some(target),
                None => d,
            }
        })
        .collect();
    let plans = decide_graph(g, env, scope, &req);
    let pre_scope = child_scope(g, scope, None);
    let orig: HashMap<ValueId, Option<DataType>> = g.values().map(|(v, _)| (v, orig_dtype(g, v, scope))).collect();
    let mut storage: HashMap<ValueId, Option<DataType>> = orig.clone();
    let node_ids = g.node_ids();
    let plan_of = |id: NodeId| plans.get(id.index()).and_then(Option::as_ref);

    // Report and output types.
    for &id in &node_ids {
        let Some(plan) = plan_of(id) else { continue };
        let key = node_key(g, id, path);
        match &plan.verdict {
            Verdict::NoFloat => {}
            Verdict::Half => {
                report.nodes_half += 1;
                report.decisions.insert(key, env.config.kind.name().to_string());
            }
            Verdict::Fp32(category, why) => {
                *report.nodes_fp32.entry(category.to_string()).or_default() += 1;
                report.decisions.insert(key, format!("fp32 ({why})"));
            }
        }
        for (o, &half) in plan.half_out.iter().enumerate() {
            if half && let Some(v) = g.node(id).output(o) {
                set_elem(g, v, target);
                storage.insert(v, Some(target));
                report.tensors_converted += 1;
            }
        }
    }
    for &id in &node_ids {
        if let Some(plan) = plan_of(id).filter(|p| !p.attrs.is_empty()) {
            set_type_attributes(g, id, plan, target)?;
        }
    }
    if env.is_main && !keep_io {
        for v in g.runtime_inputs().collect::<Vec<_>>() {
            if orig[&v] == Some(DataType::F32) {
                set_elem(g, v, target);
                storage.insert(v, Some(target));
                report.tensors_converted += 1;
            }
        }
    }
    for (v, val) in g.values() {
        if matches!(val.def(), ValueDef::Outer)
            && let Some(e) = scope.get(&val.name)
        {
            storage.insert(v, e.storage);
        }
    }

    // Initializers: converted in place when every use wants 16-bit, copied when some do.
    let mut captured: HashMap<String, (bool, bool)> = HashMap::new();
    for &id in &node_ids {
        captured_wants(g, id, env, &pre_scope, &mut captured);
    }
    for v in g.initializers().to_vec() {
        let Some(t) = g.value(v).initializer().filter(|t| t.dtype() == DataType::F32).cloned() else { continue };
        if g.inputs().contains(&v) {
            continue; // An overridable default: its type is part of the interface.
        }
        let name = g.value(v).name.clone();
        let uses = g.value(v).uses().to_vec();
        let half_use =
            |u: &kiln_compiler::ir::Use| plan_of(u.node).is_some_and(|p| p.half_in.get(u.input) == Some(&true));
        let (cap_half, cap_f32) = captured.get(&name).copied().unwrap_or_default();
        let any_half = uses.iter().any(half_use) || cap_half;
        let any_f32 = uses.iter().any(|u| !half_use(u)) || cap_f32 || g.outputs().contains(&v);
        if !any_half {
            continue;
        }
        let converted =
            Arc::new(convert_tensor(&t, target).map_err(|message| HalfError::Tensor { name: name.clone(), message })?);
        report.tensors_converted += 1;
        report.initializers_converted += 1;
        if !any_f32 {
            g.set_initializer(v, converted);
            set_elem(g, v, target);
            storage.insert(v, Some(target));
        } else {
            let dup_name = env.fresh_name(g, &format!("{name}_{}", env.config.kind.name()));
            let dup = g.add_initializer(dup_name, converted);
            set_elem(g, dup, target);
            storage.insert(dup, Some(target));
            for u in uses.iter().filter(|u| half_use(u)) {
                g.set_input(u.node, u.input, Some(dup));
            }
        }
    }

    // Casts where a use wants another type than its value has.
    let mut casts: HashMap<(ValueId, DataType), ValueId> = HashMap::new();
    for &id in &node_ids {
        let Some(plan) = plan_of(id) else { continue };
        let inputs = g.node(id).inputs().to_vec();
        for (k, v) in inputs.into_iter().enumerate() {
            let Some(v) = v else { continue };
            let have = storage.get(&v).copied().flatten();
            let want = if plan.half_in.get(k) == Some(&true) {
                Some(target)
            } else if orig.get(&v).copied().flatten() == Some(DataType::F32) {
                Some(DataType::F32)
            } else {
                None
            };
            if have == want || !is_16_or_32(have, target) || !is_16_or_32(want, target) {
                continue;
            }
            let Some(want) = want else { continue };
            let c = match casts.get(&(v, want)) {
                Some(&c) => c,
                None => {
                    let c = make_cast(g, env, v, want);
                    report.casts_inserted += 1;
                    storage.insert(c, Some(want));
                    casts.insert((v, want), c);
                    c
                }
            };
            g.set_input(id, k, Some(c));
        }
    }

    // Outputs in the types they must have.
    for (i, v) in g.outputs().to_vec().into_iter().enumerate() {
        let have = storage.get(&v).copied().flatten();
        let want = req.get(i).copied().flatten();
        if have == want || !is_16_or_32(have, target) || !is_16_or_32(want, target) {
            continue;
        }
        let (Some(have), Some(want)) = (have, want) else { continue };
        report.casts_inserted += 1;
        if let ValueDef::Node { node, output } = *g.value(v).def() {
            // Keep the output's name on the cast: the producer writes a renamed value.
            let name = g.value(v).name.clone();
            let inner_name = env.fresh_name(g, &format!("{name}_{}", have.name()));
            let inner = g.add_outer(inner_name);
            g.value_mut(inner).ty = g.value(v).ty.clone();
            g.replace_uses(v, inner);
            g.bind_output(node, output, inner);
            let tmp = env.fresh_name(g, &format!("{name}_cast"));
            let cast = g.insert_node_after(
                node,
                NodeSpec::new("Cast")
                    .name(tmp.clone())
                    .inputs([inner])
                    .outputs([tmp])
                    .attr(Attribute::int("to", i64::from(want.onnx_code()))),
            );
            g.bind_output(cast, 0, v);
            set_elem(g, v, want);
            storage.insert(inner, Some(have));
            storage.insert(v, Some(want));
        } else {
            let c = make_cast(g, env, v, want);
            g.replace_output(v, c);
        }
    }

    // Subgraphs see this graph's values in their new types.
    let mut sub_scope = pre_scope;
    for (v, val) in g.values() {
        if val.name.is_empty() {
            continue;
        }
        let s = storage.get(&v).copied().flatten();
        sub_scope.entry(val.name.clone()).and_modify(|e| e.storage = s).or_insert(ScopeEntry {
            orig: s,
            storage: s,
            non_tensor: false,
        });
    }
    for &id in &node_ids {
        if g.node(id).subgraphs().next().is_none() {
            continue;
        }
        let key = node_key(g, id, path);
        let plan = plan_of(id).cloned();
        let is_if = g.node(id).is_onnx("If");
        let if_req: Option<Required> = is_if.then(|| {
            let n = g.node(id);
            (0..n.outputs().len())
                .map(|o| {
                    if plan.as_ref().is_some_and(|p| p.half_out.get(o) == Some(&true)) {
                        Some(target)
                    } else {
                        n.output(o).and_then(|v| orig.get(&v).copied().flatten())
                    }
                })
                .collect()
        });
        let sub_env = Env { is_main: false, ranges: None, ..env.clone() };
        for a in g.node_mut(id).attributes.iter_mut() {
            let attr = a.name.clone();
            let bodies: Vec<&mut Graph> = match &mut a.value {
                AttrValue::Graph(b) => vec![b.as_mut()],
                AttrValue::Graphs(bs) => bs.iter_mut().collect(),
                _ => continue,
            };
            for body in bodies {
                // `key` already holds the path of the graph the node sits in.
                let sub_path = format!("{key}.{attr}");
                convert_graph(body, &sub_env, &sub_scope, if_req.as_ref(), &sub_path, report)?;
            }
        }
    }
    Ok(())
}

/// A Cast of `v` to `to`, placed right after `v`'s producer (or first, for graph inputs,
/// initializers and captured values).
fn make_cast(g: &mut Graph, env: &Env, v: ValueId, to: DataType) -> ValueId {
    let base = format!("{}_{}", g.value(v).name, to.name());
    let name = env.fresh_name(g, &base);
    let spec = NodeSpec::new("Cast")
        .name(name.clone())
        .inputs([v])
        .outputs([name])
        .attr(Attribute::int("to", i64::from(to.onnx_code())));
    let id = match g.value(v).producer() {
        Some(p) => g.insert_node_after(p, spec),
        None => match g.node_ids().first() {
            Some(&first) => g.insert_node_before(first, spec),
            None => g.add_node(spec),
        },
    };
    let out = g.node(id).output(0).unwrap_or(v);
    g.value_mut(out).ty = g.value(v).ty.clone();
    set_elem(g, out, to);
    out
}

/// Updates the attributes that set a converted binding's type (`Cast`'s `to`, a Constant's
/// value, `ConstantOfShape`'s fill value, a generator's `dtype`).
fn set_type_attributes(g: &mut Graph, id: NodeId, plan: &NodePlan, target: DataType) -> Result<(), HalfError> {
    let label = g.node(id).label(id);
    let err = |message: String| HalfError::Tensor { name: label.clone(), message };
    let code = i64::from(target.onnx_code());
    let node = g.node_mut(id);
    for &attr in &plan.attrs {
        match attr {
            "value" => {
                let scalar_f32 = |v: f32| Tensor::scalar(v);
                let pos = node.attributes.iter().position(|a| a.name == "value");
                let f32_value: Option<Tensor> = match pos.map(|p| &node.attributes[p].value) {
                    Some(AttrValue::Tensor(t)) if t.dtype() == DataType::F32 => Some(t.as_ref().clone()),
                    Some(_) => None,
                    None => {
                        // Constant's value_float(s), or ConstantOfShape's default 0.0.
                        let fl = node.attributes.iter().position(|a| a.name == "value_float");
                        let fls = node.attributes.iter().position(|a| a.name == "value_floats");
                        if let Some(p) = fl {
                            let AttrValue::Float(x) = node.attributes.remove(p).value else { continue };
                            Some(scalar_f32(x))
                        } else if let Some(p) = fls {
                            let AttrValue::Floats(xs) = node.attributes.remove(p).value else { continue };
                            Some(Tensor::from_slice(vec![xs.len()], &xs).map_err(|e| err(e.to_string()))?)
                        } else if node.is_onnx("ConstantOfShape") {
                            Some(Tensor::from_slice(vec![1], &[0.0f32]).map_err(|e| err(e.to_string()))?)
                        } else {
                            None
                        }
                    }
                };
                if let Some(t) = f32_value {
                    let c = Arc::new(convert_tensor(&t, target).map_err(err)?);
                    match pos {
                        Some(p) => node.attributes[p].value = AttrValue::Tensor(c),
                        None => node.attributes.push(Attribute::new("value", AttrValue::Tensor(c))),
                    }
                }
            }
            name => match node.attributes.iter_mut().find(|a| a.name == name) {
                Some(a) => a.value = AttrValue::Int(code),
                None => node.attributes.push(Attribute::int(name, code)),
            },
        }
    }
    Ok(())
}
