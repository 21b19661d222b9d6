//! A small builder for ONNX graphs (opset 13) on tract's protobuf types.

use prost::Message;
use tract_onnx::pb;

/// ONNX element type code of f32.
const FLOAT: i32 = 1;
/// ONNX element type code of i64.
const INT64: i32 = 7;

/// Builds one ONNX graph node by node; names are generated.
#[derive(Default)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    next: usize,
}

/// An attribute value.
pub enum Attr {
    /// An integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A string.
    Str(&'static str),
}

impl GraphBuilder {
    /// An empty graph named `name`.
    pub fn new(name: &str) -> Self {
        let mut b = GraphBuilder::default();
        b.graph.name = name.to_string();
        b
    }

    /// Declares an f32 input of static `shape`.
    pub fn input(&mut self, name: &str, shape: &[usize]) -> String {
        self.graph.input.push(value_info(name, shape));
        name.to_string()
    }

    /// Declares `value` as an f32 output named `name` of static `shape`.
    pub fn output(&mut self, value: &str, name: &str, shape: &[usize]) {
        let value = value.to_string();
        self.node("Identity", &[&value], vec![], Some(name));
        self.graph.output.push(value_info(name, shape));
    }

    /// An f32 constant.
    pub fn constant(&mut self, dims: &[usize], data: Vec<f32>) -> String {
        assert_eq!(dims.iter().product::<usize>(), data.len());
        let name = self.fresh("const");
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            float_data: data,
            ..Default::default()
        });
        name
    }

    /// An f32 scalar constant.
    pub fn scalar(&mut self, v: f32) -> String {
        self.constant(&[], vec![v])
    }

    /// An i64 constant vector.
    pub fn ints(&mut self, data: &[i64]) -> String {
        let name = self.fresh("ints");
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: vec![data.len() as i64],
            data_type: INT64,
            int64_data: data.to_vec(),
            ..Default::default()
        });
        name
    }

    /// Adds a node of `op` on `inputs`; returns its (single) output.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node(op, inputs, attrs, None)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, out: Option<&str>) -> String {
        let output = out.map(str::to_string).unwrap_or_else(|| self.fresh(&op.to_lowercase()));
        let attribute = attrs
            .into_iter()
            .map(|(name, value)| {
                let mut a = pb::AttributeProto { name: name.to_string(), ..Default::default() };
                match value {
                    Attr::Int(i) => {
                        a.r#type = pb::attribute_proto::AttributeType::Int as i32;
                        a.i = i;
                    }
                    Attr::Ints(v) => {
                        a.r#type = pb::attribute_proto::AttributeType::Ints as i32;
                        a.ints = v;
                    }
                    Attr::Str(s) => {
                        a.r#type = pb::attribute_proto::AttributeType::String as i32;
                        a.s = s.as_bytes().to_vec();
                    }
                }
                a
            })
            .collect();
        let name = self.fresh(&format!("{op}_node"));
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.clone()],
            name,
            op_type: op.to_string(),
            attribute,
            ..Default::default()
        });
        output
    }

    fn fresh(&mut self, stem: &str) -> String {
        self.next += 1;
        format!("{stem}_{}", self.next)
    }

    /// Serialises the graph as an ONNX model (IR 8, opset 13).
    pub fn finish(self) -> Vec<u8> {
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
            producer_name: "segicl-models".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

fn value_info(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension { value: Some(Value::DimValue(d as i64)), ..Default::default() })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}
