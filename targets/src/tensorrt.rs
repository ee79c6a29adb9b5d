//! What a TensorRT deployment needs beside `model.onnx`: the engine build profile (min, opt
//! and max shape of every input, so dynamic dimensions are bounded), the `trtexec` command
//! that builds the engine, and the options of ONNX Runtime's TensorRT provider (engine and
//! timing caches, the same profile).

use std::collections::BTreeMap;

use kiln_compiler::ir::{DimValue, Model};
use serde::Serialize;

use crate::target::{EmitError, EmittedFile};

/// Why a build profile could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("--shapes '{0}': expected INPUT=MIN[:OPT[:MAX]] with shapes like 1x3x224x224")]
    Syntax(String),
    #[error("--shapes: the model has no input named '{name}'; its inputs are: {}", .known.join(", "))]
    UnknownInput { name: String, known: Vec<String> },
    #[error("--shapes {name}: {message}")]
    Mismatch { name: String, message: String },
    #[error("input '{0}' has an unknown rank: give its shapes with --shapes")]
    UnknownRank(String),
}

/// Min, opt and max shape of one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputProfile {
    pub name: String,
    pub min: Vec<u64>,
    pub opt: Vec<u64>,
    pub max: Vec<u64>,
    /// Where the dynamic dims came from (`fixed`, `--shapes`, `data`, `default 1`).
    pub source: &'static str,
}

/// The shapes TensorRT builds the engine for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BuildProfile {
    pub inputs: Vec<InputProfile>,
}

/// A `--shapes` entry: min, opt and max shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRange {
    pub min: Vec<u64>,
    pub opt: Vec<u64>,
    pub max: Vec<u64>,
}

impl ShapeRange {
    /// Parses `INPUT=MIN[:OPT[:MAX]]`, shapes written `1x3x224x224`; a missing OPT is MAX
    /// when MAX is given, else MIN (one shape is a fixed profile).
    pub fn parse(text: &str) -> Result<(String, ShapeRange), ProfileError> {
        let bad = || ProfileError::Syntax(text.to_string());
        let (name, spec) = text.split_once('=').ok_or_else(bad)?;
        let shapes = spec
            .split(':')
            .map(|s| s.split('x').map(|d| d.trim().parse::<u64>()).collect::<Result<Vec<_>, _>>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad())?;
        let (min, opt, max) = match shapes.as_slice() {
            [one] => (one.clone(), one.clone(), one.clone()),
            [lo, hi] => (lo.clone(), hi.clone(), hi.clone()),
            [lo, mid, hi] => (lo.clone(), mid.clone(), hi.clone()),
            _ => return Err(bad()),
        };
        if name.is_empty() || min.len() != opt.len() || opt.len() != max.len() {
            return Err(bad());
        }
        Ok((name.to_string(), ShapeRange { min, opt, max }))
    }
}

impl BuildProfile {
    /// The profile of the model's runtime inputs. Each input's shape comes from `overrides`
    /// (`--shapes`), else from `observed` sample shapes (min and max per dimension, opt the
    /// most frequent shape), else fixed dims as declared and dynamic dims 1.
    pub fn from_model(
        model: &Model,
        overrides: &BTreeMap<String, ShapeRange>,
        observed: &BTreeMap<String, Vec<Vec<u64>>>,
    ) -> Result<BuildProfile, ProfileError> {
        let Some(g) = model.graph.as_ref() else { return Ok(BuildProfile::default()) };
        let inputs: Vec<_> = g.runtime_inputs().collect();
        let names: Vec<String> = inputs.iter().map(|&v| g.value(v).name.clone()).collect();
        if let Some(unknown) = overrides.keys().find(|k| !names.contains(k)) {
            return Err(ProfileError::UnknownInput { name: unknown.clone(), known: names });
        }
        let mut out = Vec::new();
        for (&v, name) in inputs.iter().zip(&names) {
            let declared: Option<Vec<Option<u64>>> = g.tensor_type(v).and_then(|t| t.shape.as_ref()).map(|s| {
                s.iter()
                    .map(|d| match d.value {
                        DimValue::Known(k) => u64::try_from(k).ok(),
                        _ => None,
                    })
                    .collect()
            });
            let check = |shape: &[u64], what: &str| -> Result<(), ProfileError> {
                let Some(decl) = &declared else { return Ok(()) };
                let mismatch = |message: String| ProfileError::Mismatch { name: name.clone(), message };
                if decl.len() != shape.len() {
                    return Err(mismatch(format!(
                        "{what} has rank {}, the input has rank {}",
                        shape.len(),
                        decl.len()
                    )));
                }
                for (i, (d, s)) in decl.iter().zip(shape).enumerate() {
                    if let Some(d) = d
                        && d != s
                    {
                        return Err(mismatch(format!("{what} has {s} in dimension {i}, which is fixed at {d}")));
                    }
                }
                Ok(())
            };
            let profile = if let Some(r) = overrides.get(name) {
                for (shape, what) in [(&r.min, "MIN"), (&r.opt, "OPT"), (&r.max, "MAX")] {
                    check(shape, what)?;
                }
                if r.min.iter().zip(&r.opt).zip(&r.max).any(|((a, b), c)| a > b || b > c) {
                    return Err(ProfileError::Mismatch {
                        name: name.clone(),
                        message: "needs MIN <= OPT <= MAX in every dimension".into(),
                    });
                }
                InputProfile {
                    name: name.clone(),
                    min: r.min.clone(),
                    opt: r.opt.clone(),
                    max: r.max.clone(),
                    source: "--shapes",
                }
            } else if let Some(shapes) = observed.get(name).filter(|s| !s.is_empty()) {
                for s in shapes {
                    check(s, "a sample")?;
                }
                let rank = shapes[0].len();
                if shapes.iter().any(|s| s.len() != rank) {
                    return Err(ProfileError::Mismatch {
                        name: name.clone(),
                        message: "samples differ in rank".into(),
                    });
                }
                let min = (0..rank).map(|i| shapes.iter().map(|s| s[i]).min().unwrap_or(1)).collect();
                let max = (0..rank).map(|i| shapes.iter().map(|s| s[i]).max().unwrap_or(1)).collect();
                let mut counts: BTreeMap<&Vec<u64>, usize> = BTreeMap::new();
                for s in shapes {
                    *counts.entry(s).or_insert(0) += 1;
                }
                // Most frequent; ties go to the larger shape (BTreeMap order, last wins).
                let opt = counts.iter().max_by_key(|(_, c)| **c).map(|(s, _)| (*s).clone()).unwrap_or_default();
                InputProfile { name: name.clone(), min, opt, max, source: "data" }
            } else {
                let decl = declared.clone().ok_or_else(|| ProfileError::UnknownRank(name.clone()))?;
                let dynamic = decl.iter().any(Option::is_none);
                let shape: Vec<u64> = decl.iter().map(|d| d.unwrap_or(1)).collect();
                InputProfile {
                    name: name.clone(),
                    min: shape.clone(),
                    opt: shape.clone(),
                    max: shape,
                    source: if dynamic { "default 1" } else { "fixed" },
                }
            };
            out.push(profile);
        }
        Ok(BuildProfile { inputs: out })
    }

    /// `x:1x3x224x224,y:…` for one of min/opt/max.
    fn shapes_arg(&self, pick: impl Fn(&InputProfile) -> &Vec<u64>) -> String {
        self.inputs
            .iter()
            .map(|i| {
                let dims: Vec<String> = pick(i).iter().map(u64::to_string).collect();
                format!("{}:{}", i.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether any input has a dynamic dimension.
    pub fn is_dynamic(&self) -> bool {
        self.inputs.iter().any(|i| i.source != "fixed")
    }
}

/// `tensorrt.json`.
#[derive(Serialize)]
struct TensorRtFile<'a> {
    model: &'static str,
    /// Types come from the graph (FP16 as casts, INT8 as Q/DQ): build strongly typed.
    strongly_typed: bool,
    int8_qdq: bool,
    fp16_tensors: bool,
    profile: &'a BuildProfile,
    notes: Vec<String>,
    trtexec: Vec<String>,
    /// Provider options of ONNX Runtime's TensorrtExecutionProvider.
    onnxruntime_tensorrt_provider: BTreeMap<&'static str, String>,
}

fn quote(arg: &str) -> String {
    if arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_=./:,".contains(&b)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The TensorRT files of an artifact.
pub fn emit(model: &Model, profile: &BuildProfile) -> Result<Vec<EmittedFile>, EmitError> {
    let mut int8 = false;
    let mut fp16 = false;
    if let Some(g) = &model.graph {
        g.visit_graphs(&mut |g| {
            int8 |= g.nodes().any(|(_, n)| n.is_onnx("QuantizeLinear") || n.is_onnx("DequantizeLinear"));
            fp16 |= g.values().any(|(_, v)| {
                v.ty.as_ref().and_then(|t| t.as_tensor()).and_then(|t| t.dtype()) == Some(kiln_compiler::DataType::F16)
            });
        });
    }
    let mut trtexec = vec![
        "trtexec".to_string(),
        "--onnx=model.onnx".to_string(),
        "--stronglyTyped".to_string(),
        "--saveEngine=model.engine".to_string(),
        "--timingCacheFile=timing.cache".to_string(),
    ];
    let mut ep = BTreeMap::new();
    ep.insert("trt_engine_cache_enable", "1".to_string());
    ep.insert("trt_engine_cache_path", "trt_cache".to_string());
    ep.insert("trt_timing_cache_enable", "1".to_string());
    ep.insert("trt_timing_cache_path", "trt_cache".to_string());
    ep.insert("trt_fp16_enable", if fp16 { "1" } else { "0" }.to_string());
    ep.insert("trt_int8_enable", if int8 { "1" } else { "0" }.to_string());
    let mut notes = Vec::new();
    if !profile.inputs.is_empty() {
        let min = profile.shapes_arg(|i| &i.min);
        let opt = profile.shapes_arg(|i| &i.opt);
        let max = profile.shapes_arg(|i| &i.max);
        trtexec.push(format!("--minShapes={min}"));
        trtexec.push(format!("--optShapes={opt}"));
        trtexec.push(format!("--maxShapes={max}"));
        ep.insert("trt_profile_min_shapes", min);
        ep.insert("trt_profile_opt_shapes", opt);
        ep.insert("trt_profile_max_shapes", max);
    }
    for i in profile.inputs.iter().filter(|i| i.source == "default 1") {
        notes.push(format!(
            "input '{}': dynamic dimensions fixed at 1 (no --shapes and no data): the engine accepts only that shape",
            i.name
        ));
    }
    let file = TensorRtFile {
        model: crate::artifact::MODEL,
        strongly_typed: true,
        int8_qdq: int8,
        fp16_tensors: fp16,
        profile,
        notes,
        trtexec: trtexec.clone(),
        onnxruntime_tensorrt_provider: ep,
    };
    let mut json = serde_json::to_string_pretty(&file)?;
    json.push('\n');
    let args: Vec<String> = trtexec.iter().map(|a| quote(a)).collect();
    let script = format!(
        "#!/bin/sh\n# Builds a TensorRT engine (model.engine) from this artifact with the profile in tensorrt.json.\n\
         # Written by Kiln. Extra arguments are passed on to trtexec.\nset -e\ncd \"$(dirname \"$0\")\"\nexec {} \"$@\"\n",
        args.join(" \\\n    ")
    );
    Ok(vec![
        EmittedFile { name: "tensorrt.json".into(), bytes: json.into_bytes(), executable: false },
        EmittedFile { name: "trtexec.sh".into(), bytes: script.into_bytes(), executable: true },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_compiler::ir::{Dim, Graph, NodeSpec, OpsetImport, TensorType, Type};

    fn model() -> Model {
        let mut g = Graph::new();
        let dims = vec![Dim::symbol("N"), Dim::known(3), Dim::known(8), Dim::symbol("W")];
        let x = g.add_input("x", Some(Type::tensor(TensorType::new(kiln_compiler::DataType::F32, Some(dims)))));
        let n = g.add_node(NodeSpec::new("Relu").inputs([x]).outputs(["y"]));
        let y = g.node(n).output(0).unwrap();
        g.push_output(y);
        Model {
            ir_version: Some(8),
            opset_import: vec![OpsetImport { domain: None, version: Some(17) }],
            graph: Some(g),
            ..Model::default()
        }
    }

    #[test]
    fn profile_from_shapes_data_or_default() {
        let m = model();
        let (name, r) = ShapeRange::parse("x=1x3x8x16:4x3x8x64:8x3x8x128").unwrap();
        let p = BuildProfile::from_model(&m, &BTreeMap::from([(name, r)]), &BTreeMap::new()).unwrap();
        assert_eq!(p.inputs[0].opt, vec![4, 3, 8, 64]);
        assert_eq!(p.inputs[0].source, "--shapes");

        let observed =
            BTreeMap::from([("x".to_string(), vec![vec![1, 3, 8, 32], vec![2, 3, 8, 32], vec![1, 3, 8, 96]])]);
        let p = BuildProfile::from_model(&m, &BTreeMap::new(), &observed).unwrap();
        assert_eq!((p.inputs[0].min.clone(), p.inputs[0].max.clone()), (vec![1, 3, 8, 32], vec![2, 3, 8, 96]));

        let p = BuildProfile::from_model(&m, &BTreeMap::new(), &BTreeMap::new()).unwrap();
        assert_eq!(p.inputs[0].max, vec![1, 3, 8, 1]);
        assert_eq!(p.inputs[0].source, "default 1");
        let files = emit(&m, &p).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&files[0].bytes).unwrap();
        assert!(json["notes"][0].as_str().unwrap().contains("fixed at 1"));
        assert_eq!(json["onnxruntime_tensorrt_provider"]["trt_profile_max_shapes"], "x:1x3x8x1");
        let script = String::from_utf8(files[1].bytes.clone()).unwrap();
        assert!(script.contains("--minShapes=x:1x3x8x1") && script.contains("--stronglyTyped"), "{script}");
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        let m = model();
        assert!(matches!(ShapeRange::parse("x=1x3:"), Err(ProfileError::Syntax(_))));
        let (n, r) = ShapeRange::parse("x=1x4x8x16").unwrap();
        let e = BuildProfile::from_model(&m, &BTreeMap::from([(n, r)]), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("fixed at 3"), "{e}");
        let (n, r) = ShapeRange::parse("x=8x3x8x16:1x3x8x16").unwrap();
        let e = BuildProfile::from_model(&m, &BTreeMap::from([(n, r)]), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("MIN <= OPT <= MAX"), "{e}");
        let (n, r) = ShapeRange::parse("y=1").unwrap();
        assert!(matches!(
            BuildProfile::from_model(&m, &BTreeMap::from([(n, r)]), &BTreeMap::new()),
            Err(ProfileError::UnknownInput { .. })
        ));
    }
}
