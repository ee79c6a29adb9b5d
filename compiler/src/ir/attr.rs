//! Node attributes: typed values, subgraphs included.

use std::sync::Arc;

use bytes::Bytes;

use super::graph::Graph;
use super::types::Type;
use crate::tensor::Tensor;

/// The value of an attribute.
#[derive(Debug, Clone)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(Bytes),
    Tensor(Arc<Tensor>),
    Graph(Box<Graph>),
    /// A sparse tensor, kept in its serialized form: no pass reads it.
    SparseTensor(Bytes),
    Type(Type),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Strings(Vec<Bytes>),
    Tensors(Vec<Arc<Tensor>>),
    Graphs(Vec<Graph>),
    SparseTensors(Vec<Bytes>),
    Types(Vec<Type>),
    /// A reference to an attribute of the enclosing function (`ref_attr_name`), or an attribute
    /// whose fields do not match one type; kept in its serialized form.
    Raw(Bytes),
}

impl AttrValue {
    /// The ONNX `AttributeType` name of this value, for dumps and errors.
    pub fn kind_name(&self) -> &'static str {
        match self {
            AttrValue::Float(_) => "float",
            AttrValue::Int(_) => "int",
            AttrValue::String(_) => "string",
            AttrValue::Tensor(_) => "tensor",
            AttrValue::Graph(_) => "graph",
            AttrValue::SparseTensor(_) => "sparse_tensor",
            AttrValue::Type(_) => "type",
            AttrValue::Floats(_) => "floats",
            AttrValue::Ints(_) => "ints",
            AttrValue::Strings(_) => "strings",
            AttrValue::Tensors(_) => "tensors",
            AttrValue::Graphs(_) => "graphs",
            AttrValue::SparseTensors(_) => "sparse_tensors",
            AttrValue::Types(_) => "types",
            AttrValue::Raw(_) => "raw",
        }
    }
}

/// A named attribute. `doc_string` and how `type` was written are kept for lossless export.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
    pub doc_string: Option<String>,
    /// Whether the file wrote the `type` field (very old files omit it).
    pub type_written: bool,
}

impl Attribute {
    pub fn new(name: impl Into<String>, value: AttrValue) -> Attribute {
        Attribute { name: name.into(), value, doc_string: None, type_written: true }
    }

    pub fn int(name: impl Into<String>, v: i64) -> Attribute {
        Attribute::new(name, AttrValue::Int(v))
    }

    pub fn float(name: impl Into<String>, v: f32) -> Attribute {
        Attribute::new(name, AttrValue::Float(v))
    }

    pub fn ints(name: impl Into<String>, v: Vec<i64>) -> Attribute {
        Attribute::new(name, AttrValue::Ints(v))
    }

    pub fn string(name: impl Into<String>, v: &str) -> Attribute {
        Attribute::new(name, AttrValue::String(Bytes::copy_from_slice(v.as_bytes())))
    }
}

/// Typed lookups over a node's attribute list.
pub trait AttrLookup {
    fn attr(&self, name: &str) -> Option<&AttrValue>;

    fn attr_int(&self, name: &str) -> Option<i64> {
        match self.attr(name)? {
            AttrValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    fn attr_float(&self, name: &str) -> Option<f32> {
        match self.attr(name)? {
            AttrValue::Float(v) => Some(*v),
            _ => None,
        }
    }

    fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        match self.attr(name)? {
            AttrValue::Ints(v) => Some(v),
            _ => None,
        }
    }

    fn attr_str(&self, name: &str) -> Option<&str> {
        match self.attr(name)? {
            AttrValue::String(v) => std::str::from_utf8(v).ok(),
            _ => None,
        }
    }

    fn attr_tensor(&self, name: &str) -> Option<&Arc<Tensor>> {
        match self.attr(name)? {
            AttrValue::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

impl AttrLookup for [Attribute] {
    fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.iter().find(|a| a.name == name).map(|a| &a.value)
    }
}

impl AttrLookup for Vec<Attribute> {
    fn attr(&self, name: &str) -> Option<&AttrValue> {
        self.as_slice().attr(name)
    }
}
