//! int8 as QDQ: each quantised Conv, MatMul and Gemm reads its weight through a
//! DequantizeLinear of int8 values with one symmetric scale per output channel, and each of its
//! activation inputs through a QuantizeLinear/DequantizeLinear pair with a calibrated per-tensor
//! symmetric int8 scale (`amax / 127`, zero point 0 of type int8, also for tensors that are never
//! negative: TensorRT imports QDQ as symmetric int8 only). Biases stay f32. Other ops (pooling,
//! softmax, normalisation, resize) run in float on dequantised values.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Result};
use tract_onnx::pb;

use crate::graph::{f32_tensor, get_int_attr, graph, graph_mut, int_attr, node, node_label, raw_tensor, INT8};

/// One Conv, MatMul or Gemm that can be quantised.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Index in the graph's node list.
    pub index: usize,
    /// Node name (or first output).
    pub name: String,
    /// Its weight initializer and the axis of its output channels, if it has one.
    pub weight: Option<(String, usize)>,
    /// Its activation inputs (not initializers).
    pub activations: Vec<String>,
    /// Why `auto` keeps it in float, if it does.
    pub auto_float: Option<&'static str>,
}

/// Which quantisable nodes stay in float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepFloat {
    /// The first conv (on the image), the logits head and matmuls reading a softmax.
    Auto,
    /// None: every candidate is quantised.
    None,
    /// These nodes, by name.
    Nodes(Vec<String>),
}

impl std::str::FromStr for KeepFloat {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "auto" => KeepFloat::Auto,
            "none" => KeepFloat::None,
            list => KeepFloat::Nodes(list.split(',').filter(|n| !n.is_empty()).map(str::to_string).collect()),
        })
    }
}

/// The quantisable nodes of a graph, in node order. `auto_float` marks the first conv (it reads
/// a graph input), the head (the last candidate of a graph whose output is `logits`) and matmuls
/// reading a Softmax output (attention weights).
pub fn candidates(model: &pb::ModelProto) -> Vec<Candidate> {
    let g = graph(model);
    let init: HashMap<&str, &pb::TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let inputs: HashSet<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    let softmax: HashSet<&str> =
        g.node.iter().filter(|n| n.op_type == "Softmax").flat_map(|n| n.output.iter().map(String::as_str)).collect();
    let mut out: Vec<Candidate> = Vec::new();
    for (index, n) in g.node.iter().enumerate() {
        let weight_input = match n.op_type.as_str() {
            "Conv" | "MatMul" | "Gemm" => 1,
            _ => continue,
        };
        let mut weight = None;
        let mut activations = Vec::new();
        for (slot, input) in n.input.iter().enumerate().take(2) {
            match init.get(input.as_str()) {
                Some(t) if slot == weight_input && t.data_type == crate::graph::FLOAT && t.dims.len() >= 2 => {
                    let rank = t.dims.len();
                    let axis = match n.op_type.as_str() {
                        "Conv" => 0,
                        "Gemm" if get_int_attr(n, "transB") == Some(1) => 0,
                        _ => rank - 1,
                    };
                    weight = Some((input.clone(), axis));
                }
                Some(_) => {}
                None => activations.push(input.clone()),
            }
        }
        let auto_float = if n.op_type == "Conv" && activations.iter().any(|a| inputs.contains(a.as_str())) {
            Some("first conv (reads the image)")
        } else if activations.iter().any(|a| softmax.contains(a.as_str())) {
            Some("attention (reads a softmax)")
        } else {
            None
        };
        out.push(Candidate { index, name: node_label(n).to_string(), weight, activations, auto_float });
    }
    if g.output.iter().any(|o| o.name == "logits") {
        if let Some(last) = out.last_mut() {
            last.auto_float.get_or_insert("logits head");
        }
    }
    out
}

/// The candidates that `keep` leaves quantised, and the names of those it keeps in float.
/// A name in [`KeepFloat::Nodes`] that is no candidate of either graph is an error (checked by
/// the caller across both graphs).
pub fn select(candidates: Vec<Candidate>, keep: &KeepFloat) -> (Vec<Candidate>, Vec<String>) {
    let float = |c: &Candidate| match keep {
        KeepFloat::Auto => c.auto_float.is_some(),
        KeepFloat::None => false,
        KeepFloat::Nodes(names) => names.contains(&c.name),
    };
    let (kept, quantised): (Vec<_>, Vec<_>) = candidates.into_iter().partition(float);
    (quantised, kept.into_iter().map(|c| c.name).collect())
}

/// The int8 representation chosen for one activation tensor: symmetric, zero point 0 of type
/// int8, whatever the sign of the calibrated values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationScale {
    /// Quantisation step.
    pub scale: f32,
}

impl ActivationScale {
    /// The scale for a tensor whose calibrated clipping magnitude is `amax`: `amax / 127` (1 when
    /// `amax` is 0 or not finite).
    pub fn new(amax: f32) -> Self {
        let scale = if amax > 0.0 && amax.is_finite() { amax / 127.0 } else { 1.0 };
        ActivationScale { scale }
    }
}

/// Per-output-channel symmetric int8 weights: the values and one scale per channel along `axis`.
pub fn quantise_weight(values: &[f32], dims: &[i64], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let dims: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel_of = |i: usize| (i / inner) % channels;
    let mut amax = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        amax[c] = amax[c].max(v.abs());
    }
    let scales: Vec<f32> = amax.iter().map(|&a| if a > 0.0 { a / 127.0 } else { 1.0 }).collect();
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scales)
}

/// Rewrites the graph: the weights of `quantised` become int8 initializers read through
/// DequantizeLinear, and their activation inputs pass through QuantizeLinear/DequantizeLinear
/// with the scales in `activations` (every activation input of `quantised` must have one).
pub fn rewrite(
    model: &mut pb::ModelProto,
    quantised: &[Candidate],
    activations: &HashMap<String, ActivationScale>,
) -> Result<()> {
    let g = graph_mut(model);
    let mut weight_dq: HashMap<String, String> = HashMap::new();
    let mut front = Vec::new();
    for (w, axis) in quantised.iter().filter_map(|c| c.weight.as_ref()) {
        if weight_dq.contains_key(w) {
            continue;
        }
        let t = g.initializer.iter().find(|t| &t.name == w).expect("candidates name initializers");
        let values = crate::graph::f32_values(t).expect("candidates' weights are f32");
        let (q, scales) = quantise_weight(&values, &t.dims, *axis);
        let dims = t.dims.clone();
        let c = scales.len() as i64;
        // Short names (`q:w3:s`): a graph has hundreds of these, and the file should not pay for
        // repeating long tensor names (about 20 KB on the reference engine).
        let id = format!("q:w{}", weight_dq.len());
        let (wq, ws, wz, out) = (format!("{id}:q"), format!("{id}:s"), format!("{id}:z"), format!("{id}:dq"));
        g.initializer.push(raw_tensor(&wq, &dims, INT8, q.iter().map(|&v| v as u8).collect()));
        g.initializer.push(f32_tensor(&ws, &[c], &scales));
        g.initializer.push(raw_tensor(&wz, &[c], INT8, vec![0; c as usize]));
        let attrs = vec![int_attr("axis", *axis as i64)];
        front.push(node("DequantizeLinear", &format!("{id}:DequantizeLinear"), &[&wq, &ws, &wz], &out, attrs));
        weight_dq.insert(w.clone(), out);
    }
    // The float originals go unless a node left in float still reads them.
    let quantised_nodes: HashSet<usize> = quantised.iter().map(|c| c.index).collect();
    let still_read: HashSet<String> = g
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| !quantised_nodes.contains(i))
        .flat_map(|(_, n)| n.input.iter().cloned())
        .collect();
    g.initializer.retain(|t| !weight_dq.contains_key(&t.name) || still_read.contains(&t.name));

    let mut act_dq: HashMap<String, String> = HashMap::new();
    let mut nodes = front;
    for (i, mut n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        if quantised_nodes.contains(&i) {
            let c = quantised.iter().find(|c| c.index == i).expect("in the set");
            for input in n.input.iter_mut().take(2) {
                if let Some(dq) = weight_dq.get(input) {
                    *input = dq.clone();
                } else if c.activations.contains(input) {
                    if !act_dq.contains_key(input) {
                        let Some(a) = activations.get(input) else {
                            bail!("activation `{input}` of node `{}` has no calibrated range", c.name)
                        };
                        let id = format!("q:a{}", act_dq.len());
                        let (s, z, q, dq) =
                            (format!("{id}:s"), format!("{id}:z"), format!("{id}:q"), format!("{id}:dq"));
                        g.initializer.push(f32_tensor(&s, &[], &[a.scale]));
                        g.initializer.push(raw_tensor(&z, &[], INT8, vec![0]));
                        nodes.push(node(
                            "QuantizeLinear",
                            &format!("{id}:QuantizeLinear"),
                            &[input, &s, &z],
                            &q,
                            vec![],
                        ));
                        nodes.push(node(
                            "DequantizeLinear",
                            &format!("{id}:DequantizeLinear"),
                            &[&q, &s, &z],
                            &dq,
                            vec![],
                        ));
                        act_dq.insert(input.clone(), dq);
                    }
                    *input = act_dq[input].clone();
                }
            }
        }
        nodes.push(n);
    }
    g.node = nodes;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_within_half_a_step_per_channel() {
        // Two output channels (axis 0) of very different magnitudes.
        let values = [0.5, -1.0, 0.25, 0.001, -0.002, 0.0005];
        let (q, scales) = quantise_weight(&values, &[2, 3], 0);
        assert_eq!(scales, vec![1.0 / 127.0, 0.002 / 127.0]);
        for (i, v) in values.iter().enumerate() {
            let back = q[i] as f32 * scales[i / 3];
            assert!((back - v).abs() <= scales[i / 3] / 2.0 + 1e-9, "{v} came back as {back}");
        }
        // Axis 1 (MatMul weights [K, N]): channels are columns.
        let (_, scales) = quantise_weight(&values, &[3, 2], 1);
        assert_eq!(scales, vec![0.5 / 127.0, 1.0 / 127.0]);
    }

    #[test]
    fn activation_scales_are_symmetric_int8() {
        assert_eq!(ActivationScale::new(1.27), ActivationScale { scale: 0.01 });
        assert_eq!(ActivationScale::new(2.54), ActivationScale { scale: 0.02 });
        assert_eq!(ActivationScale::new(0.0).scale, 1.0);
        assert_eq!(ActivationScale::new(f32::INFINITY).scale, 1.0);
    }

    #[test]
    fn every_activation_gets_an_int8_zero_point_and_scale_amax_over_127() {
        // A never-negative activation (a ReLU output) and a signed one, each read by a MatMul.
        let mut model = pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![
                    node("Relu", "relu", &["x"], "r", vec![]),
                    node("MatMul", "mm0", &["r", "w"], "y0", vec![]),
                    node("MatMul", "mm1", &["x", "w"], "y1", vec![]),
                ],
                initializer: vec![f32_tensor("w", &[2, 2], &[1.0, -0.5, 0.25, 2.0])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let quantised = candidates(&model);
        assert_eq!(quantised.len(), 2);
        // As `quantize` builds them: from the calibrated amax alone (r: min 0, x: min -3).
        let scales: HashMap<String, ActivationScale> =
            [("r", 2.54f32), ("x", 3.0)].map(|(n, amax)| (n.to_string(), ActivationScale::new(amax))).into();
        rewrite(&mut model, &quantised, &scales).unwrap();
        let g = graph(&model);
        let init: HashMap<&str, &pb::TensorProto> = g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        let q: Vec<&pb::NodeProto> = g.node.iter().filter(|n| n.op_type == "QuantizeLinear").collect();
        assert_eq!(q.len(), 2);
        for n in q {
            let amax = if n.input[0] == "r" { 2.54f32 } else { 3.0 };
            let scale = crate::graph::f32_values(init[n.input[1].as_str()]).unwrap();
            assert_eq!(scale, vec![amax / 127.0], "{}", n.input[0]);
            let zero = init[n.input[2].as_str()];
            assert_eq!((zero.data_type, zero.raw_data.as_slice()), (INT8, &[0u8][..]), "{}", n.input[0]);
        }
    }
}
