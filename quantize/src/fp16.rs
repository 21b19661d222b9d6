//! fp16: every f32 weight stored as f16 (half the bytes), each followed by a Cast back to f32, so
//! the graph stays valid ONNX with its f32 inputs and outputs. The CPU backend folds the casts
//! when it optimises the graph at open (f32 arithmetic: tract's f16 arithmetic is slow on x86); a
//! GPU backend can take the f16 weights as they are.

use std::collections::HashSet;

use anyhow::Result;
use half::f16;
use tract_onnx::pb;

use crate::graph::{f32_values, graph_mut, int_attr, node, raw_tensor, FLOAT, FLOAT16};

/// Initializers with fewer elements stay f32 (epsilons, scalar constants): they weigh nothing and
/// some would not survive f16.
pub const MIN_ELEMENTS: usize = 16;

/// Converts the model's f32 initializers of at least [`MIN_ELEMENTS`] elements to f16; one whose
/// values overflow f16 stays f32. Returns how many were converted.
pub fn convert(model: &mut pb::ModelProto) -> Result<usize> {
    convert_except(model, &HashSet::new())
}

/// [`convert`], leaving the initializers named in `keep` as they are (the scales of int8 weights).
pub fn convert_except(model: &mut pb::ModelProto, keep: &HashSet<String>) -> Result<usize> {
    let graph = graph_mut(model);
    let mut casts = Vec::new();
    for t in graph.initializer.iter_mut().filter(|t| !keep.contains(&t.name)) {
        let Some(values) = f32_values(t) else { continue };
        if values.len() < MIN_ELEMENTS || values.iter().any(|v| v.abs() > f16::MAX.to_f32()) {
            continue;
        }
        let name = std::mem::take(&mut t.name);
        let stored = format!("{name}__f16");
        let bytes = values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        *t = raw_tensor(&stored, &t.dims, FLOAT16, bytes);
        casts.push(node("Cast", &format!("{name}__cast"), &[&stored], &name, vec![int_attr("to", FLOAT as i64)]));
    }
    let converted: Vec<String> = casts.iter().map(|n| n.output[0].clone()).collect();
    // Old exporters list initializers among the inputs too; the renamed ones are no longer inputs.
    graph.input.retain(|i| !converted.contains(&i.name));
    let n = casts.len();
    // The casts read initializers only: first in the node list keeps it topologically sorted.
    graph.node.splice(0..0, casts);
    Ok(n)
}
