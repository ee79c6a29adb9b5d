//! Binding a checkpoint onto a graph's initializers by name, independent of the IR: the caller
//! describes each initializer as a [`TargetSpec`] and installs the matched tensors itself.
//!
//! Names: each checkpoint key is turned into a graph name by the first [`PrefixRule`] whose
//! checkpoint prefix it starts with (that prefix is replaced by the rule's graph prefix); keys
//! that no rule matches keep their name. Types: by default the dtype must be exactly the
//! target's; [`DtypePolicy::ConvertFloat`] converts between f16, bf16, f32 and f64 (rounding to
//! nearest, so narrowing loses precision). Shapes must always match exactly.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use half::{bf16, f16};

use super::index::Checkpoint;
use crate::dtype::DataType;
use crate::tensor::Tensor;

/// A graph initializer to fill.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<usize>,
}

/// Checkpoint keys starting with `checkpoint` are renamed to `graph` + the rest of the key.
/// `{checkpoint: "model.", graph: ""}` strips a prefix; `{checkpoint: "", graph: "net."}` adds one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrefixRule {
    pub checkpoint: String,
    pub graph: String,
}

/// Which dtype differences binding may resolve.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DtypePolicy {
    /// The checkpoint's dtype must equal the target's.
    #[default]
    Exact,
    /// Convert between f16, bf16, f32 and f64 (round to nearest).
    ConvertFloat,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindOptions {
    /// Tried in order; the first whose checkpoint prefix matches applies.
    pub rename: Vec<PrefixRule>,
    pub dtype_policy: DtypePolicy,
}

impl BindOptions {
    /// The graph name a checkpoint key binds to.
    pub fn graph_name<'a>(&self, key: &'a str) -> Cow<'a, str> {
        for rule in &self.rename {
            if let Some(rest) = key.strip_prefix(rule.checkpoint.as_str()) {
                return Cow::Owned(format!("{}{rest}", rule.graph));
            }
        }
        Cow::Borrowed(key)
    }
}

/// A dtype and shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Signature {
    pub dtype: DataType,
    pub dims: Vec<usize>,
}

/// A target whose checkpoint tensor has the wrong shape or (unconvertible) dtype.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mismatch {
    /// Graph name.
    pub name: String,
    pub checkpoint_name: String,
    pub expected: Signature,
    pub found: Signature,
}

impl Mismatch {
    pub fn shape_differs(&self) -> bool {
        self.expected.dims != self.found.dims
    }

    pub fn dtype_differs(&self) -> bool {
        self.expected.dtype != self.found.dtype
    }
}

/// A tensor converted under [`DtypePolicy::ConvertFloat`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conversion {
    pub name: String,
    pub from: DataType,
    pub to: DataType,
}

/// A graph name that several checkpoint keys map to; none of them is bound.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ambiguous {
    pub name: String,
    pub checkpoint_names: Vec<String>,
}

/// The outcome of [`bind`]. Targets are listed in the caller's order, checkpoint keys sorted.
#[derive(Debug, Clone, Default)]
pub struct BindReport {
    /// Graph name and the tensor to install (zero-copy from the checkpoint unless converted).
    pub matched: Vec<(String, Tensor)>,
    pub mismatched: Vec<Mismatch>,
    /// Targets no checkpoint key maps to.
    pub unmatched_in_graph: Vec<String>,
    /// Checkpoint keys that map to no target.
    pub extra_in_checkpoint: Vec<String>,
    pub converted: Vec<Conversion>,
    pub ambiguous: Vec<Ambiguous>,
}

/// One bound tensor, for the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MatchedSummary {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<usize>,
    pub bytes: u64,
}

/// [`BindReport`] without the tensors, for the CLI's JSON report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BindSummary {
    /// Every target was bound and nothing conflicted (extra checkpoint keys are allowed).
    pub complete: bool,
    pub matched: Vec<MatchedSummary>,
    pub mismatched: Vec<Mismatch>,
    pub unmatched_in_graph: Vec<String>,
    pub extra_in_checkpoint: Vec<String>,
    pub converted: Vec<Conversion>,
    pub ambiguous: Vec<Ambiguous>,
}

impl BindReport {
    /// True when every target was bound.
    pub fn is_complete(&self) -> bool {
        self.mismatched.is_empty() && self.unmatched_in_graph.is_empty() && self.ambiguous.is_empty()
    }

    pub fn summary(&self) -> BindSummary {
        BindSummary {
            complete: self.is_complete(),
            matched: self
                .matched
                .iter()
                .map(|(name, t)| MatchedSummary {
                    name: name.clone(),
                    dtype: t.dtype(),
                    dims: t.dims().to_vec(),
                    bytes: t.byte_size(),
                })
                .collect(),
            mismatched: self.mismatched.clone(),
            unmatched_in_graph: self.unmatched_in_graph.clone(),
            extra_in_checkpoint: self.extra_in_checkpoint.clone(),
            converted: self.converted.clone(),
            ambiguous: self.ambiguous.clone(),
        }
    }
}

/// Match checkpoint tensors to targets by (renamed) name and check their types and shapes.
pub fn bind(targets: &[TargetSpec], checkpoint: &Checkpoint, options: &BindOptions) -> BindReport {
    let mut by_graph_name: BTreeMap<Cow<'_, str>, Vec<&str>> = BTreeMap::new();
    for key in checkpoint.names() {
        by_graph_name.entry(options.graph_name(key)).or_default().push(key);
    }
    let wanted: HashSet<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let mut report = BindReport::default();
    for target in targets {
        let Some(keys) = by_graph_name.get(target.name.as_str()) else {
            report.unmatched_in_graph.push(target.name.clone());
            continue;
        };
        let [key] = keys.as_slice() else {
            report.ambiguous.push(Ambiguous {
                name: target.name.clone(),
                checkpoint_names: keys.iter().map(|k| k.to_string()).collect(),
            });
            continue;
        };
        // Names come from the checkpoint itself, so the lookup cannot miss.
        let Some(tensor) = checkpoint.tensor(key) else {
            continue;
        };
        let mismatch = || Mismatch {
            name: target.name.clone(),
            checkpoint_name: key.to_string(),
            expected: Signature { dtype: target.dtype, dims: target.dims.clone() },
            found: Signature { dtype: tensor.dtype(), dims: tensor.dims().to_vec() },
        };
        if tensor.dims() != target.dims.as_slice() {
            report.mismatched.push(mismatch());
            continue;
        }
        if tensor.dtype() == target.dtype {
            report.matched.push((target.name.clone(), tensor));
            continue;
        }
        match (options.dtype_policy, convert_float(&tensor, target.dtype)) {
            (DtypePolicy::ConvertFloat, Some(converted)) => {
                report.converted.push(Conversion { name: target.name.clone(), from: tensor.dtype(), to: target.dtype });
                report.matched.push((target.name.clone(), converted));
            }
            _ => report.mismatched.push(mismatch()),
        }
    }
    report.extra_in_checkpoint = by_graph_name
        .iter()
        .filter(|(name, _)| !wanted.contains(name.as_ref()))
        .flat_map(|(_, keys)| keys.iter().map(|k| k.to_string()))
        .collect();
    report.extra_in_checkpoint.sort();
    report
}

fn is_convertible_float(d: DataType) -> bool {
    matches!(d, DataType::F16 | DataType::BF16 | DataType::F32 | DataType::F64)
}

/// The tensor converted to another of f16/bf16/f32/f64, or `None` if either type is not one.
fn convert_float(tensor: &Tensor, to: DataType) -> Option<Tensor> {
    if !is_convertible_float(tensor.dtype()) || !is_convertible_float(to) {
        return None;
    }
    let values = tensor.to_f64_vec().ok()?;
    let dims = tensor.dims().to_vec();
    let out = match to {
        DataType::F64 => Tensor::from_slice(dims, &values),
        DataType::F32 => Tensor::from_slice(dims, &values.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        DataType::F16 => Tensor::from_slice(dims, &values.iter().map(|&v| f16::from_f64(v)).collect::<Vec<_>>()),
        _ => Tensor::from_slice(dims, &values.iter().map(|&v| bf16::from_f64(v)).collect::<Vec<_>>()),
    };
    out.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::write_safetensors;

    fn spec(name: &str, dtype: DataType, dims: &[usize]) -> TargetSpec {
        TargetSpec { name: name.to_string(), dtype, dims: dims.to_vec() }
    }

    fn checkpoint(dir: &std::path::Path) -> Checkpoint {
        let w = Tensor::from_slice(vec![2, 2], &[1.0f32, 2.0, 3.0, 0.5]).unwrap();
        let b = Tensor::from_slice(vec![2], &[0.25f32, -1.0]).unwrap();
        let i = Tensor::from_slice(vec![2], &[1i64, 2]).unwrap();
        let p = dir.join("ckpt.safetensors");
        write_safetensors(
            &p,
            &[
                ("model.encoder.layer.0.weight", &w),
                ("model.encoder.layer.0.bias", &b),
                ("model.ids", &i),
                ("model.pooler.weight", &w),
                ("lm_head.weight", &w),
            ],
            &BTreeMap::new(),
        )
        .unwrap();
        Checkpoint::open(&p).unwrap()
    }

    fn strip_model() -> BindOptions {
        BindOptions {
            rename: vec![PrefixRule { checkpoint: "model.".into(), graph: String::new() }],
            ..Default::default()
        }
    }

    #[test]
    fn matched_unmatched_extra_and_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpoint(dir.path());
        let targets = [
            spec("encoder.layer.0.weight", DataType::F32, &[2, 2]),
            spec("encoder.layer.0.bias", DataType::F32, &[1, 2]),
            spec("ids", DataType::I32, &[2]),
            spec("decoder.weight", DataType::F32, &[2, 2]),
            spec("lm_head.weight", DataType::F32, &[2, 2]),
        ];
        let r = bind(&targets, &c, &strip_model());
        let matched: Vec<_> = r.matched.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(matched, ["encoder.layer.0.weight", "lm_head.weight"]);
        assert_eq!(r.matched[0].1.to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 0.5]);
        // Zero-copy: the bound tensor's bytes lie inside the checkpoint's map.
        let Checkpoint::Single(f) = &c else { panic!() };
        let map = f.file_bytes().as_ptr_range();
        assert!(map.contains(&r.matched[0].1.bytes().unwrap().as_ptr()));

        assert_eq!(r.mismatched.len(), 2);
        let shape = &r.mismatched[0];
        assert_eq!(
            (shape.name.as_str(), shape.checkpoint_name.as_str()),
            ("encoder.layer.0.bias", "model.encoder.layer.0.bias")
        );
        assert!(shape.shape_differs() && !shape.dtype_differs());
        let dtype = &r.mismatched[1];
        assert_eq!(dtype.name, "ids");
        assert!(dtype.dtype_differs() && !dtype.shape_differs());
        assert_eq!(dtype.found.dtype, DataType::I64);
        assert_eq!(r.unmatched_in_graph, ["decoder.weight"]);
        assert_eq!(r.extra_in_checkpoint, ["model.pooler.weight"]);
        assert!(!r.is_complete());

        let json = serde_json::to_value(r.summary()).unwrap();
        assert_eq!(json["complete"], false);
        assert_eq!(json["matched"][0]["bytes"], 16);
        assert_eq!(json["mismatched"][1]["found"]["dtype"], "i64");
        assert_eq!(json["unmatched_in_graph"][0], "decoder.weight");
    }

    #[test]
    fn renaming_and_ambiguity() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpoint(dir.path());
        let opts = BindOptions {
            rename: vec![
                PrefixRule { checkpoint: "model.encoder.".into(), graph: "enc/".into() },
                PrefixRule { checkpoint: "".into(), graph: "net.".into() },
            ],
            ..Default::default()
        };
        assert_eq!(opts.graph_name("model.encoder.layer.0.bias"), "enc/layer.0.bias");
        assert_eq!(opts.graph_name("lm_head.weight"), "net.lm_head.weight");
        let r = bind(
            &[spec("enc/layer.0.bias", DataType::F32, &[2]), spec("net.model.ids", DataType::I64, &[2])],
            &c,
            &opts,
        );
        assert_eq!(r.matched.len(), 2);
        assert!(r.is_complete());
        assert_eq!(r.extra_in_checkpoint.len(), 3);

        // Two keys onto one graph name: neither is bound.
        let opts = BindOptions {
            rename: vec![
                PrefixRule { checkpoint: "model.pooler.".into(), graph: "".into() },
                PrefixRule { checkpoint: "lm_head.".into(), graph: "".into() },
            ],
            ..Default::default()
        };
        let r = bind(&[spec("weight", DataType::F32, &[2, 2])], &c, &opts);
        assert!(r.matched.is_empty());
        assert_eq!(r.ambiguous[0].checkpoint_names, ["lm_head.weight", "model.pooler.weight"]);
        assert!(!r.is_complete());
    }

    #[test]
    fn float_conversion_policy() {
        let dir = tempfile::tempdir().unwrap();
        let c = checkpoint(dir.path());
        let targets = [spec("encoder.layer.0.weight", DataType::F16, &[2, 2]), spec("ids", DataType::I32, &[2])];
        let exact = bind(&targets, &c, &strip_model());
        assert_eq!(exact.mismatched.len(), 2);
        let opts = BindOptions { dtype_policy: DtypePolicy::ConvertFloat, ..strip_model() };
        let r = bind(&targets, &c, &opts);
        assert_eq!(r.matched.len(), 1);
        let (_, t) = &r.matched[0];
        assert_eq!(t.dtype(), DataType::F16);
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, 2.0, 3.0, 0.5]);
        assert_eq!(
            r.converted,
            [Conversion { name: "encoder.layer.0.weight".into(), from: DataType::F32, to: DataType::F16 }]
        );
        // Integers are never converted.
        assert_eq!(r.mismatched[0].name, "ids");
        for to in [DataType::BF16, DataType::F64, DataType::F32] {
            let t = convert_float(&Tensor::from_slice(vec![1], &[1.5f32]).unwrap(), to).unwrap();
            assert_eq!((t.dtype(), t.to_f64_vec().unwrap()), (to, vec![1.5]));
        }
    }

    #[test]
    fn sharded_checkpoints_bind_too() {
        let dir = tempfile::tempdir().unwrap();
        let a = Tensor::from_slice(vec![3], &[1u8, 2, 3]).unwrap();
        let b = Tensor::scalar(4.0f64);
        let w =
            crate::safetensors::write_sharded(dir.path(), "m", &[("a", &a), ("b", &b)], &BTreeMap::new(), 1).unwrap();
        let c = Checkpoint::open(&w.index_path).unwrap();
        let r = bind(&[spec("a", DataType::U8, &[3]), spec("b", DataType::F64, &[])], &c, &BindOptions::default());
        assert!(r.is_complete());
        assert_eq!(r.matched[1].1, b);
    }
}
