//! ONNX protobuf → IR. The file is memory-mapped and decoded from the map, so `raw_data`
//! and external data stay in the page cache instead of being copied.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use super::error::OnnxError;
use super::proto::{
    self, AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_shape_proto::dimension, type_proto,
};
use super::tensor_codec::{ExternalResolver, tensor_from_proto};
use crate::ir::{
    AttrValue, Attribute, Dim, DimValue, Function, Graph, MetadataEntry, Model, NodeSpec, OpaqueFields, OpsetImport,
    TensorType, Type, TypeKind, ValueDef, ValueId,
};
use crate::tensor::{FileRegion, Tensor};

/// Maps a whole file read-only. Empty files cannot be mapped and give an empty buffer.
pub(crate) fn map_file(path: &Path) -> Result<Bytes, OnnxError> {
    let file = File::open(path).map_err(|e| OnnxError::io(path, e))?;
    let len = file.metadata().map_err(|e| OnnxError::io(path, e))?.len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only. Kiln never writes to files it has mapped (outputs are
    // written to a temporary file and renamed), so the mapped bytes cannot change under us
    // through Kiln; another process truncating the file is outside what any reader can guard.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| OnnxError::io(path, e))?;
    Ok(Bytes::from_owner(map))
}

/// Reads a model from a file; external data is resolved next to it.
pub fn load_model(path: &Path) -> Result<Model, OnnxError> {
    let bytes = map_file(path)?;
    // `model.onnx` has the parent `""`, which names no folder: its data is in `.`.
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Raw tensors remember where they lie in the file, so a runtime can read them from it.
    let main = path.canonicalize().ok().map(|real| (bytes.clone(), real));
    decode_from(bytes, path, Some(&base), main)
}

/// Decodes a model from bytes. `origin` names the source in messages; `base_dir` is where
/// external data lives (`None`: external data is an error).
pub fn decode_model(bytes: Bytes, origin: &Path, base_dir: Option<&Path>) -> Result<Model, OnnxError> {
    decode_from(bytes, origin, base_dir, None)
}

fn decode_from(
    bytes: Bytes,
    origin: &Path,
    base_dir: Option<&Path>,
    main: Option<(Bytes, PathBuf)>,
) -> Result<Model, OnnxError> {
    if bytes.is_empty() {
        return Err(OnnxError::Other { path: origin.to_path_buf(), message: "the file is empty".into() });
    }
    let mp = ModelProto::decode(bytes).map_err(|source| OnnxError::Decode { path: origin.to_path_buf(), source })?;
    let mut imp = Importer {
        path: origin.to_path_buf(),
        external: ExternalFiles { base_dir: base_dir.map(Path::to_path_buf), maps: HashMap::new(), main },
    };
    imp.model(mp)
}

/// Resolves and validates external data references against the model's folder.
struct ExternalFiles {
    base_dir: Option<PathBuf>,
    maps: HashMap<PathBuf, Bytes>,
    /// The mapped model file and its canonical path, when the model was read from one.
    main: Option<(Bytes, PathBuf)>,
}

fn entry<'a>(entries: &'a [(Option<String>, Option<String>)], key: &str) -> Option<&'a str> {
    entries.iter().find(|(k, _)| k.as_deref() == Some(key)).and_then(|(_, v)| v.as_deref())
}

/// Checks that an external-data location is a relative path that stays inside its folder.
pub(crate) fn check_relative_location(location: &str) -> Result<(), String> {
    if location.is_empty() {
        return Err("the location is empty".into());
    }
    let p = Path::new(location);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err("the location contains '..' and would leave the model's folder".into());
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("the location is an absolute path; only paths inside the model's folder are allowed".into());
            }
        }
    }
    Ok(())
}

impl ExternalResolver for ExternalFiles {
    fn resolve(
        &mut self,
        _tensor: &str,
        entries: &[(Option<String>, Option<String>)],
        expected_len: u64,
    ) -> Result<(Bytes, FileRegion), String> {
        let location = entry(entries, "location").ok_or("external data without a 'location'")?;
        check_relative_location(location)?;
        let base = self.base_dir.as_ref().ok_or("external data, but the model was not read from a folder")?;
        let path = base.join(location);
        // A symbolic link inside the folder must not lead outside it either.
        let real = path.canonicalize().map_err(|e| format!("cannot open '{}': {e}", path.display()))?;
        let real_base = base.canonicalize().map_err(|e| format!("cannot open folder '{}': {e}", base.display()))?;
        if !real.starts_with(&real_base) {
            return Err(format!("'{}' resolves outside the model's folder", path.display()));
        }
        let parse = |key: &str| -> Result<Option<u64>, String> {
            entry(entries, key)
                .map(|v| v.trim().parse::<u64>().map_err(|_| format!("'{key}' is not a non-negative integer: '{v}'")))
                .transpose()
        };
        let offset = parse("offset")?.unwrap_or(0);
        let length = parse("length")?;
        if let Some(len) = length
            && len != expected_len
        {
            return Err(format!("length is {len} bytes but the tensor's shape and type need {expected_len}"));
        }
        let file_len = std::fs::metadata(&real).map_err(|e| format!("cannot open '{}': {e}", path.display()))?.len();
        let end = offset.checked_add(expected_len).ok_or("offset + length overflows")?;
        if end > file_len {
            return Err(format!(
                "offset {offset} + length {expected_len} = {end} is past the end of the file ({file_len} bytes)"
            ));
        }
        let region = FileRegion { path: real.clone(), offset, length: expected_len };
        if expected_len == 0 {
            return Ok((Bytes::new(), region));
        }
        let map = match self.maps.get(&real) {
            Some(m) => m.clone(),
            None => {
                let m = map_file(&real).map_err(|e| e.to_string())?;
                self.maps.insert(real.clone(), m.clone());
                m
            }
        };
        // The file may have shrunk since we looked at its length.
        if end > map.len() as u64 {
            return Err(format!("the file is shorter than offset + length ({end} bytes)"));
        }
        Ok((map.slice(offset as usize..end as usize), region))
    }

    fn raw_region(&self, raw: &Bytes) -> Option<FileRegion> {
        let (file, path) = self.main.as_ref()?;
        let start = (raw.as_ptr() as usize).checked_sub(file.as_ptr() as usize)?;
        let end = start.checked_add(raw.len())?;
        (end <= file.len() && !raw.is_empty()).then(|| FileRegion {
            path: path.clone(),
            offset: start as u64,
            length: raw.len() as u64,
        })
    }
}

struct Importer {
    path: PathBuf,
    external: ExternalFiles,
}

fn meta(v: &[proto::StringStringEntryProto]) -> Vec<MetadataEntry> {
    v.iter().map(|e| MetadataEntry { key: e.key.clone(), value: e.value.clone() }).collect()
}

fn opsets(v: &[proto::OperatorSetIdProto]) -> Vec<OpsetImport> {
    v.iter().map(|o| OpsetImport { domain: o.domain.clone(), version: o.version }).collect()
}

fn opaque<M: Message>(tag: u32, items: &[M]) -> impl Iterator<Item = (u32, Bytes)> + '_ {
    items.iter().map(move |m| (tag, Bytes::from(m.encode_to_vec())))
}

pub(crate) fn type_from_proto(tp: &TypeProto) -> Type {
    let sub = |t: &Option<Box<TypeProto>>| t.as_ref().map(|t| Box::new(type_from_proto(t)));
    let tensor = |elem_type: Option<i32>, shape: &Option<proto::TensorShapeProto>| TensorType {
        elem_type,
        shape: shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| Dim {
                    value: match &d.value {
                        Some(dimension::Value::DimValue(v)) => DimValue::Known(*v),
                        Some(dimension::Value::DimParam(p)) => DimValue::Symbol(p.clone()),
                        None => DimValue::Unknown,
                    },
                    denotation: d.denotation.clone(),
                })
                .collect()
        }),
    };
    let kind = match &tp.value {
        None => TypeKind::Unset,
        Some(type_proto::Value::TensorType(t)) => TypeKind::Tensor(tensor(t.elem_type, &t.shape)),
        Some(type_proto::Value::SparseTensorType(t)) => TypeKind::SparseTensor(tensor(t.elem_type, &t.shape)),
        Some(type_proto::Value::SequenceType(s)) => TypeKind::Sequence(sub(&s.elem_type)),
        Some(type_proto::Value::MapType(m)) => TypeKind::Map { key_type: m.key_type, value_type: sub(&m.value_type) },
        Some(type_proto::Value::OptionalType(o)) => TypeKind::Optional(sub(&o.elem_type)),
        Some(type_proto::Value::OpaqueType(o)) => TypeKind::Opaque { domain: o.domain.clone(), name: o.name.clone() },
    };
    Type { kind, denotation: tp.denotation.clone() }
}

impl Importer {
    fn model(&mut self, mp: ModelProto) -> Result<Model, OnnxError> {
        let graph = match &mp.graph {
            Some(g) => Some(self.graph(g)?),
            None => {
                return Err(OnnxError::NoGraph { path: self.path.clone() });
            }
        };
        let functions = mp.functions.iter().map(|f| self.function(f)).collect::<Result<Vec<_>, _>>()?;
        let mut opaque_fields = OpaqueFields::default();
        opaque_fields.messages.extend(opaque(20, &mp.training_info));
        opaque_fields.messages.extend(opaque(26, &mp.configuration));
        Ok(Model {
            ir_version: mp.ir_version,
            opset_import: opsets(&mp.opset_import),
            producer_name: mp.producer_name.clone(),
            producer_version: mp.producer_version.clone(),
            domain: mp.domain.clone(),
            model_version: mp.model_version,
            doc_string: mp.doc_string.clone(),
            graph,
            metadata_props: meta(&mp.metadata_props),
            functions,
            opaque: opaque_fields,
        })
    }

    fn tensor(&mut self, tp: &proto::TensorProto) -> Result<Tensor, OnnxError> {
        let name = tp.name.clone().unwrap_or_default();
        tensor_from_proto(tp, &mut self.external).map_err(|message| {
            let location =
                tp.external_data.iter().find(|e| e.key.as_deref() == Some("location")).and_then(|e| e.value.clone());
            match location {
                Some(location) if !tp.external_data.is_empty() => {
                    OnnxError::ExternalData { path: self.path.clone(), tensor: name.clone(), location, message }
                }
                _ => OnnxError::Tensor { path: self.path.clone(), tensor: name.clone(), message },
            }
        })
    }

    fn set_info(g: &mut Graph, v: ValueId, vi: &ValueInfoProto) {
        let val = g.value_mut(v);
        if let Some(t) = &vi.r#type {
            val.ty = Some(type_from_proto(t));
        }
        val.doc_string = vi.doc_string.clone();
        val.metadata_props = meta(&vi.metadata_props);
    }

    fn graph(&mut self, gp: &GraphProto) -> Result<Graph, OnnxError> {
        let mut g = Graph::new();
        g.name = gp.name.clone();
        g.doc_string = gp.doc_string.clone();
        g.metadata_props = meta(&gp.metadata_props);
        g.opaque.messages.extend(opaque(14, &gp.quantization_annotation));
        g.opaque.messages.extend(opaque(15, &gp.sparse_initializer));

        // Name → value, first definition wins (duplicates are kept for the verifier to report).
        let mut scope: HashMap<String, ValueId> = HashMap::new();
        for tp in &gp.initializer {
            let t = self.tensor(tp)?;
            let name = tp.name.clone().unwrap_or_default();
            let v = g.add_initializer(name.clone(), Arc::new(t));
            scope.entry(name).or_insert(v);
        }
        for vi in &gp.input {
            let name = vi.name.clone().unwrap_or_default();
            let v = match scope.get(&name) {
                Some(&v) if matches!(g.value(v).def(), ValueDef::Initializer(_)) && !g.inputs().contains(&v) => {
                    g.push_input(v);
                    v
                }
                _ => {
                    let v = g.add_input(name.clone(), None);
                    scope.entry(name).or_insert(v);
                    v
                }
            };
            Self::set_info(&mut g, v, vi);
        }
        g.set_inputs(g.inputs().to_vec());
        self.nodes(&mut g, &mut scope, &gp.node)?;
        for vi in &gp.output {
            let name = vi.name.clone().unwrap_or_default();
            let v = Self::lookup(&mut g, &mut scope, &name);
            g.push_output(v);
            Self::set_info(&mut g, v, vi);
        }
        let mut infos = Vec::new();
        for vi in &gp.value_info {
            let name = vi.name.clone().unwrap_or_default();
            let v = match scope.get(&name) {
                Some(&v) => v,
                // A value_info for a name nothing defines: keep the entry, detached.
                None => {
                    let v = g.add_outer(name.clone());
                    scope.insert(name, v);
                    v
                }
            };
            Self::set_info(&mut g, v, vi);
            infos.push(v);
        }
        g.set_value_info(infos);
        Ok(g)
    }

    /// The value a name refers to; unknown names become captures from an enclosing scope
    /// (or dangling references, which the verifier reports), bound later if a node defines them.
    fn lookup(g: &mut Graph, scope: &mut HashMap<String, ValueId>, name: &str) -> ValueId {
        if let Some(&v) = scope.get(name) {
            return v;
        }
        let v = g.add_outer(name.to_string());
        scope.insert(name.to_string(), v);
        v
    }

    fn nodes(
        &mut self,
        g: &mut Graph,
        scope: &mut HashMap<String, ValueId>,
        nodes: &[NodeProto],
    ) -> Result<(), OnnxError> {
        for np in nodes {
            let inputs = np
                .input
                .iter()
                .map(|name| if name.is_empty() { None } else { Some(Self::lookup(g, scope, name)) })
                .collect();
            let attributes = np
                .attribute
                .iter()
                .map(|a| self.attribute(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.node_error(np, e))?;
            // Outputs already referenced (unsorted graphs, cycles) are bound to the node below.
            let pending: Vec<Option<ValueId>> = np
                .output
                .iter()
                .map(|name| scope.get(name).copied().filter(|&v| matches!(g.value(v).def(), ValueDef::Outer)))
                .collect();
            let spec = NodeSpec {
                name: np.name.clone(),
                op_type: np.op_type.clone().unwrap_or_default(),
                domain: np.domain.clone(),
                inputs,
                outputs: np
                    .output
                    .iter()
                    .zip(&pending)
                    .map(|(name, p)| if p.is_some() { String::new() } else { name.clone() })
                    .collect(),
                attributes,
            };
            let id = g.add_node(spec);
            for (i, p) in pending.iter().enumerate() {
                if let Some(v) = *p {
                    g.bind_output(id, i, v);
                }
            }
            for (i, name) in np.output.iter().enumerate() {
                if let Some(v) = g.node(id).output(i) {
                    scope.entry(name.clone()).or_insert(v);
                }
            }
            let n = g.node_mut(id);
            n.overload = np.overload.clone();
            n.doc_string = np.doc_string.clone();
            n.metadata_props = meta(&np.metadata_props);
            n.opaque.messages.extend(opaque(10, &np.device_configurations));
        }
        Ok(())
    }

    fn node_error(&self, np: &NodeProto, e: OnnxError) -> OnnxError {
        let node = match np.name.as_deref() {
            Some(n) if !n.is_empty() => format!("'{n}' ({})", np.op_type.as_deref().unwrap_or("")),
            _ => np.op_type.clone().unwrap_or_default(),
        };
        OnnxError::Node { path: self.path.clone(), node, message: e.to_string() }
    }

    fn attribute(&mut self, a: &AttributeProto) -> Result<Attribute, OnnxError> {
        let raw = || AttrValue::Raw(Bytes::from(a.encode_to_vec()));
        let name = a.name.clone().unwrap_or_default();
        // Which value fields are present, to detect attributes that are not one clean type.
        let present: Vec<AttributeType> = [
            (a.f.is_some(), AttributeType::Float),
            (a.i.is_some(), AttributeType::Int),
            (a.s.is_some(), AttributeType::String),
            (a.t.is_some(), AttributeType::Tensor),
            (a.g.is_some(), AttributeType::Graph),
            (a.sparse_tensor.is_some(), AttributeType::SparseTensor),
            (a.tp.is_some(), AttributeType::TypeProto),
            (!a.floats.is_empty(), AttributeType::Floats),
            (!a.ints.is_empty(), AttributeType::Ints),
            (!a.strings.is_empty(), AttributeType::Strings),
            (!a.tensors.is_empty(), AttributeType::Tensors),
            (!a.graphs.is_empty(), AttributeType::Graphs),
            (!a.sparse_tensors.is_empty(), AttributeType::SparseTensors),
            (!a.type_protos.is_empty(), AttributeType::TypeProtos),
        ]
        .into_iter()
        .filter_map(|(p, t)| p.then_some(t))
        .collect();
        let declared = a.r#type.and_then(|t| AttributeType::try_from(t).ok());
        let kind = match (declared, present.as_slice()) {
            (Some(t), []) => Some(t),
            (Some(t), [p]) if *p == t => Some(t),
            (None, [p]) => Some(*p),
            _ => None,
        };
        let value = match kind {
            _ if a.ref_attr_name.is_some() => raw(),
            None => raw(),
            Some(kind) => match kind {
                AttributeType::Float => a.f.map_or_else(raw, AttrValue::Float),
                AttributeType::Int => a.i.map_or_else(raw, AttrValue::Int),
                AttributeType::String => a.s.clone().map_or_else(raw, AttrValue::String),
                AttributeType::Tensor => match &a.t {
                    Some(t) => AttrValue::Tensor(Arc::new(self.tensor(t)?)),
                    None => raw(),
                },
                AttributeType::Graph => match &a.g {
                    Some(g) => AttrValue::Graph(Box::new(self.graph(g)?)),
                    None => raw(),
                },
                AttributeType::SparseTensor => match &a.sparse_tensor {
                    Some(s) => AttrValue::SparseTensor(Bytes::from(s.encode_to_vec())),
                    None => raw(),
                },
                AttributeType::TypeProto => a.tp.as_ref().map_or_else(raw, |t| AttrValue::Type(type_from_proto(t))),
                AttributeType::Floats => AttrValue::Floats(a.floats.clone()),
                AttributeType::Ints => AttrValue::Ints(a.ints.clone()),
                AttributeType::Strings => AttrValue::Strings(a.strings.clone()),
                AttributeType::Tensors => AttrValue::Tensors(
                    a.tensors.iter().map(|t| self.tensor(t).map(Arc::new)).collect::<Result<_, _>>()?,
                ),
                AttributeType::Graphs => {
                    AttrValue::Graphs(a.graphs.iter().map(|g| self.graph(g)).collect::<Result<_, _>>()?)
                }
                AttributeType::SparseTensors => {
                    AttrValue::SparseTensors(a.sparse_tensors.iter().map(|s| Bytes::from(s.encode_to_vec())).collect())
                }
                AttributeType::TypeProtos => AttrValue::Types(a.type_protos.iter().map(type_from_proto).collect()),
                AttributeType::Undefined => raw(),
            },
        };
        Ok(Attribute { name, value, doc_string: a.doc_string.clone(), type_written: a.r#type.is_some() })
    }

    fn function(&mut self, f: &FunctionProto) -> Result<Function, OnnxError> {
        let mut body = Graph::new();
        let mut scope = HashMap::new();
        for name in &f.input {
            let v = body.add_input(name.clone(), None);
            scope.entry(name.clone()).or_insert(v);
        }
        self.nodes(&mut body, &mut scope, &f.node)?;
        for name in &f.output {
            let v = Self::lookup(&mut body, &mut scope, name);
            body.push_output(v);
        }
        let mut infos = Vec::new();
        for vi in &f.value_info {
            let name = vi.name.clone().unwrap_or_default();
            let v = Self::lookup(&mut body, &mut scope, &name);
            Self::set_info(&mut body, v, vi);
            infos.push(v);
        }
        body.set_value_info(infos);
        Ok(Function {
            name: f.name.clone(),
            domain: f.domain.clone(),
            overload: f.overload.clone(),
            attribute: f.attribute.clone(),
            attribute_proto: f.attribute_proto.iter().map(|a| self.attribute(a)).collect::<Result<_, _>>()?,
            opset_import: opsets(&f.opset_import),
            doc_string: f.doc_string.clone(),
            metadata_props: meta(&f.metadata_props),
            body,
        })
    }
}
