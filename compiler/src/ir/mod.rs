//! Kiln's intermediate representation.

mod attr;
mod graph;
mod ids;
mod model;
mod types;

pub use attr::{AttrLookup, AttrValue, Attribute};
pub use graph::{Graph, MetadataEntry, Node, NodeSpec, OpaqueFields, Use, Value, ValueDef};
pub use ids::{NodeId, ValueId};
pub use model::{Function, Model, OpsetImport};
pub use types::{Dim, DimValue, TensorType, Type, TypeKind};
