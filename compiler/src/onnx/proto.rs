//! Kiln's own ONNX protobuf schema: hand-written `prost` messages for `onnx.proto`
//! (IR version 13 as shipped by onnx 1.20.1, plus `TypeProto.Opaque` from `onnx-ml.proto`)
//! and `onnx-data.proto`.
//!
//! The layout follows `prost-build` conventions, so code can be written against it as if
//! it were generated: one struct per message, snake_case fields (`r#type` for `type`),
//! nested messages, enums and oneofs in a snake_case module named after their parent.
//!
//! Lossless re-serialization is the point of owning this schema:
//! - every proto2 `optional` scalar or string is an `Option`, so an explicitly written
//!   default survives a round trip;
//! - repeated scalars are packed exactly where the specification says `[packed = true]`;
//! - enum-typed fields are stored as `Option<i32>`, so values unknown to Kiln survive;
//! - every `bytes` field is a [`bytes::Bytes`], so decoding from a `Bytes` backed by a
//!   memory map leaves `raw_data` pointing into the map (no copy);
//! - `TypeProto` encodes its fields in field-number order even though its `denotation`
//!   (field 6) sits between members of its oneof (which the derive cannot express).
//!
//! Unknown fields are dropped on decode, as `prost` does.

use bytes::Bytes;

/// Decodes a serialized `ModelProto`; with a memory-mapped `bytes` the tensor payloads stay
/// in the map.
pub fn decode_model(bytes: Bytes) -> Result<ModelProto, prost::DecodeError> {
    prost::Message::decode(bytes)
}

/// Declares a protobuf enum the way `prost-build` does, with its `.proto` value names.
macro_rules! proto_enum {
    (
        $(#[$meta:meta])*
        $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal => $proto:literal,)* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
        #[repr(i32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $code,)*
        }

        impl $name {
            /// The value's name in the `.proto` file.
            pub fn as_str_name(&self) -> &'static str {
                match self {
                    $(Self::$variant => $proto,)*
                }
            }

            /// The value with this `.proto` name, if any.
            pub fn from_str_name(value: &str) -> ::core::option::Option<Self> {
                match value {
                    $($proto => ::core::option::Option::Some(Self::$variant),)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Top-level enums
// ---------------------------------------------------------------------------------------

proto_enum! {
    /// IR versions of the format; `ModelProto.ir_version` holds one of these codes.
    Version {
        StartVersion = 0 => "_START_VERSION",
        IrVersion20171010 = 1 => "IR_VERSION_2017_10_10",
        IrVersion20171030 = 2 => "IR_VERSION_2017_10_30",
        IrVersion2017113 = 3 => "IR_VERSION_2017_11_3",
        IrVersion2019122 = 4 => "IR_VERSION_2019_1_22",
        IrVersion2019318 = 5 => "IR_VERSION_2019_3_18",
        IrVersion2019919 = 6 => "IR_VERSION_2019_9_19",
        IrVersion202058 = 7 => "IR_VERSION_2020_5_8",
        IrVersion2021730 = 8 => "IR_VERSION_2021_7_30",
        IrVersion202355 = 9 => "IR_VERSION_2023_5_5",
        IrVersion2024325 = 10 => "IR_VERSION_2024_3_25",
        IrVersion20250512 = 11 => "IR_VERSION_2025_05_12",
        IrVersion20250826 = 12 => "IR_VERSION_2025_08_26",
        /// The current IR version of this schema.
        IrVersion = 13 => "IR_VERSION",
    }
}

proto_enum! {
    /// Status of an operator set or function (kept for completeness; no field uses it).
    OperatorStatus {
        Experimental = 0 => "EXPERIMENTAL",
        Stable = 1 => "STABLE",
    }
}

// ---------------------------------------------------------------------------------------
// onnx.proto: attributes, values, nodes
// ---------------------------------------------------------------------------------------

/// A named attribute of a node or function: one typed value (or a reference to a function
/// attribute), with `type` saying which field is in use.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct AttributeProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// In a function body: the name of the calling node's attribute this one refers to.
    #[prost(string, optional, tag = "21")]
    pub ref_attr_name: Option<String>,
    #[prost(string, optional, tag = "13")]
    pub doc_string: Option<String>,
    #[prost(enumeration = "attribute_proto::AttributeType", optional, tag = "20")]
    pub r#type: Option<i32>,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(bytes = "bytes", optional, tag = "4")]
    pub s: Option<Bytes>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(message, optional, boxed, tag = "6")]
    pub g: Option<Box<GraphProto>>,
    #[prost(message, optional, tag = "22")]
    pub sparse_tensor: Option<SparseTensorProto>,
    #[prost(message, optional, tag = "14")]
    pub tp: Option<TypeProto>,
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "bytes", repeated, tag = "9")]
    pub strings: Vec<Bytes>,
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
    #[prost(message, repeated, tag = "23")]
    pub sparse_tensors: Vec<SparseTensorProto>,
    #[prost(message, repeated, tag = "15")]
    pub type_protos: Vec<TypeProto>,
}

/// Nested types of [`AttributeProto`].
pub mod attribute_proto {
    proto_enum! {
        /// Which value field of an attribute is in use.
        AttributeType {
            Undefined = 0 => "UNDEFINED",
            Float = 1 => "FLOAT",
            Int = 2 => "INT",
            String = 3 => "STRING",
            Tensor = 4 => "TENSOR",
            Graph = 5 => "GRAPH",
            SparseTensor = 11 => "SPARSE_TENSOR",
            TypeProto = 13 => "TYPE_PROTO",
            Floats = 6 => "FLOATS",
            Ints = 7 => "INTS",
            Strings = 8 => "STRINGS",
            Tensors = 9 => "TENSORS",
            Graphs = 10 => "GRAPHS",
            SparseTensors = 12 => "SPARSE_TENSORS",
            TypeProtos = 14 => "TYPE_PROTOS",
        }
    }
}

/// A named value's type (a graph input, output or intermediate).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, optional, tag = "3")]
    pub doc_string: Option<String>,
    #[prost(message, repeated, tag = "4")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// One operator invocation in a graph or function body.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
    /// Selects among model-local functions sharing `domain` and `op_type`.
    #[prost(string, optional, tag = "8")]
    pub overload: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    #[prost(message, repeated, tag = "9")]
    pub metadata_props: Vec<StringStringEntryProto>,
    #[prost(message, repeated, tag = "10")]
    pub device_configurations: Vec<NodeDeviceConfigurationProto>,
}

// ---------------------------------------------------------------------------------------
// onnx.proto: multi-device (sharding) configuration
// ---------------------------------------------------------------------------------------

/// A key with a list of integers (used for device-group maps).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct IntIntListEntryProto {
    #[prost(int64, optional, tag = "1")]
    pub key: Option<i64>,
    #[prost(int64, repeated, packed = "false", tag = "2")]
    pub value: Vec<i64>,
}

/// How one node runs under a named device configuration: sharding and pipeline stage.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct NodeDeviceConfigurationProto {
    #[prost(string, optional, tag = "1")]
    pub configuration_id: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub sharding_spec: Vec<ShardingSpecProto>,
    #[prost(int32, optional, tag = "3")]
    pub pipeline_stage: Option<i32>,
}

/// How one tensor of a node is split across devices.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ShardingSpecProto {
    #[prost(string, optional, tag = "1")]
    pub tensor_name: Option<String>,
    #[prost(int64, repeated, packed = "false", tag = "2")]
    pub device: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub index_to_device_group_map: Vec<IntIntListEntryProto>,
    #[prost(message, repeated, tag = "4")]
    pub sharded_dim: Vec<ShardedDimProto>,
}

/// The sharding of one tensor axis.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ShardedDimProto {
    #[prost(int64, optional, tag = "1")]
    pub axis: Option<i64>,
    #[prost(message, repeated, tag = "2")]
    pub simple_sharding: Vec<SimpleShardedDimProto>,
}

/// One level of an axis split: a (possibly symbolic) extent into a number of shards.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SimpleShardedDimProto {
    #[prost(oneof = "simple_sharded_dim_proto::Dim", tags = "1, 2")]
    pub dim: Option<simple_sharded_dim_proto::Dim>,
    #[prost(int64, optional, tag = "3")]
    pub num_shards: Option<i64>,
}

/// Nested types of [`SimpleShardedDimProto`].
pub mod simple_sharded_dim_proto {
    /// The extent being split: a number or a symbol.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Oneof)]
    pub enum Dim {
        #[prost(int64, tag = "1")]
        DimValue(i64),
        #[prost(string, tag = "2")]
        DimParam(String),
    }
}

// ---------------------------------------------------------------------------------------
// onnx.proto: models and graphs
// ---------------------------------------------------------------------------------------

/// Training information: an initialization graph and an algorithm (update) graph.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TrainingInfoProto {
    #[prost(message, optional, tag = "1")]
    pub initialization: Option<GraphProto>,
    #[prost(message, optional, tag = "2")]
    pub algorithm: Option<GraphProto>,
    #[prost(message, repeated, tag = "3")]
    pub initialization_binding: Vec<StringStringEntryProto>,
    #[prost(message, repeated, tag = "4")]
    pub update_binding: Vec<StringStringEntryProto>,
}

/// The top-level container of a `.onnx` file: versions, opsets, the main graph, functions.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ModelProto {
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub domain: Option<String>,
    #[prost(int64, optional, tag = "5")]
    pub model_version: Option<i64>,
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
    #[prost(message, repeated, tag = "20")]
    pub training_info: Vec<TrainingInfoProto>,
    /// Model-local functions, callable by `domain` + `op_type` (+ `overload`).
    #[prost(message, repeated, tag = "25")]
    pub functions: Vec<FunctionProto>,
    #[prost(message, repeated, tag = "26")]
    pub configuration: Vec<DeviceConfigurationProto>,
}

/// A named multi-device configuration that nodes refer to.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DeviceConfigurationProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(int32, optional, tag = "2")]
    pub num_devices: Option<i32>,
    #[prost(string, repeated, tag = "3")]
    pub device: Vec<String>,
}

/// A string key/value pair (metadata, external-data locations, bindings).
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// Names the quantization parameter tensors (scale, zero point) of one tensor.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct TensorAnnotation {
    #[prost(string, optional, tag = "1")]
    pub tensor_name: Option<String>,
    #[prost(message, repeated, tag = "2")]
    pub quant_parameter_tensor_names: Vec<StringStringEntryProto>,
}

/// A computation graph: nodes in topological order, initializers, inputs and outputs.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "15")]
    pub sparse_initializer: Vec<SparseTensorProto>,
    #[prost(string, optional, tag = "10")]
    pub doc_string: Option<String>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "14")]
    pub quantization_annotation: Vec<TensorAnnotation>,
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

// ---------------------------------------------------------------------------------------
// onnx.proto: tensors
// ---------------------------------------------------------------------------------------

/// A dense tensor: dims, element type and data (raw bytes, a typed field, or external).
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// A `tensor_proto::DataType` code (declared `int32` in the specification).
    #[prost(int32, optional, tag = "2")]
    pub data_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    pub segment: Option<tensor_proto::Segment>,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub string_data: Vec<Bytes>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, optional, tag = "8")]
    pub name: Option<String>,
    #[prost(string, optional, tag = "12")]
    pub doc_string: Option<String>,
    /// Little-endian packed element data; zero-copy when decoded from a `Bytes`.
    #[prost(bytes = "bytes", optional, tag = "9")]
    pub raw_data: Option<Bytes>,
    /// `location`, `offset`, `length`, `checksum` of data stored outside the model file.
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(enumeration = "tensor_proto::DataLocation", optional, tag = "14")]
    pub data_location: Option<i32>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// Nested types of [`TensorProto`].
pub mod tensor_proto {
    /// The slice of a larger tensor that a chunked tensor holds.
    #[derive(Clone, Copy, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Segment {
        #[prost(int64, optional, tag = "1")]
        pub begin: Option<i64>,
        #[prost(int64, optional, tag = "2")]
        pub end: Option<i64>,
    }

    proto_enum! {
        /// Element types, by their ONNX codes (Kiln's own view is [`crate::DataType`]).
        DataType {
            Undefined = 0 => "UNDEFINED",
            Float = 1 => "FLOAT",
            Uint8 = 2 => "UINT8",
            Int8 = 3 => "INT8",
            Uint16 = 4 => "UINT16",
            Int16 = 5 => "INT16",
            Int32 = 6 => "INT32",
            Int64 = 7 => "INT64",
            String = 8 => "STRING",
            Bool = 9 => "BOOL",
            Float16 = 10 => "FLOAT16",
            Double = 11 => "DOUBLE",
            Uint32 = 12 => "UINT32",
            Uint64 = 13 => "UINT64",
            Complex64 = 14 => "COMPLEX64",
            Complex128 = 15 => "COMPLEX128",
            Bfloat16 = 16 => "BFLOAT16",
            Float8e4m3fn = 17 => "FLOAT8E4M3FN",
            Float8e4m3fnuz = 18 => "FLOAT8E4M3FNUZ",
            Float8e5m2 = 19 => "FLOAT8E5M2",
            Float8e5m2fnuz = 20 => "FLOAT8E5M2FNUZ",
            Uint4 = 21 => "UINT4",
            Int4 = 22 => "INT4",
            Float4e2m1 = 23 => "FLOAT4E2M1",
            Float8e8m0 = 24 => "FLOAT8E8M0",
            Uint2 = 25 => "UINT2",
            Int2 = 26 => "INT2",
        }
    }

    proto_enum! {
        /// Where a tensor's data lives: in the message, or in `external_data`.
        DataLocation {
            Default = 0 => "DEFAULT",
            External = 1 => "EXTERNAL",
        }
    }
}

/// A sparse tensor in coordinate form: non-zero `values` at `indices` in a `dims` shape.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SparseTensorProto {
    #[prost(message, optional, tag = "1")]
    pub values: Option<TensorProto>,
    #[prost(message, optional, tag = "2")]
    pub indices: Option<TensorProto>,
    #[prost(int64, repeated, packed = "false", tag = "3")]
    pub dims: Vec<i64>,
}

/// A tensor shape: one entry per axis, each known, symbolic or unknown.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested types of [`TensorShapeProto`].
pub mod tensor_shape_proto {
    /// One axis: a fixed extent, a symbol, or neither (unknown), with an optional denotation.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        #[prost(string, optional, tag = "3")]
        pub denotation: Option<String>,
    }

    /// Nested types of [`Dimension`].
    pub mod dimension {
        /// The extent of an axis.
        #[derive(Clone, PartialEq, Eq, Hash, ::prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

// ---------------------------------------------------------------------------------------
// onnx.proto: types
// ---------------------------------------------------------------------------------------

/// The type of a value: tensor, sequence, map, optional, sparse tensor or opaque.
///
/// `Message` is implemented by hand (below) so that `denotation` (field 6) is written
/// between the oneof members numbered below and above it, as protobuf serializers do.
#[derive(Clone, PartialEq, Eq, Hash, Default, Debug)]
pub struct TypeProto {
    /// Which kind of type this is; `None` when unset.
    pub value: Option<type_proto::Value>,
    pub denotation: Option<String>,
}

/// Nested types of [`TypeProto`].
pub mod type_proto {
    use super::{TensorShapeProto, TypeProto};

    /// A dense tensor type: element type code and (optional) shape.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Tensor {
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    /// A sequence of values of one type.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Sequence {
        #[prost(message, optional, boxed, tag = "1")]
        pub elem_type: Option<Box<TypeProto>>,
    }

    /// A map from an integer or string key type to values of one type.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Map {
        #[prost(int32, optional, tag = "1")]
        pub key_type: Option<i32>,
        #[prost(message, optional, boxed, tag = "2")]
        pub value_type: Option<Box<TypeProto>>,
    }

    /// A value that may be absent.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Optional {
        #[prost(message, optional, boxed, tag = "1")]
        pub elem_type: Option<Box<TypeProto>>,
    }

    /// A sparse tensor type: element type code and (optional) shape.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct SparseTensor {
        #[prost(int32, optional, tag = "1")]
        pub elem_type: Option<i32>,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }

    /// An opaque type named by domain and name (from `onnx-ml.proto`).
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
    pub struct Opaque {
        #[prost(string, optional, tag = "1")]
        pub domain: Option<String>,
        #[prost(string, optional, tag = "2")]
        pub name: Option<String>,
    }

    /// The kind of type.
    #[derive(Clone, PartialEq, Eq, Hash, ::prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
        #[prost(message, tag = "4")]
        SequenceType(Box<Sequence>),
        #[prost(message, tag = "5")]
        MapType(Box<Map>),
        #[prost(message, tag = "9")]
        OptionalType(Box<Optional>),
        #[prost(message, tag = "8")]
        SparseTensorType(SparseTensor),
        #[prost(message, tag = "7")]
        OpaqueType(Opaque),
    }

    impl Value {
        /// Whether this member's field number is below `denotation`'s (6).
        pub(super) fn precedes_denotation(&self) -> bool {
            matches!(self, Self::TensorType(_) | Self::SequenceType(_) | Self::MapType(_))
        }
    }
}

impl TypeProto {
    /// Field number of `denotation`.
    const DENOTATION_TAG: u32 = 6;

    /// The denotation, or `""` when unset (as a `prost-build` getter would return).
    pub fn denotation(&self) -> &str {
        self.denotation.as_deref().unwrap_or_default()
    }
}

impl prost::Message for TypeProto {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        let early = self.value.as_ref().filter(|v| v.precedes_denotation());
        let late = self.value.as_ref().filter(|v| !v.precedes_denotation());
        if let Some(value) = early {
            value.encode(buf);
        }
        if let Some(denotation) = &self.denotation {
            prost::encoding::string::encode(Self::DENOTATION_TAG, denotation, buf);
        }
        if let Some(value) = late {
            value.encode(buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        match tag {
            Self::DENOTATION_TAG => {
                prost::encoding::string::merge(wire_type, self.denotation.get_or_insert_with(String::new), buf, ctx)
                    .map_err(|mut error| {
                        error.push("TypeProto", "denotation");
                        error
                    })
            }
            1 | 4 | 5 | 7 | 8 | 9 => {
                type_proto::Value::merge(&mut self.value, tag, wire_type, buf, ctx).map_err(|mut error| {
                    error.push("TypeProto", "value");
                    error
                })
            }
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.value.as_ref().map_or(0, type_proto::Value::encoded_len)
            + self
                .denotation
                .as_ref()
                .map_or(0, |denotation| prost::encoding::string::encoded_len(Self::DENOTATION_TAG, denotation))
    }

    fn clear(&mut self) {
        self.value = None;
        self.denotation = None;
    }
}

/// An operator set a model or function imports: domain and version.
#[derive(Clone, PartialEq, Eq, Hash, ::prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

/// A model-local function: a named, reusable subgraph with formal inputs and attributes.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FunctionProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(string, repeated, tag = "4")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "5")]
    pub output: Vec<String>,
    /// Names of attributes without a default value.
    #[prost(string, repeated, tag = "6")]
    pub attribute: Vec<String>,
    /// Attributes with a default value.
    #[prost(message, repeated, tag = "11")]
    pub attribute_proto: Vec<AttributeProto>,
    #[prost(message, repeated, tag = "7")]
    pub node: Vec<NodeProto>,
    #[prost(string, optional, tag = "8")]
    pub doc_string: Option<String>,
    #[prost(message, repeated, tag = "9")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, optional, tag = "10")]
    pub domain: Option<String>,
    #[prost(string, optional, tag = "13")]
    pub overload: Option<String>,
    #[prost(message, repeated, tag = "12")]
    pub value_info: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

// ---------------------------------------------------------------------------------------
// onnx-data.proto: non-tensor values (conformance test inputs and outputs)
// ---------------------------------------------------------------------------------------

/// A sequence value: elements of one kind, stored in the field `elem_type` selects.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SequenceProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// A `sequence_proto::DataType` code.
    #[prost(int32, optional, tag = "2")]
    pub elem_type: Option<i32>,
    #[prost(message, repeated, tag = "3")]
    pub tensor_values: Vec<TensorProto>,
    #[prost(message, repeated, tag = "4")]
    pub sparse_tensor_values: Vec<SparseTensorProto>,
    #[prost(message, repeated, tag = "5")]
    pub sequence_values: Vec<SequenceProto>,
    #[prost(message, repeated, tag = "6")]
    pub map_values: Vec<MapProto>,
    #[prost(message, repeated, tag = "7")]
    pub optional_values: Vec<OptionalProto>,
}

/// Nested types of [`SequenceProto`].
pub mod sequence_proto {
    proto_enum! {
        /// Which `*_values` field holds the elements.
        DataType {
            Undefined = 0 => "UNDEFINED",
            Tensor = 1 => "TENSOR",
            SparseTensor = 2 => "SPARSE_TENSOR",
            Sequence = 3 => "SEQUENCE",
            Map = 4 => "MAP",
            Optional = 5 => "OPTIONAL",
        }
    }
}

/// A map value: integer or string keys with a sequence of values.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct MapProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// A `tensor_proto::DataType` code for the keys.
    #[prost(int32, optional, tag = "2")]
    pub key_type: Option<i32>,
    #[prost(int64, repeated, packed = "false", tag = "3")]
    pub keys: Vec<i64>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub string_keys: Vec<Bytes>,
    #[prost(message, optional, boxed, tag = "5")]
    pub values: Option<Box<SequenceProto>>,
}

/// An optional value: absent, or one element in the field `elem_type` selects.
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct OptionalProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// An `optional_proto::DataType` code.
    #[prost(int32, optional, tag = "2")]
    pub elem_type: Option<i32>,
    #[prost(message, optional, tag = "3")]
    pub tensor_value: Option<TensorProto>,
    #[prost(message, optional, tag = "4")]
    pub sparse_tensor_value: Option<SparseTensorProto>,
    #[prost(message, optional, boxed, tag = "5")]
    pub sequence_value: Option<Box<SequenceProto>>,
    #[prost(message, optional, boxed, tag = "6")]
    pub map_value: Option<Box<MapProto>>,
    #[prost(message, optional, boxed, tag = "7")]
    pub optional_value: Option<Box<OptionalProto>>,
}

/// Nested types of [`OptionalProto`].
pub mod optional_proto {
    proto_enum! {
        /// Which `*_value` field holds the element.
        DataType {
            Undefined = 0 => "UNDEFINED",
            Tensor = 1 => "TENSOR",
            SparseTensor = 2 => "SPARSE_TENSOR",
            Sequence = 3 => "SEQUENCE",
            Map = 4 => "MAP",
            Optional = 5 => "OPTIONAL",
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Encodes, checks that decoding gives the same message back, and returns the bytes.
    fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) -> Vec<u8> {
        let bytes = message.encode_to_vec();
        assert_eq!(bytes.len(), message.encoded_len());
        let decoded = M::decode(bytes.as_slice()).unwrap();
        assert_eq!(&decoded, message);
        assert_eq!(decoded.encode_to_vec(), bytes);
        bytes
    }

    #[test]
    fn explicit_defaults_are_kept() {
        let attribute = AttributeProto {
            name: Some(String::new()),
            r#type: Some(attribute_proto::AttributeType::Int as i32),
            i: Some(0),
            f: Some(0.0),
            ..Default::default()
        };
        let bytes = round_trip(&attribute);
        // name="" (tag 1), f=0.0 (tag 2, fixed32), i=0 (tag 3), type=INT (tag 20).
        assert_eq!(bytes, [0x0a, 0x00, 0x15, 0, 0, 0, 0, 0x18, 0x00, 0xa0, 0x01, 0x02]);
        // Absent fields stay absent.
        assert!(AttributeProto::default().encode_to_vec().is_empty());
    }

    #[test]
    fn repeated_scalars_are_packed_only_where_the_spec_says() {
        let tensor =
            TensorProto { dims: vec![2, 3], float_data: vec![1.0], int64_data: vec![1, 2], ..Default::default() };
        let bytes = round_trip(&tensor);
        let mut expected = vec![0x08, 0x02, 0x08, 0x03]; // dims: one key per element
        expected.extend([0x22, 0x04]); // float_data: packed, 4 bytes
        expected.extend(1.0f32.to_le_bytes());
        expected.extend([0x3a, 0x02, 0x01, 0x02]); // int64_data: packed
        assert_eq!(bytes, expected);

        let attribute = AttributeProto { ints: vec![5, 6], floats: vec![0.5], ..Default::default() };
        let mut expected = vec![0x3d]; // floats: tag 7, fixed32, unpacked
        expected.extend(0.5f32.to_le_bytes());
        expected.extend([0x40, 0x05, 0x40, 0x06]); // ints: tag 8, unpacked
        assert_eq!(round_trip(&attribute), expected);

        // Parsers accept either form: a packed `dims` still decodes.
        let packed_dims = TensorProto::decode(&[0x0a, 0x02, 0x02, 0x03][..]).unwrap();
        assert_eq!(packed_dims.dims, [2, 3]);
    }

    #[test]
    fn unknown_enum_values_survive() {
        let attribute = AttributeProto { r#type: Some(99), ..Default::default() };
        round_trip(&attribute);
        // The getter falls back to the default for an unknown code, the field does not.
        assert_eq!(attribute.r#type(), attribute_proto::AttributeType::Undefined);
        let tensor = TensorProto { data_location: Some(7), ..Default::default() };
        assert_eq!(TensorProto::decode(tensor.encode_to_vec().as_slice()).unwrap().data_location, Some(7));
    }

    #[test]
    fn type_proto_writes_fields_in_number_order() {
        let tensor = TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(1), shape: None })),
            denotation: Some("T".into()),
        };
        assert_eq!(round_trip(&tensor), [0x0a, 0x02, 0x08, 0x01, 0x32, 0x01, b'T']);

        let optional = TypeProto {
            value: Some(type_proto::Value::OptionalType(Box::new(type_proto::Optional {
                elem_type: Some(Box::new(tensor)),
            }))),
            denotation: Some("O".into()),
        };
        let bytes = round_trip(&optional);
        assert_eq!(&bytes[..3], [0x32, 0x01, b'O']); // denotation (6) before optional_type (9)
        assert_eq!(bytes[3], 0x4a);
        assert_eq!(optional.denotation(), "O");

        let opaque = TypeProto {
            value: Some(type_proto::Value::OpaqueType(type_proto::Opaque {
                domain: Some("d".into()),
                name: Some("n".into()),
            })),
            denotation: None,
        };
        round_trip(&opaque);

        // Unknown fields are skipped, and `clear` empties the message.
        let mut with_unknown = TypeProto::decode(&[0x32, 0x00, 0x78, 0x05][..]).unwrap();
        assert_eq!(with_unknown.denotation.as_deref(), Some(""));
        with_unknown.clear();
        assert_eq!(with_unknown, TypeProto::default());
    }

    #[test]
    fn shapes_and_sharding_use_their_oneofs() {
        use tensor_shape_proto::{Dimension, dimension};
        let shape = TensorShapeProto {
            dim: vec![
                Dimension { value: Some(dimension::Value::DimValue(0)), denotation: None },
                Dimension {
                    value: Some(dimension::Value::DimParam("N".into())),
                    denotation: Some("DATA_BATCH".into()),
                },
                Dimension::default(),
            ],
        };
        let bytes = round_trip(&shape);
        assert_eq!(&bytes[..4], [0x0a, 0x02, 0x08, 0x00]); // explicit dim_value 0 kept

        let config = NodeDeviceConfigurationProto {
            configuration_id: Some("c".into()),
            sharding_spec: vec![ShardingSpecProto {
                tensor_name: Some("x".into()),
                device: vec![0, 1],
                index_to_device_group_map: vec![IntIntListEntryProto { key: Some(0), value: vec![0, 1] }],
                sharded_dim: vec![ShardedDimProto {
                    axis: Some(0),
                    simple_sharding: vec![SimpleShardedDimProto {
                        dim: Some(simple_sharded_dim_proto::Dim::DimParam("B".into())),
                        num_shards: Some(2),
                    }],
                }],
            }],
            pipeline_stage: Some(0),
        };
        round_trip(&config);
    }

    #[test]
    fn recursive_messages_round_trip() {
        let inner = GraphProto {
            name: Some("body".into()),
            node: vec![NodeProto {
                op_type: Some("Identity".into()),
                input: vec!["x".into()],
                output: vec!["y".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let node = NodeProto {
            op_type: Some("If".into()),
            overload: Some("o".into()),
            attribute: vec![AttributeProto {
                name: Some("then_branch".into()),
                r#type: Some(attribute_proto::AttributeType::Graph as i32),
                g: Some(Box::new(inner.clone())),
                ..Default::default()
            }],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(Version::IrVersion as i64),
            opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(21) }],
            graph: Some(GraphProto { node: vec![node], ..Default::default() }),
            functions: vec![FunctionProto {
                name: Some("f".into()),
                domain: Some("local".into()),
                attribute_proto: vec![AttributeProto {
                    name: Some("alpha".into()),
                    ref_attr_name: Some("beta".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            training_info: vec![TrainingInfoProto { algorithm: Some(inner), ..Default::default() }],
            configuration: vec![DeviceConfigurationProto {
                name: Some("c".into()),
                num_devices: Some(2),
                device: vec!["a".into(), "b".into()],
            }],
            ..Default::default()
        };
        let bytes = round_trip(&model);
        assert_eq!(decode_model(Bytes::from(bytes)).unwrap(), model);

        let sequence = SequenceProto {
            elem_type: Some(sequence_proto::DataType::Map as i32),
            map_values: vec![MapProto {
                key_type: Some(7),
                keys: vec![1, 2],
                values: Some(Box::new(SequenceProto {
                    elem_type: Some(sequence_proto::DataType::Optional as i32),
                    optional_values: vec![
                        OptionalProto {
                            elem_type: Some(optional_proto::DataType::Undefined as i32),
                            ..Default::default()
                        },
                        OptionalProto {
                            elem_type: Some(optional_proto::DataType::Tensor as i32),
                            tensor_value: Some(TensorProto::default()),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        };
        round_trip(&sequence);
    }

    #[test]
    fn byte_fields_borrow_the_source_buffer() {
        let tensor = TensorProto {
            raw_data: Some(Bytes::from_static(&[1, 2, 3, 4])),
            string_data: vec![Bytes::from_static(b"abc")],
            ..Default::default()
        };
        let source = Bytes::from(tensor.encode_to_vec());
        let decoded = TensorProto::decode(source.clone()).unwrap();
        let range = source.as_ptr_range();
        assert!(range.contains(&decoded.raw_data.unwrap().as_ptr()));
        assert!(range.contains(&decoded.string_data[0].as_ptr()));
    }

    #[test]
    fn enums_carry_the_spec_codes_and_names() {
        use attribute_proto::AttributeType;
        assert_eq!(AttributeType::SparseTensor as i32, 11);
        assert_eq!(AttributeType::TypeProtos as i32, 14);
        assert_eq!(AttributeType::try_from(13), Ok(AttributeType::TypeProto));
        assert_eq!(AttributeType::Graphs.as_str_name(), "GRAPHS");
        assert_eq!(AttributeType::from_str_name("TYPE_PROTO"), Some(AttributeType::TypeProto));
        assert_eq!(tensor_proto::DataLocation::External as i32, 1);
        assert_eq!(tensor_proto::DataType::Int2 as i32, 26);
        assert_eq!(Version::IrVersion as i32, 13);
        assert_eq!(Version::from_str_name("_START_VERSION"), Some(Version::StartVersion));
        assert_eq!(OperatorStatus::Stable as i32, 1);
        // Element codes agree with Kiln's own DataType.
        for code in 0..=26 {
            let proto = tensor_proto::DataType::try_from(code).unwrap();
            let kiln = crate::DataType::from_onnx(code).map(crate::DataType::onnx_code);
            assert_eq!(kiln, Some(proto as i32), "{proto:?}");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(decode_model(Bytes::from_static(&[0x0a, 0x05, 0x01])).is_err());
        assert!(decode_model(Bytes::from_static(&[0xff; 12])).is_err());
        // Wrong wire type for `TypeProto.denotation`.
        assert!(TypeProto::decode(&[0x30, 0x01][..]).is_err());
    }
}
