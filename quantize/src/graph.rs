//! ONNX graphs on tract's protobuf types: decoding, encoding, reading f32 initializers, and the
//! tensors and nodes the fp16 and int8 rewrites insert.

use anyhow::{bail, Context, Result};
use prost::Message;
use tract_onnx::pb;

/// ONNX element type codes used here.
pub const FLOAT: i32 = 1;
/// int8.
pub const INT8: i32 = 3;
/// float16.
pub const FLOAT16: i32 = 10;

/// Decodes an ONNX model; `what` names it in errors.
pub fn decode(bytes: &[u8], what: &str) -> Result<pb::ModelProto> {
    let model = pb::ModelProto::decode(bytes).with_context(|| format!("{what} is not an ONNX model"))?;
    let Some(graph) = &model.graph else { bail!("{what} has no graph") };
    if let Some(t) = graph.initializer.iter().find(|t| !t.external_data.is_empty()) {
        bail!("{what}: initializer `{}` keeps its data in an external file; engines embed every weight", t.name);
    }
    Ok(model)
}

/// Encodes an ONNX model.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The graph of a model that [`decode`] accepted.
pub fn graph(model: &pb::ModelProto) -> &pb::GraphProto {
    model.graph.as_ref().expect("decode refuses models without a graph")
}

/// The graph of a model that [`decode`] accepted, mutably.
pub fn graph_mut(model: &mut pb::ModelProto) -> &mut pb::GraphProto {
    model.graph.as_mut().expect("decode refuses models without a graph")
}

/// Moves every Constant node holding an f32 tensor of at least `min_elements` elements into the
/// initializers, under the node's output name, so that weight rewrites see it.
pub fn constants_to_initializers(model: &mut pb::ModelProto, min_elements: usize) {
    let g = graph_mut(model);
    let mut kept = Vec::with_capacity(g.node.len());
    for n in std::mem::take(&mut g.node) {
        let value = (n.op_type == "Constant" && n.output.len() == 1)
            .then(|| n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.clone()))
            .flatten()
            .filter(|t| t.data_type == FLOAT && t.dims.iter().product::<i64>() >= min_elements as i64);
        match value {
            Some(mut t) => {
                t.name = n.output[0].clone();
                g.initializer.push(t);
            }
            None => kept.push(n),
        }
    }
    g.node = kept;
}

/// The values of an f32 tensor (from `float_data` or little-endian `raw_data`); `None` for other
/// element types.
pub fn f32_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT {
        return None;
    }
    if t.raw_data.is_empty() {
        return Some(t.float_data.clone());
    }
    Some(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// A tensor of element type `data_type` from its little-endian bytes.
pub fn raw_tensor(name: &str, dims: &[i64], data_type: i32, raw_data: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto { name: name.to_string(), dims: dims.to_vec(), data_type, raw_data, ..Default::default() }
}

/// An f32 tensor.
pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    raw_tensor(name, dims, FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// A node of `op` with one output.
pub fn node(op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        attribute,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn int_attr(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// The integer attribute `name` of `node`, if set.
pub fn get_int_attr(node: &pb::NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// A node's name for messages (its first output when it has no name).
pub fn node_label(node: &pb::NodeProto) -> &str {
    if node.name.is_empty() {
        node.output.first().map_or("", String::as_str)
    } else {
        &node.name
    }
}
