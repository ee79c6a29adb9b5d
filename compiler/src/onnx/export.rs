//! IR → ONNX protobuf, and saving a model with its external data atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::error::OnnxError;
use super::import::check_relative_location;
use super::proto::{
    self, AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_shape_proto, type_proto,
};
use super::tensor_codec::{DataPlacement, tensor_to_proto};
use super::write::{AtomicFile, write_tensor_bytes};
use crate::ir::{
    AttrValue, Attribute, DimValue, Graph, MetadataEntry, Model, OpaqueFields, TensorType, Type, TypeKind, ValueId,
};
use crate::tensor::{Tensor, TensorEncoding};

/// Protobuf cannot serialize messages of 2 GiB or more.
pub const PROTOBUF_LIMIT: u64 = (1 << 31) - 1;

/// Where tensor data goes when a model is saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalData {
    /// Every tensor as it was loaded: inline ones inline, external ones in files of the same
    /// names at the same offsets (rewritten next to the output). New tensors go inline.
    AsLoaded,
    /// Every tensor inline.
    Inline,
    /// Tensors of at least `threshold` bytes in one raw data file next to the model.
    File { location: String, threshold: u64 },
    /// Tensors of at least `threshold` bytes in one `.safetensors` file next to the model.
    Safetensors { location: String, threshold: u64 },
}

/// Options of [`save_model`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveOptions {
    pub external: ExternalData,
    /// Move data to `<model file name>.data` when the protobuf would exceed 2 GiB.
    pub auto_external: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { external: ExternalData::AsLoaded, auto_external: true }
    }
}

/// What [`save_model`] wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SaveReport {
    pub model_path: PathBuf,
    pub model_bytes: u64,
    /// External files written, with their sizes.
    pub external_files: Vec<(String, u64)>,
    pub external_tensors: usize,
    /// Whether data was moved out automatically because of the 2 GiB limit.
    pub auto_external: bool,
    /// The hex sha256 of the model file, hashed as it was written.
    pub model_sha256: String,
}

/// One tensor bound for an external file.
struct DataJob {
    location: String,
    offset: u64,
    tensor: Tensor,
}

fn meta(v: &[MetadataEntry]) -> Vec<proto::StringStringEntryProto> {
    v.iter().map(|e| proto::StringStringEntryProto { key: e.key.clone(), value: e.value.clone() }).collect()
}

fn decode_opaque<M: Message + Default>(fields: &OpaqueFields, tag: u32) -> Vec<M> {
    // These bytes were produced by `encode_to_vec` of the same message type on import.
    fields.messages.iter().filter(|(t, _)| *t == tag).filter_map(|(_, b)| M::decode(b.clone()).ok()).collect()
}

pub(crate) fn type_to_proto(t: &Type) -> TypeProto {
    let sub = |t: &Option<Box<Type>>| t.as_ref().map(|t| Box::new(type_to_proto(t)));
    let shape = |tt: &TensorType| {
        tt.shape.as_ref().map(|dims| proto::TensorShapeProto {
            dim: dims
                .iter()
                .map(|d| tensor_shape_proto::Dimension {
                    value: match &d.value {
                        DimValue::Known(v) => Some(tensor_shape_proto::dimension::Value::DimValue(*v)),
                        DimValue::Symbol(s) => Some(tensor_shape_proto::dimension::Value::DimParam(s.clone())),
                        DimValue::Unknown => None,
                    },
                    denotation: d.denotation.clone(),
                })
                .collect(),
        })
    };
    let value = match &t.kind {
        TypeKind::Unset => None,
        TypeKind::Tensor(tt) => {
            Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: tt.elem_type, shape: shape(tt) }))
        }
        TypeKind::SparseTensor(tt) => Some(type_proto::Value::SparseTensorType(type_proto::SparseTensor {
            elem_type: tt.elem_type,
            shape: shape(tt),
        })),
        TypeKind::Sequence(e) => {
            Some(type_proto::Value::SequenceType(Box::new(type_proto::Sequence { elem_type: sub(e) })))
        }
        TypeKind::Map { key_type, value_type } => Some(type_proto::Value::MapType(Box::new(type_proto::Map {
            key_type: *key_type,
            value_type: sub(value_type),
        }))),
        TypeKind::Optional(e) => {
            Some(type_proto::Value::OptionalType(Box::new(type_proto::Optional { elem_type: sub(e) })))
        }
        TypeKind::Opaque { domain, name } => {
            Some(type_proto::Value::OpaqueType(type_proto::Opaque { domain: domain.clone(), name: name.clone() }))
        }
    };
    TypeProto { value, denotation: t.denotation.clone() }
}

/// Converts the IR to protobuf messages; `place` decides where each tensor's data goes.
struct Exporter<'a> {
    place: &'a mut dyn FnMut(&Tensor, &str) -> DataPlacement,
}

impl Exporter<'_> {
    fn model(&mut self, m: &Model) -> ModelProto {
        ModelProto {
            ir_version: m.ir_version,
            opset_import: opsets(&m.opset_import),
            producer_name: m.producer_name.clone(),
            producer_version: m.producer_version.clone(),
            domain: m.domain.clone(),
            model_version: m.model_version,
            doc_string: m.doc_string.clone(),
            graph: m.graph.as_ref().map(|g| self.graph(g)),
            metadata_props: meta(&m.metadata_props),
            training_info: decode_opaque(&m.opaque, 20),
            functions: m.functions.iter().map(|f| self.function(f)).collect(),
            configuration: decode_opaque(&m.opaque, 26),
        }
    }

    fn tensor(&mut self, t: &Tensor, name: Option<String>) -> proto::TensorProto {
        let label = name.clone().or_else(|| t.hints.name.clone()).unwrap_or_default();
        let placement = (self.place)(t, &label);
        tensor_to_proto(t, name, placement)
    }

    fn value_info(g: &Graph, v: ValueId) -> ValueInfoProto {
        let val = g.value(v);
        ValueInfoProto {
            name: Some(val.name.clone()),
            r#type: val.ty.as_ref().map(type_to_proto),
            doc_string: val.doc_string.clone(),
            metadata_props: meta(&val.metadata_props),
        }
    }

    fn graph(&mut self, g: &Graph) -> GraphProto {
        let initializer = g
            .initializers()
            .iter()
            .filter_map(|&v| g.value(v).initializer().map(|t| (v, t.clone())))
            .map(|(v, t)| self.tensor(&t, Some(g.value(v).name.clone())))
            .collect();
        GraphProto {
            node: g.nodes().map(|(_, n)| self.node(g, n)).collect(),
            name: g.name.clone(),
            initializer,
            sparse_initializer: decode_opaque(&g.opaque, 15),
            doc_string: g.doc_string.clone(),
            input: g.inputs().iter().map(|&v| Self::value_info(g, v)).collect(),
            output: g.outputs().iter().map(|&v| Self::value_info(g, v)).collect(),
            value_info: g.value_info().iter().map(|&v| Self::value_info(g, v)).collect(),
            quantization_annotation: decode_opaque(&g.opaque, 14),
            metadata_props: meta(&g.metadata_props),
        }
    }

    fn node(&mut self, g: &Graph, n: &crate::ir::Node) -> NodeProto {
        let name_of = |v: &Option<ValueId>| v.map(|v| g.value(v).name.clone()).unwrap_or_default();
        NodeProto {
            input: n.inputs().iter().map(name_of).collect(),
            output: n.outputs().iter().map(name_of).collect(),
            name: n.name.clone(),
            op_type: Some(n.op_type.clone()),
            domain: n.domain.clone(),
            overload: n.overload.clone(),
            attribute: n.attributes.iter().map(|a| self.attribute(a)).collect(),
            doc_string: n.doc_string.clone(),
            metadata_props: meta(&n.metadata_props),
            device_configurations: decode_opaque(&n.opaque, 10),
        }
    }

    fn attribute(&mut self, a: &Attribute) -> AttributeProto {
        let mut p =
            AttributeProto { name: Some(a.name.clone()), doc_string: a.doc_string.clone(), ..Default::default() };
        let kind = match &a.value {
            AttrValue::Raw(b) => return AttributeProto::decode(b.clone()).unwrap_or(p),
            AttrValue::Float(f) => {
                p.f = Some(*f);
                AttributeType::Float
            }
            AttrValue::Int(i) => {
                p.i = Some(*i);
                AttributeType::Int
            }
            AttrValue::String(s) => {
                p.s = Some(s.clone());
                AttributeType::String
            }
            AttrValue::Tensor(t) => {
                p.t = Some(self.tensor(t, None));
                AttributeType::Tensor
            }
            AttrValue::Graph(sg) => {
                p.g = Some(Box::new(self.graph(sg)));
                AttributeType::Graph
            }
            AttrValue::SparseTensor(b) => {
                p.sparse_tensor = proto::SparseTensorProto::decode(b.clone()).ok();
                AttributeType::SparseTensor
            }
            AttrValue::Type(t) => {
                p.tp = Some(type_to_proto(t));
                AttributeType::TypeProto
            }
            AttrValue::Floats(v) => {
                p.floats = v.clone();
                AttributeType::Floats
            }
            AttrValue::Ints(v) => {
                p.ints = v.clone();
                AttributeType::Ints
            }
            AttrValue::Strings(v) => {
                p.strings = v.clone();
                AttributeType::Strings
            }
            AttrValue::Tensors(v) => {
                p.tensors = v.iter().map(|t| self.tensor(t, None)).collect();
                AttributeType::Tensors
            }
            AttrValue::Graphs(v) => {
                p.graphs = v.iter().map(|sg| self.graph(sg)).collect();
                AttributeType::Graphs
            }
            AttrValue::SparseTensors(v) => {
                p.sparse_tensors = v.iter().filter_map(|b| proto::SparseTensorProto::decode(b.clone()).ok()).collect();
                AttributeType::SparseTensors
            }
            AttrValue::Types(v) => {
                p.type_protos = v.iter().map(type_to_proto).collect();
                AttributeType::TypeProtos
            }
        };
        if a.type_written {
            p.r#type = Some(kind as i32);
        }
        p
    }

    fn function(&mut self, f: &crate::ir::Function) -> FunctionProto {
        let b = &f.body;
        let name = |v: &ValueId| b.value(*v).name.clone();
        FunctionProto {
            name: f.name.clone(),
            input: b.inputs().iter().map(name).collect(),
            output: b.outputs().iter().map(name).collect(),
            attribute: f.attribute.clone(),
            attribute_proto: f.attribute_proto.iter().map(|a| self.attribute(a)).collect(),
            node: b.nodes().map(|(_, n)| self.node(b, n)).collect(),
            doc_string: f.doc_string.clone(),
            opset_import: opsets(&f.opset_import),
            domain: f.domain.clone(),
            overload: f.overload.clone(),
            value_info: b.value_info().iter().map(|&v| Self::value_info(b, v)).collect(),
            metadata_props: meta(&f.metadata_props),
        }
    }
}

fn opsets(v: &[crate::ir::OpsetImport]) -> Vec<proto::OperatorSetIdProto> {
    v.iter().map(|o| proto::OperatorSetIdProto { domain: o.domain.clone(), version: o.version }).collect()
}

/// The model as protobuf, every tensor where it was loaded (external references are kept
/// as they are: the data must still be where they point).
pub fn model_to_proto(model: &Model) -> ModelProto {
    let mut place = |_: &Tensor, _: &str| DataPlacement::AsLoaded;
    Exporter { place: &mut place }.model(model)
}

/// The model as protobuf with tensors placed by `place` (external entries, inline, or as
/// loaded).
pub(crate) fn model_to_proto_placed(
    model: &Model,
    place: &mut dyn FnMut(&Tensor, &str) -> DataPlacement,
) -> ModelProto {
    Exporter { place }.model(model)
}

/// The model serialized in memory, for executors and tests. External references are kept.
pub fn encode_model(model: &Model) -> Vec<u8> {
    model_to_proto(model).encode_to_vec()
}

fn external_entries(location: &str, offset: u64, length: u64) -> Vec<(Option<String>, Option<String>)> {
    vec![
        (Some("location".into()), Some(location.to_string())),
        (Some("offset".into()), Some(offset.to_string())),
        (Some("length".into()), Some(length.to_string())),
    ]
}

/// Alignment of tensors in a new external data file: page-aligned when large, so runtimes
/// can map them.
fn alignment(len: u64) -> u64 {
    if len >= 64 * 1024 { 4096 } else { 64 }
}

/// Saves a model to `path` (temp file + rename), with its external data next to it.
pub fn save_model(model: &Model, path: &Path, options: &SaveOptions) -> Result<SaveReport, OnnxError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into());
    let mut external = options.external.clone();
    let mut auto = false;
    if options.auto_external && matches!(external, ExternalData::AsLoaded | ExternalData::Inline) {
        let size = encoded_size(model, &external);
        if size > PROTOBUF_LIMIT {
            external = ExternalData::File { location: format!("{file_name}.data"), threshold: 1024 };
            auto = true;
        }
    }

    let mut jobs: Vec<DataJob> = Vec::new();
    let mut safetensors_offsets: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    if let ExternalData::Safetensors { location, threshold } = &external {
        check_relative_location(location).map_err(|message| OnnxError::Other { path: path.into(), message })?;
        safetensors_offsets = write_safetensors_data(model, dir, location, *threshold, path)?;
    }

    let mut next_offset = 0u64;
    let mut seen_names: BTreeMap<String, usize> = BTreeMap::new();
    let mut placement_error: Option<OnnxError> = None;
    let mut place = |t: &Tensor, name: &str| -> DataPlacement {
        let len = t.byte_size();
        match &external {
            ExternalData::AsLoaded => match &t.hints.encoding {
                Some(TensorEncoding::External { entries }) => {
                    let loc =
                        entries.iter().find(|(k, _)| k.as_deref() == Some("location")).and_then(|(_, v)| v.clone());
                    let off = entries
                        .iter()
                        .find(|(k, _)| k.as_deref() == Some("offset"))
                        .and_then(|(_, v)| v.as_deref().and_then(|v| v.trim().parse::<u64>().ok()))
                        .unwrap_or(0);
                    match loc {
                        Some(loc) if check_relative_location(&loc).is_ok() => {
                            jobs.push(DataJob { location: loc, offset: off, tensor: t.clone() });
                            DataPlacement::AsLoaded
                        }
                        _ => DataPlacement::Inline,
                    }
                }
                _ => DataPlacement::AsLoaded,
            },
            ExternalData::Inline => DataPlacement::Inline,
            ExternalData::File { location, threshold } => {
                if t.strings().is_some() || len < *threshold {
                    return DataPlacement::Inline;
                }
                if let Err(message) = check_relative_location(location) {
                    placement_error.get_or_insert(OnnxError::Other { path: path.into(), message });
                    return DataPlacement::Inline;
                }
                let offset = next_offset.div_ceil(alignment(len)) * alignment(len);
                next_offset = offset + len;
                jobs.push(DataJob { location: location.clone(), offset, tensor: t.clone() });
                DataPlacement::External(external_entries(location, offset, len))
            }
            ExternalData::Safetensors { location, .. } => {
                let key = unique_key(&mut seen_names, name);
                match safetensors_offsets.get(&key) {
                    Some(&(offset, length)) => DataPlacement::External(external_entries(location, offset, length)),
                    None => DataPlacement::Inline,
                }
            }
        }
    };
    let mp = Exporter { place: &mut place }.model(model);
    if let Some(e) = placement_error {
        return Err(e);
    }
    let size = mp.encoded_len() as u64;
    if size > PROTOBUF_LIMIT {
        return Err(OnnxError::TooLarge { path: path.into(), size });
    }

    // Data first, the model last: a reader never sees a model whose data is missing.
    let mut report = SaveReport { model_path: path.into(), auto_external: auto, ..Default::default() };
    let mut by_location: BTreeMap<String, Vec<DataJob>> = BTreeMap::new();
    report.external_tensors = jobs.len() + safetensors_offsets.len();
    for j in jobs {
        by_location.entry(j.location.clone()).or_default().push(j);
    }
    let mut pending = Vec::new();
    for (location, mut list) in by_location {
        list.sort_by_key(|j| j.offset);
        let target = dir.join(&location);
        let mut f = AtomicFile::create(&target)?;
        let mut pos = 0u64;
        for j in &list {
            if j.offset < pos {
                return Err(OnnxError::Other {
                    path: target.clone(),
                    message: format!("two tensors overlap at offset {} in '{location}'", j.offset),
                });
            }
            f.pad_to(j.offset)?;
            write_tensor_bytes(&mut f, &j.tensor)?;
            pos = j.offset + j.tensor.byte_size();
        }
        report.external_files.push((location, pos));
        pending.push(f);
    }
    let mut mf = AtomicFile::create_digested(path)?;
    mf.write_message(&mp)?;
    report.model_bytes = size;
    for f in pending {
        f.commit()?;
    }
    if let ExternalData::Safetensors { location, .. } = &external {
        let size = std::fs::metadata(dir.join(location)).map(|m| m.len()).unwrap_or(0);
        report.external_files.push((location.clone(), size));
    }
    report.model_sha256 = mf.commit()?.unwrap_or_default();
    Ok(report)
}

fn unique_key(seen: &mut BTreeMap<String, usize>, name: &str) -> String {
    let n = seen.entry(name.to_string()).or_insert(0);
    *n += 1;
    if *n == 1 { name.to_string() } else { format!("{name}.{}", *n - 1) }
}

/// Writes the tensors of at least `threshold` bytes to a safetensors file (keyed by a
/// traversal-order unique name) and returns each key's (offset, length) in the file.
fn write_safetensors_data(
    model: &Model,
    dir: &Path,
    location: &str,
    threshold: u64,
    model_path: &Path,
) -> Result<BTreeMap<String, (u64, u64)>, OnnxError> {
    let mut chosen: Vec<(String, Tensor)> = Vec::new();
    let mut seen = BTreeMap::new();
    let mut collect = |t: &Tensor, name: &str| {
        let key = unique_key(&mut seen, name);
        if t.strings().is_none() && t.byte_size() >= threshold {
            chosen.push((key, t.clone()));
        }
        DataPlacement::Inline
    };
    let _ = Exporter { place: &mut collect }.model(model);
    let target = dir.join(location);
    let refs: Vec<(&str, &Tensor)> = chosen.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let written = crate::safetensors::write_safetensors(&target, &refs, &BTreeMap::new()).map_err(|e| {
        OnnxError::Other { path: model_path.into(), message: format!("writing '{}': {e}", target.display()) }
    })?;
    Ok(written.into_iter().map(|w| (w.name, (w.offset, w.length))).collect())
}

/// The serialized size of the model with the given policy (external tensors not counted).
fn encoded_size(model: &Model, external: &ExternalData) -> u64 {
    let mut place = |_: &Tensor, _: &str| match external {
        ExternalData::Inline => DataPlacement::Inline,
        _ => DataPlacement::AsLoaded,
    };
    Exporter { place: &mut place }.model(model).encoded_len() as u64
}
