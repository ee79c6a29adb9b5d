//! Type constraints of every operator in the shape-inference table, per opset version: which
//! inputs and outputs share a type parameter and which types each parameter allows (e.g.
//! `Resize`: `X:T1 roi:T2 scales:{f32} sizes:{i64} -> Y:T1`).
//!
//! The facts live in `type_constraints.txt`, written by `gen_type_constraints.py` from the
//! operator schemas ONNX Runtime 1.31.1 validates models against (the ONNX specification's, plus
//! the `com.microsoft` contrib ops). Passes that change element types (FP16/BF16 conversion)
//! read it to know which tensors may change and which must stay as they are.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::dtype::DataType;

const TABLE: &str = include_str!("type_constraints.txt");

/// A set of allowed types: tensors by element type, sequences of tensors by element type,
/// and whether optional or other (map, sparse) types are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeSet {
    tensors: u64,
    sequences: u64,
    optionals: bool,
    other: bool,
}

fn bit(d: DataType) -> u64 {
    1u64 << (d.onnx_code() as u32 & 63)
}

impl TypeSet {
    /// A set of tensor element types.
    pub fn of(types: &[DataType]) -> TypeSet {
        TypeSet { tensors: types.iter().fold(0, |m, &d| m | bit(d)), ..TypeSet::default() }
    }

    /// Whether a dense tensor of `d` is allowed.
    pub fn allows(&self, d: DataType) -> bool {
        self.tensors & bit(d) != 0
    }

    /// Whether a sequence of `d` tensors is allowed.
    pub fn allows_sequence_of(&self, d: DataType) -> bool {
        self.sequences & bit(d) != 0
    }

    /// Whether anything besides dense tensors is allowed (sequences, optionals, maps…).
    pub fn allows_non_tensors(&self) -> bool {
        self.sequences != 0 || self.optionals || self.other
    }

    /// The allowed dense tensor element types, in ONNX code order.
    pub fn tensor_types(&self) -> impl Iterator<Item = DataType> + '_ {
        DataType::ALL.iter().copied().filter(|&d| d != DataType::Undefined && self.allows(d))
    }

    fn parse(text: &str) -> Result<TypeSet, String> {
        let inner = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or(format!("bad set `{text}`"))?;
        let mut s = TypeSet::default();
        for item in split_top(inner) {
            if let Some(rest) = item.strip_prefix("seq<").and_then(|r| r.strip_suffix('>')) {
                match DataType::from_name(rest) {
                    Some(d) => s.sequences |= bit(d),
                    None => s.other = true,
                }
            } else if item.starts_with("opt<") {
                s.optionals = true;
            } else if item.starts_with("map<") || item.starts_with("sparse<") {
                s.other = true;
            } else {
                s.tensors |= bit(DataType::from_name(item).ok_or(format!("unknown type `{item}`"))?);
            }
        }
        Ok(s)
    }
}

/// Splits on commas outside `<…>`.
fn split_top(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The type of one formal input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotType {
    /// Bound to the type parameter at this index of [`OpSchema::params`].
    Param(usize),
    /// A literal set (e.g. `Resize`'s `scales: tensor(float)`).
    Fixed(TypeSet),
}

/// How many actual inputs or outputs a formal one stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Single,
    Optional,
    /// The last formal parameter, repeated. Homogeneous: every position has the same type;
    /// heterogeneous: each position binds the parameter on its own.
    Variadic {
        homogeneous: bool,
    },
}

/// A formal input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub ty: SlotType,
    pub arity: Arity,
}

/// A type parameter (`T`, `T1`…) and the types it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeParam {
    pub name: String,
    pub allowed: TypeSet,
}

/// One version of an operator's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpSchema {
    /// Normalized: `""` for the default ONNX domain.
    pub domain: String,
    pub op_type: String,
    pub since_version: i64,
    pub inputs: Vec<Slot>,
    pub outputs: Vec<Slot>,
    pub params: Vec<TypeParam>,
}

/// A group of a node's actual inputs and outputs that must have one type: the positions bound
/// to one type parameter (or one position of a heterogeneous variadic, or a fixed-type slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The type parameter's name; `None` for a fixed-type slot.
    pub param: Option<String>,
    pub allowed: TypeSet,
    pub inputs: Vec<usize>,
    pub outputs: Vec<usize>,
    /// The attribute that sets this parameter's type (`Cast`'s `to`), if one does.
    pub attribute: Option<&'static str>,
}

fn slot_at(slots: &[Slot], i: usize) -> Option<(usize, &Slot)> {
    match slots.get(i) {
        Some(s) => Some((i, s)),
        None => {
            let last = slots.last()?;
            matches!(last.arity, Arity::Variadic { .. }).then_some((slots.len() - 1, last))
        }
    }
}

impl OpSchema {
    /// The formal parameter actual input `i` binds to.
    pub fn input_slot(&self, i: usize) -> Option<&Slot> {
        slot_at(&self.inputs, i).map(|(_, s)| s)
    }

    pub fn output_slot(&self, i: usize) -> Option<&Slot> {
        slot_at(&self.outputs, i).map(|(_, s)| s)
    }

    /// The types actual input `i` may have.
    pub fn input_types(&self, i: usize) -> Option<TypeSet> {
        self.input_slot(i).map(|s| self.slot_types(s))
    }

    pub fn output_types(&self, i: usize) -> Option<TypeSet> {
        self.output_slot(i).map(|s| self.slot_types(s))
    }

    fn slot_types(&self, s: &Slot) -> TypeSet {
        match &s.ty {
            SlotType::Param(p) => self.params.get(*p).map(|p| p.allowed).unwrap_or_default(),
            SlotType::Fixed(t) => *t,
        }
    }

    /// Groups a node's `n_inputs` inputs and `n_outputs` outputs by what must share one type.
    /// Positions beyond the signature (a malformed node) belong to no binding.
    pub fn bindings(&self, n_inputs: usize, n_outputs: usize) -> Vec<Binding> {
        let mut out: Vec<Binding> = Vec::new();
        let mut by_param: HashMap<usize, usize> = HashMap::new();
        let mut place = |slots: &[Slot], i: usize, is_input: bool, out: &mut Vec<Binding>| {
            let Some((_, slot)) = slot_at(slots, i) else { return };
            let shared = match (&slot.ty, slot.arity) {
                (SlotType::Param(_), Arity::Variadic { homogeneous: false }) => None,
                (SlotType::Param(p), _) => Some(*p),
                (SlotType::Fixed(_), _) => None,
            };
            let idx = match shared.and_then(|p| by_param.get(&p).copied()) {
                Some(idx) => idx,
                None => {
                    let (param, allowed, attribute) = match &slot.ty {
                        SlotType::Param(p) => {
                            let tp = &self.params[*p];
                            (Some(tp.name.clone()), tp.allowed, attribute_bound(&self.domain, &self.op_type, &tp.name))
                        }
                        SlotType::Fixed(t) => (None, *t, None),
                    };
                    out.push(Binding { param, allowed, inputs: Vec::new(), outputs: Vec::new(), attribute });
                    if let Some(p) = shared {
                        by_param.insert(p, out.len() - 1);
                    }
                    out.len() - 1
                }
            };
            if is_input { out[idx].inputs.push(i) } else { out[idx].outputs.push(i) }
        };
        for i in 0..n_inputs {
            place(&self.inputs, i, true, &mut out);
        }
        for i in 0..n_outputs {
            place(&self.outputs, i, false, &mut out);
        }
        out
    }
}

/// Type parameters set by an attribute rather than by an input, from the operator
/// specification: `(domain, op, param, attribute)`.
const ATTRIBUTE_BOUND: &[(&str, &str, &str, &str)] = &[
    ("", "Cast", "T2", "to"),
    ("", "Constant", "T", "value"),
    ("", "ConstantOfShape", "T2", "value"),
    ("", "EyeLike", "T2", "dtype"),
    ("", "RandomNormal", "T", "dtype"),
    ("", "RandomUniform", "T", "dtype"),
    ("", "RandomNormalLike", "T2", "dtype"),
    ("", "RandomUniformLike", "T2", "dtype"),
    ("", "Bernoulli", "T2", "dtype"),
    ("", "Multinomial", "T2", "dtype"),
    ("", "HannWindow", "T2", "output_datatype"),
    ("", "HammingWindow", "T2", "output_datatype"),
    ("", "BlackmanWindow", "T2", "output_datatype"),
    ("", "MelWeightMatrix", "T3", "output_datatype"),
    ("", "SequenceEmpty", "S", "dtype"),
    ("", "DequantizeLinear", "T3", "output_dtype"),
    ("", "QuantizeLinear", "T3", "output_dtype"),
];

/// The attribute that sets type parameter `param` of `(domain, op_type)`, if one does.
pub fn attribute_bound(domain: &str, op_type: &str, param: &str) -> Option<&'static str> {
    let d = normalize(domain);
    ATTRIBUTE_BOUND.iter().find(|(dd, o, p, _)| *dd == d && *o == op_type && *p == param).map(|e| e.3)
}

fn normalize(domain: &str) -> &str {
    if domain == "ai.onnx" { "" } else { domain }
}

/// A malformed line of the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("type constraint table, line {line}: {message}")]
pub struct TableError {
    pub line: usize,
    pub message: String,
}

fn parse_slot(text: &str, params: &[TypeParam]) -> Result<Slot, String> {
    let (name, ty) = text.split_once(':').ok_or(format!("slot `{text}` has no type"))?;
    let (ty, arity) = if let Some(t) = ty.strip_suffix("*~") {
        (t, Arity::Variadic { homogeneous: false })
    } else if let Some(t) = ty.strip_suffix('*') {
        (t, Arity::Variadic { homogeneous: true })
    } else if let Some(t) = ty.strip_suffix('?') {
        (t, Arity::Optional)
    } else {
        (ty, Arity::Single)
    };
    let ty = if ty.starts_with('{') {
        SlotType::Fixed(TypeSet::parse(ty)?)
    } else {
        SlotType::Param(params.iter().position(|p| p.name == ty).ok_or(format!("unknown type parameter `{ty}`"))?)
    };
    Ok(Slot { name: name.to_string(), ty, arity })
}

/// One signature per since-version listed on the line.
fn parse_line(domain: &str, line: &str) -> Result<Vec<OpSchema>, String> {
    let mut parts = line.split('|').map(str::trim);
    let head = parts.next().unwrap_or_default();
    let sig = parts.next().ok_or("no signature")?;
    let cons = parts.next().unwrap_or_default();
    let (op_type, since) = head.split_once(' ').ok_or("no version")?;
    let versions = since
        .split(',')
        .map(|v| v.trim().parse::<i64>().map_err(|e| format!("version `{v}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut params = Vec::new();
    for c in cons.split_whitespace() {
        let (name, set) = c.split_once('=').ok_or(format!("constraint `{c}`"))?;
        params.push(TypeParam { name: name.to_string(), allowed: TypeSet::parse(set)? });
    }
    let (ins, outs) = sig.split_once("->").ok_or("no `->`")?;
    let slots = |s: &str| s.split_whitespace().map(|t| parse_slot(t, &params)).collect::<Result<Vec<_>, _>>();
    let (inputs, outputs) = (slots(ins)?, slots(outs)?);
    Ok(versions
        .into_iter()
        .map(|since_version| OpSchema {
            domain: domain.to_string(),
            op_type: op_type.to_string(),
            since_version,
            inputs: inputs.clone(),
            outputs: outputs.clone(),
            params: params.clone(),
        })
        .collect())
}

/// Parses a table in the format of `type_constraints.txt`.
pub fn parse(text: &str) -> Result<Vec<OpSchema>, TableError> {
    let mut domain = String::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(d) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            domain = normalize(d).to_string();
            continue;
        }
        out.extend(parse_line(&domain, line).map_err(|message| TableError { line: i + 1, message })?);
    }
    Ok(out)
}

struct Index {
    all: Vec<OpSchema>,
    /// (domain, op) → indices into `all`, by ascending version.
    by_op: HashMap<(String, String), Vec<usize>>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        // The table ships with the crate and a test parses it whole; a bad line cannot reach
        // users, so an error here leaves the table empty rather than failing a build step.
        let all = parse(TABLE).unwrap_or_default();
        let mut by_op: HashMap<(String, String), Vec<usize>> = HashMap::new();
        for (i, s) in all.iter().enumerate() {
            by_op.entry((s.domain.clone(), s.op_type.clone())).or_default().push(i);
        }
        for v in by_op.values_mut() {
            v.sort_by_key(|&i| all[i].since_version);
        }
        Index { all, by_op }
    })
}

/// Every signature in the table.
pub fn schemas() -> &'static [OpSchema] {
    &index().all
}

/// The signature of `(domain, op_type)` in force at `opset` (the latest version not newer than
/// it; `since_version` is the exact one), or `None` when the table does not know the op or the op did not exist yet.
pub fn schema(domain: &str, op_type: &str, opset: i64) -> Option<&'static OpSchema> {
    let ix = index();
    let versions = ix.by_op.get(&(normalize(domain).to_string(), op_type.to_string()))?;
    versions.iter().rev().map(|&i| &ix.all[i]).find(|s| s.since_version <= opset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_parses_whole() {
        let all = parse(TABLE).unwrap();
        assert!(all.len() > 500, "{} signatures", all.len());
        assert_eq!(schemas().len(), all.len());
        // Every op of the shape-inference table whose schema ONNX Runtime has is here.
        let ops: std::collections::BTreeSet<_> = all.iter().map(|s| (s.domain.as_str(), s.op_type.as_str())).collect();
        assert!(ops.len() >= 230, "{} ops", ops.len());
        for (d, op) in ops {
            assert!(crate::shape::is_supported(d, op), "{d}.{op} is not in the shape table");
        }
    }

    #[test]
    fn resize_scales_are_always_float_and_sizes_int64() {
        let s = schema("", "Resize", 19).unwrap();
        assert_eq!(s.since_version, 19);
        assert_eq!(schema("", "Reshape", 15).unwrap().since_version, 14);
        let b = s.bindings(4, 1);
        let x = b.iter().find(|b| b.param.as_deref() == Some("T1")).unwrap();
        assert_eq!((x.inputs.as_slice(), x.outputs.as_slice()), (&[0][..], &[0][..]));
        assert!(x.allowed.allows(DataType::F16) && x.allowed.allows(DataType::BF16));
        let roi = b.iter().find(|b| b.param.as_deref() == Some("T2")).unwrap();
        assert_eq!(roi.inputs, vec![1]);
        assert!(!roi.allowed.allows(DataType::BF16));
        assert_eq!(s.input_types(2).unwrap(), TypeSet::of(&[DataType::F32]));
        assert_eq!(s.input_types(3).unwrap(), TypeSet::of(&[DataType::I64]));
        // Opset 10: no roi, no sizes; bf16 not yet allowed for X.
        let old = schema("", "Resize", 10).unwrap();
        assert_eq!(old.inputs.len(), 2);
        assert!(!old.input_types(0).unwrap().allows(DataType::BF16));
    }

    #[test]
    fn layer_norm_statistics_have_their_own_parameter() {
        let s = schema("", "LayerNormalization", 17).unwrap();
        let b = s.bindings(3, 3);
        let t = b.iter().find(|b| b.param.as_deref() == Some("T")).unwrap();
        assert_eq!((t.inputs.clone(), t.outputs.clone()), (vec![0, 1, 2], vec![0]));
        let u = b.iter().find(|b| b.param.as_deref() == Some("U")).unwrap();
        assert_eq!(u.outputs, vec![1, 2]);
        assert!(!u.allowed.allows(DataType::F16) && u.allowed.allows(DataType::BF16));
    }

    #[test]
    fn cast_output_type_comes_from_its_attribute() {
        let s = schema("", "Cast", 13).unwrap();
        let b = s.bindings(1, 1);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].attribute, Some("to"));
        assert_eq!(b[0].attribute, None);
    }

    #[test]
    fn contrib_ops_are_known_and_versions_are_picked_by_opset() {
        let fc = schema("com.microsoft", "FusedConv", 1).unwrap();
        assert!(fc.input_types(0).unwrap().allows(DataType::F16));
        assert!(schema("", "Conv", 21).unwrap().input_types(0).is_some_and(|t| !t.allows(DataType::BF16)));
        assert!(schema("", "Conv", 22).unwrap().input_types(0).is_some_and(|t| t.allows(DataType::BF16)));
        assert!(schema("", "Softmax", 0).is_none());
        assert!(schema("", "NoSuchOp", 17).is_none());
        assert!(schema("ai.onnx", "Relu", 14).is_some());
    }

    #[test]
    fn heterogeneous_variadics_bind_each_position_alone() {
        let s = schema("", "If", 16).unwrap();
        let b = s.bindings(1, 3);
        assert_eq!(b.len(), 4);
        assert!(b[1..].iter().all(|b| b.outputs.len() == 1));
        // Homogeneous: Concat's inputs all share T with the output.
        let c = schema("", "Concat", 13).unwrap().bindings(3, 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].inputs, vec![0, 1, 2]);
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        assert_eq!(parse("[x]\nFoo 1 | a:T -> b:T | T={f32}\nBar 2 | a:U -> b:U | T={f32}").unwrap_err().line, 3);
        assert!(parse("Foo one | a:T -> b:T | T={f32}").is_err());
        assert!(parse("Foo 1 | a:T -> b:T | T={f99}").is_err());
        assert!(parse("Foo 1 | a:T b:T").is_err());
    }
}
