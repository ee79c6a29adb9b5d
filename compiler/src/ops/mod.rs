//! Facts about operators that several passes need: which inputs and outputs share a type
//! parameter, and which element types each parameter allows, per opset ([`type_constraints`]).

pub mod type_constraints;

pub use type_constraints::{
    Arity, Binding, OpSchema, Slot, SlotType, TableError, TypeParam, TypeSet, attribute_bound, schema, schemas,
};
