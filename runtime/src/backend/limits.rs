//! Bounds every backend applies to an engine's ONNX graphs before it builds anything from them,
//! so that a hostile graph is refused with an error instead of exhausting memory or time.

use super::onnx::{DataType, GraphProto, ModelProto, TensorProto};

/// Most nodes a graph may have. Real graphs have far fewer (LiteMedSAM's encoder: 1,014), and
/// tract's optimiser takes time that grows faster than linearly with long chains of nodes.
pub const MAX_GRAPH_NODES: usize = 2_000;

/// Most elements of any tensor of a graph (1 GiB of f32): an initializer, or any value once the
/// shapes are known. A larger one is refused before anything of that size is allocated.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 28;

/// Most dimensions of a tensor, and so the bound on every `axis`, `axes` and `perm` attribute.
pub const MAX_RANK: usize = 16;

/// Decodes an ONNX graph's bytes and applies [`check_proto`].
pub fn decode_checked(bytes: &[u8]) -> Result<ModelProto, String> {
    let proto = ModelProto::decode_bytes(bytes).map_err(|e| format!("not an ONNX protobuf: {e}"))?;
    check_proto(&proto)?;
    Ok(proto)
}

/// Bounds on the protobuf before tract builds anything from it: the node count, the size of
/// every initializer, and axis attributes within [`MAX_RANK`] (`perm` a permutation). tract
/// allocates by an axis' value (a `perm` of `[0, 1, 1]` asked for 4 GiB and aborted) or loops up
/// to it (a LayerNormalization `axis` of 2^40 never finished opening).
pub fn check_proto(proto: &ModelProto) -> std::result::Result<(), String> {
    let Some(graph) = &proto.graph else { return Err("the ONNX model has no graph".into()) };
    if graph.node.len() > MAX_GRAPH_NODES {
        return Err(format!("the graph has {} nodes, over the limit of {MAX_GRAPH_NODES}", graph.node.len()));
    }
    let rank = MAX_RANK as i64;
    for node in &graph.node {
        for a in &node.attribute {
            let bad = match a.name.as_str() {
                "axis" => !(-rank..rank).contains(&a.i),
                "axes" => a.ints.len() > MAX_RANK || a.ints.iter().any(|v| !(-rank..rank).contains(v)),
                "perm" => {
                    let mut sorted = a.ints.clone();
                    sorted.sort_unstable();
                    a.ints.len() > MAX_RANK || sorted.iter().enumerate().any(|(i, &v)| v != i as i64)
                }
                _ => false,
            };
            if bad {
                return Err(format!(
                    "node `{}` ({}): attribute `{}` = {} is not an axis of a tensor of at most {MAX_RANK} dimensions",
                    node.name,
                    node.op_type,
                    a.name,
                    if a.name == "axis" { a.i.to_string() } else { format!("{:?}", a.ints) }
                ));
            }
        }
    }
    for t in &graph.initializer {
        let elements = t.dims.iter().try_fold(1usize, |n, &d| usize::try_from(d).ok().and_then(|d| n.checked_mul(d)));
        if elements.is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
            return Err(format!("initializer `{}` of shape {:?} is negative or too large", t.name, t.dims));
        }
    }
    check_pads(graph)
}

/// Every Pad's padding (its attribute, or a constant second input) is under
/// [`MAX_TENSOR_ELEMENTS`] per side: one larger pads an axis past the limit whatever the input,
/// and tract folds a constant's padding before any later check sees the size.
fn check_pads(graph: &GraphProto) -> Result<(), String> {
    let ints = |t: &TensorProto| -> Vec<i64> {
        if t.data_type != DataType::Int64 as i32 {
            return Vec::new();
        }
        if t.raw_data.is_empty() {
            return t.int64_data.clone();
        }
        t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    };
    let constant = |name: &str| -> Vec<i64> {
        if let Some(t) = graph.initializer.iter().find(|t| t.name == name) {
            return ints(t);
        }
        let node = graph.node.iter().find(|n| n.op_type == "Constant" && n.output.iter().any(|o| o == name));
        node.and_then(|n| n.attribute.iter().find(|a| a.name == "value"))
            .and_then(|a| a.t.as_ref())
            .map_or_else(Vec::new, ints)
    };
    for node in graph.node.iter().filter(|n| n.op_type == "Pad") {
        let mut pads: Vec<i64> =
            node.attribute.iter().filter(|a| a.name == "pads").flat_map(|a| a.ints.clone()).collect();
        if let Some(input) = node.input.get(1) {
            pads.extend(constant(input));
        }
        if let Some(p) = pads.iter().find(|p| p.unsigned_abs() > MAX_TENSOR_ELEMENTS as u64) {
            return Err(format!(
                "node `{}` (Pad): a padding of {p} is over the limit of {MAX_TENSOR_ELEMENTS} elements",
                node.name
            ));
        }
    }
    Ok(())
}

/// The number of elements of `shape`, or an error when it is over [`MAX_TENSOR_ELEMENTS`] (or
/// overflows).
pub fn check_len(shape: &[usize]) -> Result<usize, String> {
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(n) if n <= MAX_TENSOR_ELEMENTS => Ok(n),
        _ => Err(format!("a tensor of shape {shape:?} is over the limit of {MAX_TENSOR_ELEMENTS} elements")),
    }
}
