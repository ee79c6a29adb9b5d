//! A model: the main graph plus everything ONNX carries around it.

use super::attr::Attribute;
use super::graph::{Graph, MetadataEntry, OpaqueFields};

/// An operator set import. Both fields may be absent in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsetImport {
    pub domain: Option<String>,
    pub version: Option<i64>,
}

impl OpsetImport {
    /// The normalized domain (`""` for the default ONNX domain).
    pub fn domain(&self) -> &str {
        match self.domain.as_deref() {
            None | Some("ai.onnx") => "",
            Some(d) => d,
        }
    }
}

/// A model-local function. Its body is a graph whose inputs and outputs are untyped.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: Option<String>,
    pub domain: Option<String>,
    pub overload: Option<String>,
    /// Attribute names without defaults.
    pub attribute: Vec<String>,
    /// Attributes with defaults.
    pub attribute_proto: Vec<Attribute>,
    pub opset_import: Vec<OpsetImport>,
    pub doc_string: Option<String>,
    pub metadata_props: Vec<MetadataEntry>,
    pub body: Graph,
}

/// A whole model.
#[derive(Debug, Clone, Default)]
pub struct Model {
    pub ir_version: Option<i64>,
    pub opset_import: Vec<OpsetImport>,
    pub producer_name: Option<String>,
    pub producer_version: Option<String>,
    pub domain: Option<String>,
    pub model_version: Option<i64>,
    pub doc_string: Option<String>,
    pub graph: Option<Graph>,
    pub metadata_props: Vec<MetadataEntry>,
    pub functions: Vec<Function>,
    /// Training info and device configurations: carried, never read.
    pub opaque: OpaqueFields,
}

impl Model {
    /// A model of one graph importing the default ONNX domain at `opset` (IR version 8): what
    /// builders of small graphs and tests start from.
    pub fn of_graph(graph: Graph, opset: i64) -> Model {
        Model {
            ir_version: Some(8),
            opset_import: vec![OpsetImport { domain: None, version: Some(opset) }],
            graph: Some(graph),
            ..Model::default()
        }
    }

    /// The opset version imported for a domain (`""` = default ONNX domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        self.opset_import.iter().find(|o| o.domain() == domain).and_then(|o| o.version)
    }

    /// The main graph; an error if the file had none.
    pub fn main_graph(&self) -> Option<&Graph> {
        self.graph.as_ref()
    }
}
