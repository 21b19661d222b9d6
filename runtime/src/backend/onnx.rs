//! The part of the ONNX protobuf schema the runtime reads (the field numbers are those of the
//! ONNX IR specification, `onnx.proto`), decoded with prost; fields it does not read are skipped.
//! The lowering and the graph bounds read graphs through these types, so a build without tract
//! still opens engines.

use prost::Message;

/// A model: the opsets it imports and its graph.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// The operator sets the graph's nodes come from.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetId>,
}

impl ModelProto {
    /// Decodes a serialized model; malformed protobuf is an error.
    pub fn decode_bytes(bytes: &[u8]) -> Result<ModelProto, String> {
        ModelProto::decode(bytes).map_err(|e| e.to_string())
    }
}

/// One operator set: a domain (empty or `ai.onnx` for the default one) and its version.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetId {
    /// The domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Its version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// A graph: nodes in topological order, constant initializers, and its inputs and outputs.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// The nodes.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// The graph's name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors, by name.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// The inputs, with their declared types.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// The outputs, with their declared types.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// One node: an operator applied to named values.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input value names (an empty name is an omitted optional input).
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// The node's name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// The operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Its attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// The operator's domain (empty: the default one).
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// One attribute of a node; which value field is meaningful depends on the operator.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// The attribute's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A float value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// An integer value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// A string value.
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// A tensor value.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// Float values.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// Integer values.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// A tensor: shape, element type and data (typed fields, or little-endian `raw_data`).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// The shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// The element type, a [`DataType`].
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Float data.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    /// Data of the 32-bit-or-narrower integer types, bool and float16 (as bits).
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    /// Int64 data.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// The tensor's name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// The data as little-endian bytes, when not in a typed field.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// Double data.
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    /// Uint32 and uint64 data.
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
    /// Where external data lives (engines hold none: it is refused).
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntry>,
    /// 1: the data is external (refused).
    #[prost(int32, optional, tag = "14")]
    pub data_location: Option<i32>,
}

/// `data_location` of a tensor whose data is in another file.
pub const DATA_LOCATION_EXTERNAL: i32 = 1;

/// A key/value pair.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntry {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// A graph input or output: its name and declared type.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// The value's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// A value's type; only tensor types are read (field 1 of the schema's `oneof value`).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// The tensor type, when the value is a tensor.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorType>,
}

/// A tensor type: element type and (possibly symbolic) shape.
#[derive(Clone, PartialEq, Message)]
pub struct TensorType {
    /// The element type, a [`DataType`].
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// The shape, when declared.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShape>,
}

/// A declared shape.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShape {
    /// One entry per axis.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One axis of a declared shape: a size, a symbol, or neither (unknown); the schema's
/// `oneof value`.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// A fixed size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// A symbolic size.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// Element types (`TensorProto.DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum DataType {
    Undefined = 0,
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Uint16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Double = 11,
    Uint32 = 12,
    Uint64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    Bfloat16 = 16,
}

#[cfg(all(test, feature = "tract"))]
mod tests {
    use super::*;
    use tract_onnx::prelude::Framework;

    /// Every bundled engine's graphs decode to the same nodes, attributes, initializers and
    /// declared inputs as tract's full ONNX decoder reads.
    #[test]
    fn reads_the_bundled_graphs_as_tract_does() {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        for name in ["prototype.plan", "segicl-ref.plan", "segicl-ref-fp16.plan", "segicl-ref-int8.plan"] {
            let file = crate::format::EngineFile::open(&models.join(name)).unwrap();
            for tag in [crate::format::Tag::ENCODER, crate::format::Tag::DECODER] {
                let bytes = file.section(tag).unwrap();
                let ours = ModelProto::decode_bytes(bytes).unwrap().graph.unwrap();
                let theirs = tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]).unwrap().graph.unwrap();
                assert_eq!(ours.node.len(), theirs.node.len(), "{name}");
                for (a, b) in ours.node.iter().zip(&theirs.node) {
                    assert_eq!((&a.name, &a.op_type, &a.input, &a.output), (&b.name, &b.op_type, &b.input, &b.output));
                    // One line per attribute: name, scalar values, lists and a tensor's bytes.
                    macro_rules! attributes {
                        ($node:expr) => {
                            $node
                                .attribute
                                .iter()
                                .map(|x| {
                                    let t = x.t.as_ref().map(|t| &t.raw_data);
                                    format!("{} {} {} {:?} {:?} {:?}", x.name, x.f, x.i, x.ints, x.floats, t)
                                })
                                .collect::<Vec<_>>()
                        };
                    }
                    assert_eq!(attributes!(a), attributes!(b), "{name}: node `{}`", a.name);
                }
                assert_eq!(ours.initializer.len(), theirs.initializer.len());
                for (a, b) in ours.initializer.iter().zip(&theirs.initializer) {
                    assert_eq!(
                        (&a.name, &a.dims, a.data_type, &a.raw_data, &a.float_data, &a.int64_data),
                        (&b.name, &b.dims, b.data_type, &b.raw_data, &b.float_data, &b.int64_data)
                    );
                }
                let dims = |t: Option<&TensorType>| {
                    t.and_then(|t| t.shape.as_ref()).map(|s| s.dim.iter().map(|d| d.dim_value).collect::<Vec<_>>())
                };
                for (a, b) in ours.input.iter().zip(&theirs.input) {
                    use tract_onnx::pb::{tensor_shape_proto::dimension::Value, type_proto::Value as Type};
                    let Some(Type::TensorType(t)) = b.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
                        panic!("tensor input")
                    };
                    let theirs: Vec<Option<i64>> = t
                        .shape
                        .as_ref()
                        .unwrap()
                        .dim
                        .iter()
                        .map(|d| match d.value {
                            Some(Value::DimValue(v)) => Some(v),
                            _ => None,
                        })
                        .collect();
                    assert_eq!(
                        (a.name.as_str(), dims(a.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()))),
                        (b.name.as_str(), Some(theirs))
                    );
                }
            }
        }
        assert!(ModelProto::decode_bytes(&[0x3a, 0xff]).is_err(), "a truncated graph field is an error");
    }
}
