//! Lowering of one ONNX graph to a [`Plan`]: static shapes from the graph inputs, constant
//! folding on the host, aliases for the ops that only relabel memory, and one [`Step`] (a few for
//! variadic Max / Min / Sum and edge or reflect Pad) per remaining node.
//!
//! Any op, attribute or attribute value the plan cannot express is refused with [`Unsupported`],
//! naming the node; nothing is silently ignored.

mod host;
#[cfg(all(test, feature = "tract"))]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use self::host::{Data, Host};
use super::{
    BinaryKind, Op, Plan, PoolKind, ReduceKind, ResizeCoordinates, ResizeMode, Step, UnaryKind, Value, ValueId,
    ValueKind, Window,
};
use crate::backend::limits::check_len;
use crate::backend::onnx as pb;

/// ONNX element type code of f32.
const FLOAT: i32 = pb::DataType::Float as i32;

/// Why a graph cannot be lowered: the first node (or graph property) the plan cannot express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The node's name (`op_type#index` when it has none; `(graph)` for the graph itself).
    pub node: String,
    /// Its ONNX op type (`Graph` for the graph itself).
    pub op: String,
    /// What is not supported.
    pub why: String,
    /// The node breaks ONNX's own rules (an axis out of range, shapes that do not fit), so no
    /// runtime can run it; otherwise it asks for something the plan lacks and another backend
    /// may run it.
    pub invalid: bool,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.invalid { " is invalid" } else { "" };
        write!(f, "node `{}` (op {}){what}: {}", self.node, self.op, self.why)
    }
}

impl std::error::Error for Unsupported {}

type Result<T> = std::result::Result<T, Unsupported>;

/// Lowers the ONNX model `onnx` with the given input shapes (by input name; an input not listed
/// keeps the static shape the graph declares). A malformed graph is an error, never a panic.
pub fn lower(onnx: &[u8], input_shapes: &[(&str, &[usize])]) -> Result<Plan> {
    let model = crate::backend::limits::decode_checked(onnx).map_err(graph_error)?;
    crate::guard::no_panic(|| lower_model(&model, input_shapes))
        .unwrap_or_else(|panic| Err(graph_error(format!("malformed graph (the lowering panicked: {panic})"))))
}

/// [`lower`] on a decoded model.
fn lower_model(model: &pb::ModelProto, input_shapes: &[(&str, &[usize])]) -> Result<Plan> {
    let graph = model.graph.as_ref().ok_or_else(|| graph_error("the model has no graph"))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .ok_or_else(|| graph_error("the model imports no opset of the default domain"))?;
    let mut lowering = Lowering::new(graph);
    lowering.inputs(graph, input_shapes)?;
    for (index, proto) in graph.node.iter().enumerate() {
        lowering.node(&Node::new(proto, index, opset))?;
    }
    lowering.outputs(graph)?;
    Ok(prune(lowering.plan))
}

fn graph_error(why: impl Into<String>) -> Unsupported {
    Unsupported { node: "(graph)".into(), op: "Graph".into(), why: why.into(), invalid: false }
}

/// One ONNX node with its label and the model's opset.
struct Node<'a> {
    proto: &'a pb::NodeProto,
    label: String,
    opset: i64,
}

impl<'a> Node<'a> {
    fn new(proto: &'a pb::NodeProto, index: usize, opset: i64) -> Self {
        let label = if proto.name.is_empty() { format!("{}#{index}", proto.op_type) } else { proto.name.clone() };
        Node { proto, label, opset }
    }

    fn op(&self) -> &'a str {
        &self.proto.op_type
    }

    /// The name of the (first) output.
    fn output(&self) -> &'a str {
        self.proto.output.first().map_or("", String::as_str)
    }

    /// The node asks for something the plan lacks.
    fn fail(&self, why: impl Into<String>) -> Unsupported {
        Unsupported { node: self.label.clone(), op: self.proto.op_type.clone(), why: why.into(), invalid: false }
    }

    /// The node breaks ONNX's rules: no backend can run it.
    fn invalid(&self, why: impl Into<String>) -> Unsupported {
        Unsupported { invalid: true, ..self.fail(why) }
    }

    fn attr(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.proto.attribute.iter().find(|a| a.name == name)
    }

    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }

    fn float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }

    fn ints(&self, name: &str) -> Option<&'a [i64]> {
        self.attr(name).map(|a| &a.ints[..])
    }

    fn string(&self, name: &str, default: &'a str) -> &'a str {
        self.attr(name).map_or(default, |a| std::str::from_utf8(&a.s).unwrap_or("(not UTF-8)"))
    }

    /// Refuses attributes outside `known`: one this lowering ignored could change the result.
    fn only(&self, known: &[&str]) -> Result<()> {
        match self.proto.attribute.iter().find(|a| !known.contains(&a.name.as_str())) {
            Some(a) => Err(self.fail(format!("attribute `{}` is not supported", a.name))),
            None => Ok(()),
        }
    }

    /// A possibly negative axis of a rank-`rank` tensor, made non-negative.
    fn axis(&self, axis: i64, rank: usize) -> Result<usize> {
        let r = rank as i64;
        if (-r..r).contains(&axis) {
            Ok(axis.rem_euclid(r) as usize)
        } else {
            Err(self.invalid(format!("axis {axis} is out of range for rank {rank}")))
        }
    }

    /// A two-element attribute of positive integers (kernel, strides, dilations).
    fn pair(&self, name: &str, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
        let Some(values) = self.ints(name) else {
            return default.ok_or_else(|| self.fail(format!("attribute `{name}` is required")));
        };
        match values {
            &[a, b] if a > 0 && b > 0 => Ok([a as usize, b as usize]),
            other => Err(self.fail(format!("`{name}` = {other:?}: two positive values expected (2-D only)"))),
        }
    }
}

/// What an ONNX tensor stands for during lowering.
#[derive(Debug, Clone)]
enum Tensor {
    /// Known now.
    Const(Rc<Host>),
    /// A value of the plan (an input, computed by a step, or an alias).
    Value(ValueId),
    /// A run-time value quantised to integers (a QuantizeLinear's output), which only a
    /// DequantizeLinear reads: the pair becomes one [`UnaryKind::Quantize`] step.
    Quantized(Rc<Quantized>),
}

/// A QuantizeLinear of a run-time value, not yet computed.
#[derive(Debug)]
struct Quantized {
    /// The float input.
    x: Operand,
    /// The quantisation step and the zero point.
    scale: f32,
    zero: i64,
    /// The integer type's range.
    range: (i64, i64),
}

fn konst(host: Host) -> Tensor {
    Tensor::Const(Rc::new(host))
}

/// A node input, resolved.
#[derive(Debug, Clone)]
struct Operand {
    /// The ONNX tensor name (the key of its weight once uploaded).
    name: String,
    tensor: Tensor,
    shape: Vec<usize>,
}

impl Operand {
    fn constant(&self) -> Option<&Host> {
        match &self.tensor {
            Tensor::Const(host) => Some(host),
            Tensor::Value(_) | Tensor::Quantized(_) => None,
        }
    }

    fn len(&self) -> usize {
        product(&self.shape)
    }

    fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// The resolved inputs of one node (`None` where an optional input is absent).
struct Args<'n, 'a> {
    node: &'n Node<'a>,
    items: Vec<Option<Operand>>,
}

impl Args<'_, '_> {
    fn opt(&self, i: usize) -> Option<&Operand> {
        self.items.get(i).and_then(Option::as_ref)
    }

    fn get(&self, i: usize) -> Result<&Operand> {
        self.opt(i).ok_or_else(|| self.node.fail(format!("input {i} is missing")))
    }

    /// The present inputs, in order.
    fn present(&self) -> Vec<&Operand> {
        self.items.iter().flatten().collect()
    }

    /// Input `i` as a constant; absent is `None`, computed at run time is refused.
    fn constant(&self, i: usize) -> Result<Option<&Host>> {
        let Some(x) = self.opt(i) else { return Ok(None) };
        let why = || self.node.fail(format!("input `{}` must be a constant (it is computed at run time)", x.name));
        x.constant().map(Some).ok_or_else(why)
    }

    fn ints(&self, i: usize) -> Result<Option<Vec<i64>>> {
        let ints = |h: &Host| h.data.ints().map(<[i64]>::to_vec);
        self.constant(i)?
            .map(|h| ints(h).ok_or_else(|| self.node.fail(format!("input {i} must be an integer tensor"))))
            .transpose()
    }

    fn floats(&self, i: usize) -> Result<Option<Vec<f32>>> {
        Ok(self.constant(i)?.map(|h| h.data.to_f32()))
    }

    fn scalar(&self, i: usize) -> Result<Option<f32>> {
        self.constant(i)?
            .map(|h| h.scalar_f32().ok_or_else(|| self.node.fail(format!("input {i} must have one element"))))
            .transpose()
    }

    /// The `axes` of Squeeze, Unsqueeze and the reductions: input 1 from opset `since` on, an
    /// attribute before.
    fn axes(&self, since: i64) -> Result<Option<Vec<i64>>> {
        if self.node.opset >= since {
            self.ints(1)
        } else {
            Ok(self.node.ints("axes").map(<[i64]>::to_vec))
        }
    }
}

/// The plan under construction and what every ONNX name stands for.
struct Lowering<'g> {
    plan: Plan,
    tensors: HashMap<String, Tensor>,
    /// Initializers, decoded on first use.
    initializers: HashMap<&'g str, &'g pb::TensorProto>,
    /// Constants already uploaded as weights, by ONNX name.
    weights: HashMap<String, ValueId>,
}

impl<'g> Lowering<'g> {
    fn new(graph: &'g pb::GraphProto) -> Self {
        Lowering {
            plan: Plan { values: Vec::new(), inputs: Vec::new(), outputs: Vec::new(), steps: Vec::new() },
            tensors: HashMap::new(),
            initializers: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
            weights: HashMap::new(),
        }
    }

    /// Declares the graph inputs (those that are not initializers) with their shapes.
    fn inputs(&mut self, graph: &pb::GraphProto, given: &[(&str, &[usize])]) -> Result<()> {
        if let Some((name, _)) = given.iter().find(|(name, _)| !graph.input.iter().any(|i| i.name == *name)) {
            return Err(graph_error(format!("the graph has no input `{name}`")));
        }
        for input in &graph.input {
            if self.initializers.contains_key(input.name.as_str()) {
                continue;
            }
            let given = given.iter().find(|(name, _)| *name == input.name).map(|(_, shape)| *shape);
            let shape = input_shape(input, given)?;
            let id = self.push_value(shape, ValueKind::Input);
            self.plan.inputs.push((input.name.clone(), id));
            self.tensors.insert(input.name.clone(), Tensor::Value(id));
        }
        Ok(())
    }

    /// Declares the graph outputs; a constant output becomes a weight.
    fn outputs(&mut self, graph: &pb::GraphProto) -> Result<()> {
        for output in &graph.output {
            let x = self.operand(&output.name).map_err(graph_error)?;
            let id = self.value(&x).map_err(graph_error)?;
            self.plan.outputs.push((output.name.clone(), id));
        }
        Ok(())
    }

    fn push_value(&mut self, shape: Vec<usize>, kind: ValueKind) -> ValueId {
        self.plan.values.push(Value { shape, kind });
        self.plan.values.len() - 1
    }

    /// What the ONNX tensor `name` stands for, with its shape.
    fn operand(&mut self, name: &str) -> std::result::Result<Operand, String> {
        let tensor = match self.tensors.get(name) {
            Some(tensor) => tensor.clone(),
            None => {
                let proto =
                    self.initializers.get(name).ok_or_else(|| format!("`{name}` is not produced before its use"))?;
                let tensor = konst(Host::decode(proto).map_err(|why| format!("initializer `{name}`: {why}"))?);
                self.tensors.insert(name.to_string(), tensor.clone());
                tensor
            }
        };
        let shape = match &tensor {
            Tensor::Const(host) => host.shape.clone(),
            Tensor::Value(id) => self.plan.values[*id].shape.clone(),
            Tensor::Quantized(q) => q.x.shape.clone(),
        };
        Ok(Operand { name: name.to_string(), tensor, shape })
    }

    /// The plan value of an operand, uploading a constant as a weight on first use.
    fn value(&mut self, x: &Operand) -> std::result::Result<ValueId, String> {
        let host = match &x.tensor {
            Tensor::Value(id) => return Ok(*id),
            Tensor::Const(host) => host,
            Tensor::Quantized(_) => {
                return Err(format!("`{}` is a quantised tensor, which only DequantizeLinear reads", x.name))
            }
        };
        if let Some(&id) = self.weights.get(&x.name) {
            return Ok(id);
        }
        let data = host.data.weight().ok_or_else(|| format!("integer tensor `{}` cannot be computed on", x.name))?;
        let id = self.push_value(x.shape.clone(), ValueKind::Weight(data));
        self.weights.insert(x.name.clone(), id);
        Ok(id)
    }

    /// The result of `op` on `inputs`: evaluated now when they are all constant and the host
    /// evaluates `op`, else one step.
    fn kernel(&mut self, node: &Node, op: Op, inputs: &[&Operand], shape: Vec<usize>) -> Result<Tensor> {
        check_len(&shape).map_err(|why| node.fail(why))?;
        if let Some(constants) = inputs.iter().map(|x| x.constant()).collect::<Option<Vec<_>>>() {
            if let Some(data) = host::eval(&op, &constants).map_err(|why| node.fail(why))? {
                return Ok(konst(Host { shape, data }));
            }
        }
        let inputs = inputs.iter().map(|x| self.value(x)).collect::<std::result::Result<_, _>>();
        let inputs = inputs.map_err(|why| node.fail(why))?;
        let output = self.push_value(shape, ValueKind::Computed);
        self.plan.steps.push(Step { node: node.label.clone(), op, inputs, output });
        Ok(Tensor::Value(output))
    }

    /// `x` under another shape with as many elements: no step.
    fn alias(&mut self, x: &Operand, shape: Vec<usize>) -> Tensor {
        match &x.tensor {
            _ if x.shape == shape => x.tensor.clone(),
            Tensor::Const(host) => konst(Host { shape, data: host.data.clone() }),
            Tensor::Value(id) => {
                let target = match self.plan.values[*id].kind {
                    ValueKind::Alias(target) => target,
                    _ => *id,
                };
                Tensor::Value(self.push_value(shape, ValueKind::Alias(target)))
            }
            Tensor::Quantized(q) => {
                let x = Operand { name: q.x.name.clone(), tensor: self.alias(&q.x, shape.clone()), shape };
                Tensor::Quantized(Rc::new(Quantized { x, scale: q.scale, zero: q.zero, range: q.range }))
            }
        }
    }

    /// Lowers one node and names its result.
    fn node(&mut self, node: &Node) -> Result<()> {
        if !matches!(node.proto.domain.as_str(), "" | "ai.onnx") {
            return Err(node.fail(format!("domain `{}` is not supported", node.proto.domain)));
        }
        if node.output().is_empty() || node.proto.output.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(node.fail("exactly one output is supported"));
        }
        let items = node.proto.input.iter().map(|name| (!name.is_empty()).then(|| self.operand(name)).transpose());
        let items = items.collect::<std::result::Result<_, _>>().map_err(|why| node.fail(why))?;
        let result = self.dispatch(&Args { node, items })?;
        self.tensors.insert(node.output().to_string(), result);
        Ok(())
    }

    fn dispatch(&mut self, a: &Args) -> Result<Tensor> {
        match a.node.op() {
            "Constant" => constant(a.node).map(konst),
            "Shape" => shape_of(a).map(konst),
            "ConstantOfShape" | "Range" | "Equal" | "Where" => fold_only(a).map(konst),
            "QuantizeLinear" => self.quantize(a),
            "DequantizeLinear" => match &a.get(0)?.tensor {
                Tensor::Quantized(q) => self.dequantize(a, &q.clone()),
                _ => fold_only(a).map(konst),
            },
            "Cast" => self.cast(a),
            "Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => {
                let shape = reshaped(a)?;
                Ok(self.alias(a.get(0)?, shape))
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" => self.elementwise(a),
            "Relu" | "Tanh" | "Sqrt" | "Sign" | "Sigmoid" | "Exp" | "Neg" | "Abs" | "Clip" => self.unary(a),
            "MatMul" => self.matmul(a),
            "Conv" => self.conv(a),
            "AveragePool" | "MaxPool" => self.pool(a),
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceL2" => self.reduce(a),
            "Softmax" => self.softmax(a),
            "LayerNormalization" => self.layer_norm(a),
            "Resize" => self.resize(a),
            "Transpose" => self.transpose(a),
            "Concat" => self.concat(a),
            "Slice" => self.slice(a),
            "Gather" => self.gather(a),
            "Expand" => self.expand(a),
            "Pad" => self.pad(a),
            other => Err(a.node.fail(format!("{other} has no kernel and is not folded"))),
        }
    }

    /// QuantizeLinear with one scale: folded for a constant, else held until the DequantizeLinear
    /// that reads it.
    fn quantize(&mut self, a: &Args) -> Result<Tensor> {
        a.node.only(&["axis"])?;
        let (x, (scale, zero, range)) = (a.get(0)?, self.quantization(a)?);
        match x.constant() {
            Some(host) => Ok(konst(host::quantize(host, scale, zero, range))),
            None => Ok(Tensor::Quantized(Rc::new(Quantized { x: x.clone(), scale, zero, range }))),
        }
    }

    /// The DequantizeLinear of a run-time QuantizeLinear `q`, with the same scale and zero point.
    fn dequantize(&mut self, a: &Args, q: &Quantized) -> Result<Tensor> {
        a.node.only(&["axis"])?;
        let (scale, zero, _) = self.quantization(a)?;
        if (scale, zero) != (q.scale, q.zero) {
            return Err(a.node.fail(format!(
                "its scale and zero point ({scale}, {zero}) differ from its QuantizeLinear's ({}, {})",
                q.scale, q.zero
            )));
        }
        let (min, max) = ((q.range.0 - zero) as f32, (q.range.1 - zero) as f32);
        let kind = UnaryKind::Quantize { scale, min, max };
        self.kernel(a.node, Op::Unary { kind, len: q.x.len() }, &[&q.x], q.x.shape.clone())
    }

    /// The one scale, the zero point and the integer range of a QuantizeLinear or
    /// DequantizeLinear on a run-time tensor: inputs 1 and 2, the zero point an initializer whose
    /// type (uint8 when absent, or int8) sets the range.
    fn quantization(&self, a: &Args) -> Result<(f32, i64, (i64, i64))> {
        let node = a.node;
        let scale = a.scalar(1)?.ok_or_else(|| node.fail("the scale is missing"))?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(node.fail(format!("scale {scale} is not finite and positive")));
        }
        let Some(z) = a.opt(2) else { return Ok((scale, 0, (0, 255))) };
        let zero = match a.ints(2)?.as_deref() {
            Some(&[zero]) => zero,
            _ => return Err(node.fail("the zero point must have one element")),
        };
        let range = match self.initializers.get(z.name.as_str()).map(|t| pb::DataType::try_from(t.data_type)) {
            Some(Ok(pb::DataType::Uint8)) => (0, 255),
            Some(Ok(pb::DataType::Int8)) => (-128, 127),
            Some(_) => return Err(node.fail("only uint8 and int8 quantisation is supported")),
            None => return Err(node.fail("the zero point must be an initializer (its type sets the range)")),
        };
        if !(range.0..=range.1).contains(&zero) {
            return Err(node.fail(format!("zero point {zero} is outside its type's range")));
        }
        Ok((scale, zero, range))
    }

    fn cast(&mut self, a: &Args) -> Result<Tensor> {
        a.node.only(&["to", "saturate"])?;
        let (x, to) = (a.get(0)?, a.node.int("to", 0) as i32);
        match x.constant() {
            Some(host) => host::cast(host, to).map(konst).map_err(|why| a.node.fail(why)),
            None if to == FLOAT => Ok(self.alias(x, x.shape.clone())),
            None => Err(a.node.fail("a run-time tensor (always f32 in a plan) can only be cast to float")),
        }
    }

    /// Add, Sub, Mul, Div, Pow, and the variadic Max, Min and Sum as a chain of binary steps.
    fn elementwise(&mut self, a: &Args) -> Result<Tensor> {
        a.node.only(&[])?;
        let kind = match a.node.op() {
            "Add" | "Sum" => BinaryKind::Add,
            "Sub" => BinaryKind::Sub,
            "Mul" => BinaryKind::Mul,
            "Div" => BinaryKind::Div,
            "Pow" => BinaryKind::Pow,
            "Max" => BinaryKind::Max,
            _ => BinaryKind::Min,
        };
        let operands = a.present();
        let (first, rest) = operands.split_first().ok_or_else(|| a.node.fail("no inputs"))?;
        let mut acc = (*first).clone();
        for (k, b) in rest.iter().enumerate() {
            let shape = broadcast_shapes(&acc.shape, &b.shape)
                .ok_or_else(|| a.node.invalid(format!("shapes {:?} and {:?} do not broadcast", acc.shape, b.shape)))?;
            let (a_strides, b_strides) = (broadcast_strides(&acc.shape, &shape), broadcast_strides(&b.shape, &shape));
            let op = Op::Binary { kind, shape: shape.clone(), a_strides, b_strides };
            let tensor = self.kernel(a.node, op, &[&acc, b], shape.clone())?;
            acc = Operand { name: format!("{}#{k}", a.node.output()), tensor, shape };
        }
        Ok(acc.tensor)
    }

    fn unary(&mut self, a: &Args) -> Result<Tensor> {
        let kind = match a.node.op() {
            "Clip" => clip(a)?,
            op => {
                a.node.only(&[])?;
                match op {
                    "Relu" => UnaryKind::Relu,
                    "Tanh" => UnaryKind::Tanh,
                    "Sqrt" => UnaryKind::Sqrt,
                    "Sign" => UnaryKind::Sign,
                    "Sigmoid" => UnaryKind::Sigmoid,
                    "Exp" => UnaryKind::Exp,
                    "Neg" => UnaryKind::Neg,
                    _ => UnaryKind::Abs,
                }
            }
        };
        let x = a.get(0)?;
        self.kernel(a.node, Op::Unary { kind, len: x.len() }, &[x], x.shape.clone())
    }

    /// Numpy MatMul: 1-D operands, and batch axes broadcast (copied first when an operand
    /// covers only part of the batch).
    fn matmul(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&[])?;
        let (x, y) = (a.get(0)?, a.get(1)?);
        if x.rank() == 0 || y.rank() == 0 {
            return Err(node.fail("MatMul of a scalar"));
        }
        let [m, k] = matrix(&x.shape, false);
        let [k2, n] = matrix(&y.shape, true);
        let batch_shape = broadcast_shapes(batch_axes(&x.shape), batch_axes(&y.shape));
        let batch_shape = batch_shape
            .filter(|_| k == k2)
            .ok_or_else(|| node.invalid(format!("shapes {:?} and {:?} do not multiply", x.shape, y.shape)))?;
        let (xb, a_batch_stride) = self.batched(node, x, &batch_shape, [m, k])?;
        let (yb, b_batch_stride) = self.batched(node, y, &batch_shape, [k, n])?;
        let mut shape = batch_shape.clone();
        shape.extend((x.rank() > 1).then_some(m));
        shape.extend((y.rank() > 1).then_some(n));
        let op = Op::MatMul { batch: product(&batch_shape), m, n, k, a_batch_stride, b_batch_stride };
        self.kernel(node, op, &[&xb, &yb], shape)
    }

    /// A MatMul operand and its batch stride: itself when its batch axes cover the whole batch
    /// (stride m·k) or none of it (stride 0), else a broadcast copy.
    fn batched(&mut self, node: &Node, x: &Operand, batch: &[usize], matrix: [usize; 2]) -> Result<(Operand, usize)> {
        let size = matrix[0] * matrix[1];
        match product(batch_axes(&x.shape)) {
            own if own == product(batch) => Ok((x.clone(), size)),
            1 => Ok((x.clone(), 0)),
            _ => {
                let shape = [batch, &matrix].concat();
                let op = Op::Broadcast { shape: shape.clone(), strides: broadcast_strides(&x.shape, &shape) };
                let tensor = self.kernel(node, op, &[x], shape.clone())?;
                Ok((Operand { name: format!("{}#batch", x.name), tensor, shape }, size))
            }
        }
    }

    fn conv(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"])?;
        let (x, weight, bias) = (a.get(0)?, a.get(1)?, a.opt(2));
        let ([n, c_in, h, w], [c_out, c_group, kh, kw]) = (nchw(node, x)?, nchw(node, weight)?);
        let groups = node.int("group", 1);
        if groups < 1 || c_in != groups as usize * c_group || c_out % groups as usize != 0 {
            return Err(node.invalid(format!("group {groups} does not fit {c_in} input and {c_out} output channels")));
        }
        if node.ints("kernel_shape").is_some_and(|k| k != [kh as i64, kw as i64]) {
            return Err(node.fail("kernel_shape differs from the weight's shape"));
        }
        if bias.is_some_and(|b| b.len() != c_out) {
            return Err(node.invalid("the bias length differs from the output channels"));
        }
        let (stride, dilation) = (node.pair("strides", Some([1, 1]))?, node.pair("dilations", Some([1, 1]))?);
        let window = window(node, [h, w], [kh, kw], stride, dilation, false)?;
        let op = Op::Conv { n, c_in, c_out, window, dilation, groups: groups as usize };
        let inputs: Vec<&Operand> = [Some(x), Some(weight), bias].into_iter().flatten().collect();
        self.kernel(node, op, &inputs, vec![n, c_out, window.out_h, window.out_w])
    }

    fn pool(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        let kind = if node.op() == "MaxPool" {
            node.only(&["auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"])?;
            if node.int("storage_order", 0) != 0 {
                return Err(node.fail("storage_order 1 is not supported"));
            }
            PoolKind::Max
        } else {
            node.only(&["auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads", "strides"])?;
            PoolKind::Average { count_include_pad: node.int("count_include_pad", 0) != 0 }
        };
        let x = a.get(0)?;
        let [n, c, h, w] = nchw(node, x)?;
        if node.pair("dilations", Some([1, 1]))? != [1, 1] {
            return Err(node.fail("dilated pooling is not supported"));
        }
        let (kernel, stride) = (node.pair("kernel_shape", None)?, node.pair("strides", Some([1, 1]))?);
        let window = window(node, [h, w], kernel, stride, [1, 1], node.int("ceil_mode", 0) != 0)?;
        let op = Op::Pool { kind, planes: n * c, window };
        self.kernel(node, op, &[x], vec![n, c, window.out_h, window.out_w])
    }

    fn reduce(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&["axes", "keepdims", "noop_with_empty_axes"])?;
        let kind = match node.op() {
            "ReduceSum" => ReduceKind::Sum,
            "ReduceMean" => ReduceKind::Mean,
            "ReduceMax" => ReduceKind::Max,
            _ => ReduceKind::L2,
        };
        let x = a.get(0)?;
        let axes = a.axes(if kind == ReduceKind::Sum { 13 } else { 18 })?.unwrap_or_default();
        if axes.is_empty() && node.int("noop_with_empty_axes", 0) != 0 {
            return Ok(self.alias(x, x.shape.clone()));
        }
        let mut reduced = axes.iter().map(|&axis| node.axis(axis, x.rank())).collect::<Result<Vec<_>>>()?;
        if axes.is_empty() {
            reduced = (0..x.rank()).collect();
        }
        reduced.sort_unstable();
        reduced.dedup();
        let (Some(&lo), Some(&hi)) = (reduced.first(), reduced.last()) else {
            return Err(node.fail("reduction of a scalar"));
        };
        // An axis of length 1 between reduced ones changes nothing: the run stays consecutive.
        if (lo..=hi).any(|axis| !reduced.contains(&axis) && x.shape[axis] != 1) {
            return Err(node.fail(format!("the reduced axes {reduced:?} are not consecutive")));
        }
        let keepdims = node.int("keepdims", 1) != 0;
        let shape = (0..x.rank())
            .filter(|axis| keepdims || !reduced.contains(axis))
            .map(|axis| if reduced.contains(&axis) { 1 } else { x.shape[axis] })
            .collect();
        let (outer, len, inner) = (product(&x.shape[..lo]), product(&x.shape[lo..=hi]), product(&x.shape[hi + 1..]));
        self.kernel(node, Op::Reduce { kind, outer, len, inner }, &[x], shape)
    }

    fn softmax(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&["axis"])?;
        let x = a.get(0)?;
        let modern = node.opset >= 13;
        let axis = node.axis(node.int("axis", if modern { -1 } else { 1 }), x.rank())?;
        let outer = product(&x.shape[..axis]);
        // Before opset 13 Softmax normalises over all the axes from `axis` on.
        let (len, inner) =
            if modern { (x.shape[axis], product(&x.shape[axis + 1..])) } else { (product(&x.shape[axis..]), 1) };
        self.kernel(node, Op::Softmax { outer, len, inner }, &[x], x.shape.clone())
    }

    fn layer_norm(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&["axis", "epsilon", "stash_type"])?;
        if node.int("stash_type", 1) != 1 {
            return Err(node.fail("only stash_type 1 (f32 statistics) is supported"));
        }
        let (x, scale, bias) = (a.get(0)?, a.get(1)?, a.opt(2));
        let axis = node.axis(node.int("axis", -1), x.rank())?;
        let cols = product(&x.shape[axis..]);
        if scale.len() != cols || bias.is_some_and(|b| b.len() != cols) {
            return Err(node.fail("scale and bias must have one element per normalised element"));
        }
        let op = Op::LayerNorm { rows: product(&x.shape[..axis]), cols, eps: node.float("epsilon", 1e-5) };
        let inputs: Vec<&Operand> = [Some(x), Some(scale), bias].into_iter().flatten().collect();
        self.kernel(node, op, &inputs, x.shape.clone())
    }

    fn resize(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        let (mode, coordinates) = resize_mode(node)?;
        let x = a.get(0)?;
        let rank = x.rank();
        let shape = resize_shape(a, &x.shape)?;
        if rank < 2 || shape[..rank - 2] != x.shape[..rank - 2] {
            return Err(node.fail("only the last two axes can be resized"));
        }
        if shape == x.shape {
            return Ok(self.alias(x, shape));
        }
        let (in_h, in_w, out_h, out_w) = (x.shape[rank - 2], x.shape[rank - 1], shape[rank - 2], shape[rank - 1]);
        let op = Op::Resize { mode, coordinates, planes: product(&x.shape[..rank - 2]), in_h, in_w, out_h, out_w };
        self.kernel(node, op, &[x], shape)
    }

    fn transpose(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&["perm"])?;
        let x = a.get(0)?;
        let perm: Vec<usize> = match node.ints("perm") {
            Some(perm) => perm.iter().map(|&p| usize::try_from(p).unwrap_or(usize::MAX)).collect(),
            None => (0..x.rank()).rev().collect(),
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..x.rank()).collect::<Vec<_>>() {
            return Err(node.invalid(format!("perm {perm:?} is not a permutation of the {} axes", x.rank())));
        }
        let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
        let moved: Vec<usize> = perm.iter().copied().filter(|&p| x.shape[p] != 1).collect();
        if moved.windows(2).all(|w| w[0] < w[1]) {
            return Ok(self.alias(x, shape));
        }
        self.kernel(node, Op::Transpose { in_shape: x.shape.clone(), perm }, &[x], shape)
    }

    fn concat(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&["axis"])?;
        let parts = a.present();
        let first = parts.first().ok_or_else(|| node.fail("no inputs"))?;
        let axis = node.axis(node.int("axis", 0), first.rank())?;
        let fits =
            |p: &&Operand| p.rank() == first.rank() && (0..p.rank()).all(|i| i == axis || p.shape[i] == first.shape[i]);
        if !parts.iter().all(fits) {
            return Err(node.invalid("the inputs differ in shape off the concatenation axis"));
        }
        let mut shape = first.shape.clone();
        shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
        let parts: Vec<&Operand> = parts.into_iter().filter(|p| p.len() > 0).collect();
        match parts[..] {
            [] => Ok(konst(Host { shape, data: Data::F32(Vec::new()) })),
            [only] => Ok(self.alias(only, shape)),
            _ => {
                let inner = product(&shape[axis + 1..]);
                let widths = parts.iter().map(|p| p.shape[axis] * inner).collect();
                self.kernel(node, Op::Concat { outer: product(&shape[..axis]), widths }, &parts, shape)
            }
        }
    }

    fn slice(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        let x = a.get(0)?;
        let (starts, ends, axes, steps) = if node.opset >= 10 {
            node.only(&[])?;
            let required = |i| a.ints(i)?.ok_or_else(|| node.fail(format!("input {i} is missing")));
            (required(1)?, required(2)?, a.ints(3)?, a.ints(4)?)
        } else {
            node.only(&["starts", "ends", "axes"])?;
            let attr = |name| node.ints(name).unwrap_or_default().to_vec();
            (attr("starts"), attr("ends"), node.ints("axes").map(<[i64]>::to_vec), None)
        };
        let count = starts.len();
        let axes = axes.unwrap_or_else(|| (0..count as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; count]);
        if ends.len() != count || axes.len() != count || steps.len() != count {
            return Err(node.fail("starts, ends, axes and steps differ in length"));
        }
        let (mut starts_at, mut step_of, mut shape) = (vec![0; x.rank()], vec![1; x.rank()], x.shape.clone());
        let mut seen = vec![false; x.rank()];
        for i in 0..count {
            let axis = node.axis(axes[i], x.rank())?;
            if std::mem::replace(&mut seen[axis], true) || steps[i] == 0 {
                return Err(node.fail("an axis is sliced twice or with step 0"));
            }
            (starts_at[axis], shape[axis]) = slice_range(x.shape[axis], starts[i], ends[i], steps[i]);
            step_of[axis] = steps[i] as isize;
        }
        if shape == x.shape && step_of.iter().all(|&s| s == 1) {
            return Ok(self.alias(x, shape));
        }
        let op = Op::Slice {
            shape: shape.clone(),
            starts: starts_at,
            steps: step_of,
            in_strides: row_major_strides(&x.shape),
        };
        self.kernel(node, op, &[x], shape)
    }

    fn gather(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&["axis"])?;
        let x = a.get(0)?;
        let indices = a.constant(1)?.ok_or_else(|| node.fail("the indices are missing"))?;
        let raw = indices.data.ints().ok_or_else(|| node.fail("the indices are not integers"))?;
        let axis = node.axis(node.int("axis", 0), x.rank())?;
        let len = x.shape[axis];
        let wrap = |i: i64| {
            let j = if i < 0 { i + len as i64 } else { i };
            usize::try_from(j)
                .ok()
                .filter(|&j| j < len)
                .ok_or_else(|| node.invalid(format!("index {i} is out of range 0..{len}")))
        };
        let wrapped = raw.iter().map(|&i| wrap(i)).collect::<Result<Vec<_>>>()?;
        let shape = [&x.shape[..axis], &indices.shape[..], &x.shape[axis + 1..]].concat();
        if shape == x.shape && wrapped.iter().enumerate().all(|(i, &j)| i == j) {
            return Ok(self.alias(x, shape));
        }
        let (outer, inner) = (product(&x.shape[..axis]), product(&x.shape[axis + 1..]));
        self.kernel(node, Op::Gather { outer, axis_len: len, inner, indices: wrapped }, &[x], shape)
    }

    fn expand(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        node.only(&[])?;
        let x = a.get(0)?;
        let target = dims(node, &a.ints(1)?.ok_or_else(|| node.fail("the shape is missing"))?)?;
        let shape = broadcast_shapes(&x.shape, &target)
            .ok_or_else(|| node.fail(format!("{:?} does not broadcast to {target:?}", x.shape)))?;
        if shape == x.shape {
            return Ok(self.alias(x, shape));
        }
        let op = Op::Broadcast { shape: shape.clone(), strides: broadcast_strides(&x.shape, &shape) };
        self.kernel(node, op, &[x], shape)
    }

    fn pad(&mut self, a: &Args) -> Result<Tensor> {
        let node = a.node;
        let x = a.get(0)?;
        let (pads, value) = if node.opset >= 11 {
            node.only(&["mode"])?;
            (a.ints(1)?.ok_or_else(|| node.fail("the pads are missing"))?, a.scalar(2)?.unwrap_or(0.0))
        } else {
            node.only(&["mode", "pads", "value"])?;
            (node.ints("pads").unwrap_or_default().to_vec(), node.float("value", 0.0))
        };
        let axes = match a.ints(3)? {
            Some(axes) => axes.iter().map(|&axis| node.axis(axis, x.rank())).collect::<Result<Vec<_>>>()?,
            None => (0..x.rank()).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return Err(node.fail(format!("{} pads for {} axes", pads.len(), axes.len())));
        }
        let pads = dims(node, &pads).map_err(|_| node.fail("negative pads (cropping) are not supported"))?;
        let (mut before, mut after) = (vec![0; x.rank()], vec![0; x.rank()]);
        for (i, &axis) in axes.iter().enumerate() {
            (before[axis], after[axis]) = (pads[i], pads[i + axes.len()]);
        }
        let shape: Option<Vec<usize>> =
            (0..x.rank()).map(|i| before[i].checked_add(x.shape[i])?.checked_add(after[i])).collect();
        let shape = shape.ok_or_else(|| node.fail("the padding overflows"))?;
        // Before anything of that size is built (edge and reflect padding build index lists).
        check_len(&shape).map_err(|why| node.fail(why))?;
        match node.string("mode", "constant") {
            _ if shape == x.shape => Ok(self.alias(x, shape)),
            "constant" => {
                let op = Op::Pad { in_shape: x.shape.clone(), before, after, value };
                self.kernel(node, op, &[x], shape)
            }
            mode @ ("edge" | "reflect") => self.pad_by_gathers(node, x, &before, &after, mode == "reflect"),
            other => Err(node.fail(format!("mode {other} is not supported"))),
        }
    }

    /// Edge or reflect padding as one Gather per padded axis.
    fn pad_by_gathers(
        &mut self,
        node: &Node,
        x: &Operand,
        before: &[usize],
        after: &[usize],
        reflect: bool,
    ) -> Result<Tensor> {
        let mut acc = x.clone();
        for axis in (0..x.rank()).filter(|&axis| before[axis] + after[axis] > 0) {
            let len = acc.shape[axis];
            let indices = border_indices(len, before[axis], after[axis], reflect)
                .ok_or_else(|| node.fail(format!("the padding does not fit axis {axis} of length {len}")))?;
            let mut shape = acc.shape.clone();
            shape[axis] = indices.len();
            let (outer, inner) = (product(&acc.shape[..axis]), product(&acc.shape[axis + 1..]));
            let tensor =
                self.kernel(node, Op::Gather { outer, axis_len: len, inner, indices }, &[&acc], shape.clone())?;
            acc = Operand { name: format!("{}#{axis}", node.output()), tensor, shape };
        }
        Ok(acc.tensor)
    }
}

/// Shape of a graph input: `given`, checked against the declared dimensions, or the declared
/// shape when it is static. A declared shape that contradicts `given` (the manifest's) is
/// invalid: the engine disagrees with itself, and no backend should run it.
fn input_shape(input: &pb::ValueInfoProto, given: Option<&[usize]>) -> Result<Vec<usize>> {
    let fail = |why: String| graph_error(format!("input `{}`: {why}", input.name));
    let Some(tensor) = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) else {
        return Err(fail("not a tensor".into()));
    };
    if tensor.elem_type != FLOAT {
        return Err(fail(format!("element type {} is not float", tensor.elem_type)));
    }
    let declared: Option<Vec<Option<usize>>> = tensor
        .shape
        .as_ref()
        .map(|s| s.dim.iter().map(|d| d.dim_value.and_then(|v| usize::try_from(v).ok())).collect());
    match (given, declared) {
        (Some(given), Some(declared))
            if given.len() != declared.len()
                || given.iter().zip(&declared).any(|(g, d)| d.is_some_and(|d| d != *g)) =>
        {
            let why = format!("shape {given:?} does not fit the declared {declared:?}");
            Err(Unsupported { invalid: true, ..fail(why) })
        }
        (Some(given), _) => Ok(given.to_vec()),
        (None, declared) => declared
            .and_then(|d| d.into_iter().collect())
            .ok_or_else(|| fail("its shape is not static: pass it to lower".into())),
    }
}

/// ONNX Constant.
fn constant(node: &Node) -> Result<Host> {
    node.only(&["value", "value_float", "value_floats", "value_int", "value_ints"])?;
    let [attr] = &node.proto.attribute[..] else { return Err(node.fail("exactly one value attribute expected")) };
    Ok(match attr.name.as_str() {
        "value" => {
            let tensor = attr.t.as_ref().ok_or_else(|| node.fail("`value` holds no tensor"))?;
            Host::decode(tensor).map_err(|why| node.fail(why))?
        }
        "value_float" => Host::scalar(attr.f),
        "value_floats" => Host { shape: vec![attr.floats.len()], data: Data::F32(attr.floats.clone()) },
        "value_int" => Host { shape: Vec::new(), data: Data::I64(vec![attr.i]) },
        _ => Host::ints(attr.ints.clone()),
    })
}

/// ONNX Shape (with the `start` / `end` of opset 15).
fn shape_of(a: &Args) -> Result<Host> {
    a.node.only(&["start", "end"])?;
    let shape = &a.get(0)?.shape;
    let rank = shape.len() as i64;
    let clamp = |i: i64| (if i < 0 { i + rank } else { i }).clamp(0, rank) as usize;
    let (start, end) = (clamp(a.node.int("start", 0)), clamp(a.node.int("end", rank)));
    Ok(Host::ints(shape[start..end.max(start)].iter().map(|&d| d as i64).collect()))
}

/// The ops evaluated only on constants: ConstantOfShape, Range, Equal, Where and
/// DequantizeLinear (the int8 weights of a QDQ graph).
fn fold_only(a: &Args) -> Result<Host> {
    let node = a.node;
    node.only(match node.op() {
        "ConstantOfShape" => &["value"],
        "DequantizeLinear" => &["axis"],
        _ => &[],
    })?;
    let input =
        |i: usize| -> Result<&Host> { a.constant(i)?.ok_or_else(|| node.fail(format!("input {i} is missing"))) };
    let fail = |why: String| node.fail(why);
    match node.op() {
        "ConstantOfShape" => {
            let value = node.attr("value").and_then(|v| v.t.as_ref()).map(Host::decode).transpose().map_err(fail)?;
            let shape = dims(node, &a.ints(0)?.ok_or_else(|| node.fail("the shape is missing"))?)?;
            host::constant_of_shape(&shape, &value.unwrap_or_else(|| Host::scalar(0.0))).map_err(fail)
        }
        "Range" => host::range(input(0)?, input(1)?, input(2)?).map_err(fail),
        "Equal" => host::equal(input(0)?, input(1)?).map_err(fail),
        "Where" => host::select(input(0)?, input(1)?, input(2)?).map_err(fail),
        _ => {
            let x = input(0)?;
            let axis = node.axis(node.int("axis", 1), x.shape.len().max(1))?;
            host::dequantize(x, input(1)?, a.constant(2)?, axis).map_err(fail)
        }
    }
}

/// The new shape of Identity, Reshape, Flatten, Squeeze and Unsqueeze.
fn reshaped(a: &Args) -> Result<Vec<usize>> {
    let node = a.node;
    let x = &a.get(0)?.shape;
    match node.op() {
        "Identity" => node.only(&[]).map(|()| x.clone()),
        "Reshape" => {
            node.only(&["allowzero"])?;
            let target = a.ints(1)?.ok_or_else(|| node.fail("the target shape is missing"))?;
            reshape_target(node, x, &target, node.int("allowzero", 0) != 0)
        }
        "Flatten" => {
            node.only(&["axis"])?;
            let (rank, axis) = (x.len() as i64, node.int("axis", 1));
            if !(-rank..=rank).contains(&axis) {
                return Err(node.invalid(format!("axis {axis} is out of range for rank {rank}")));
            }
            let axis = (if axis < 0 { axis + rank } else { axis }) as usize;
            Ok(vec![product(&x[..axis]), product(&x[axis..])])
        }
        "Squeeze" => {
            node.only(&["axes"])?;
            let axes = a.axes(13)?.unwrap_or_default();
            let axes = axes.iter().map(|&axis| node.axis(axis, x.len())).collect::<Result<Vec<_>>>()?;
            if axes.iter().any(|&axis| x[axis] != 1) {
                return Err(node.fail(format!("axes {axes:?} of {x:?} are not all of length 1")));
            }
            let removed = |axis: usize| if axes.is_empty() { x[axis] == 1 } else { axes.contains(&axis) };
            Ok((0..x.len()).filter(|&axis| !removed(axis)).map(|axis| x[axis]).collect())
        }
        _ => {
            node.only(&["axes"])?;
            let axes = a.axes(13)?.ok_or_else(|| node.fail("the axes are missing"))?;
            let rank = x.len() + axes.len();
            let mut axes = axes.iter().map(|&axis| node.axis(axis, rank)).collect::<Result<Vec<_>>>()?;
            axes.sort_unstable();
            if axes.windows(2).any(|w| w[0] == w[1]) {
                return Err(node.fail("an axis is repeated"));
            }
            let mut shape = x.clone();
            for axis in axes {
                shape.insert(axis, 1);
            }
            Ok(shape)
        }
    }
}

/// ONNX Reshape's target: 0 copies the input dimension (unless `allowzero`), -1 is inferred.
fn reshape_target(node: &Node, input: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let mut inferred = None;
    let mut shape = Vec::with_capacity(target.len());
    for (i, &d) in target.iter().enumerate() {
        shape.push(match d {
            -1 if inferred.replace(i).is_some() => return Err(node.invalid("two dimensions are -1")),
            -1 => 1,
            0 if !allowzero => *input.get(i).ok_or_else(|| node.fail("0 copies a dimension the input lacks"))?,
            d => usize::try_from(d).map_err(|_| node.fail(format!("bad dimension {d}")))?,
        });
    }
    let total = product(input);
    if let Some(i) = inferred {
        let known = product(&shape);
        shape[i] = total.checked_div(known).unwrap_or(0);
    }
    if product(&shape) != total {
        return Err(node.invalid(format!("cannot reshape {input:?} to {target:?}")));
    }
    Ok(shape)
}

/// Clip's bounds: inputs 1 and 2 from opset 11 on, attributes before; ±∞ when absent.
fn clip(a: &Args) -> Result<UnaryKind> {
    let (min, max) = if a.node.opset >= 11 {
        a.node.only(&[])?;
        (a.scalar(1)?, a.scalar(2)?)
    } else {
        a.node.only(&["min", "max"])?;
        (a.node.attr("min").map(|x| x.f), a.node.attr("max").map(|x| x.f))
    };
    Ok(UnaryKind::Clip { min: min.unwrap_or(f32::NEG_INFINITY), max: max.unwrap_or(f32::INFINITY) })
}

/// Resize's interpolation and coordinate mapping, refusing what the plan does not run.
fn resize_mode(node: &Node) -> Result<(ResizeMode, ResizeCoordinates)> {
    node.only(&[
        "mode",
        "coordinate_transformation_mode",
        "nearest_mode",
        "cubic_coeff_a",
        "exclude_outside",
        "extrapolation_value",
        "antialias",
        "keep_aspect_ratio_policy",
    ])?;
    if node.opset < 11 {
        return Err(node.fail("Resize before opset 11 is not supported"));
    }
    if node.int("antialias", 0) != 0 || node.string("keep_aspect_ratio_policy", "stretch") != "stretch" {
        return Err(node.fail("antialias and keep_aspect_ratio_policy are not supported"));
    }
    let mode = match (node.string("mode", "nearest"), node.string("nearest_mode", "round_prefer_floor")) {
        ("nearest", "round_prefer_floor") => ResizeMode::Nearest,
        ("linear", _) => ResizeMode::Linear,
        (mode, nearest) => return Err(node.fail(format!("mode {mode} (nearest_mode {nearest}) is not supported"))),
    };
    let coordinates = match node.string("coordinate_transformation_mode", "half_pixel") {
        "half_pixel" => ResizeCoordinates::HalfPixel,
        "pytorch_half_pixel" => ResizeCoordinates::PytorchHalfPixel,
        "align_corners" => ResizeCoordinates::AlignCorners,
        "asymmetric" => ResizeCoordinates::Asymmetric,
        other => return Err(node.fail(format!("coordinate_transformation_mode {other} is not supported"))),
    };
    Ok((mode, coordinates))
}

/// Resize's output shape from `sizes`, or from `scales` when every scaled length is whole (the
/// plan maps coordinates with out / in, which then equals the scale).
fn resize_shape(a: &Args, input: &[usize]) -> Result<Vec<usize>> {
    let node = a.node;
    let shape = match (a.ints(3)?.filter(|s| !s.is_empty()), a.floats(2)?.filter(|s| !s.is_empty())) {
        (Some(sizes), _) => dims(node, &sizes)?,
        (None, Some(scales)) if scales.len() == input.len() => {
            let scaled = |(&d, &s): (&usize, &f32)| {
                let out = d as f32 * s;
                (out >= 0.0 && out.fract() == 0.0).then_some(out as usize)
            };
            let shape = input.iter().zip(&scales).map(scaled).collect::<Option<Vec<_>>>();
            shape.ok_or_else(|| node.fail(format!("scales {scales:?} of {input:?} give fractional sizes")))?
        }
        _ => return Err(node.fail("one scale or size per axis is required")),
    };
    if shape.len() != input.len() {
        return Err(node.fail("one size per axis is required"));
    }
    Ok(shape)
}

/// The shape of a 4-D operand.
fn nchw(node: &Node, x: &Operand) -> Result<[usize; 4]> {
    x.shape
        .as_slice()
        .try_into()
        .map_err(|_| node.fail(format!("{:?} is not 4-D: only 2-D windows are supported", x.shape)))
}

/// The 2-D window (Conv, pooling) of `kernel` over `input`, its padding from `auto_pad` and
/// `pads`. A `ceil_mode` that would add a partial window is refused.
fn window(
    node: &Node,
    input: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
) -> Result<Window> {
    if input.contains(&0) || kernel.contains(&0) {
        return Err(node.fail("empty input or kernel"));
    }
    let span = [0, 1].map(|a| dilation[a] * (kernel[a] - 1) + 1);
    let pad = match node.string("auto_pad", "NOTSET") {
        "NOTSET" => match node.ints("pads").unwrap_or(&[0; 4]) {
            &[t, l, b, r] if [t, l, b, r].iter().all(|&p| p >= 0) => [t, l, b, r].map(|p| p as usize),
            other => return Err(node.fail(format!("pads {other:?}: four non-negative values expected"))),
        },
        "VALID" => [0; 4],
        mode @ ("SAME_UPPER" | "SAME_LOWER") => {
            let total =
                [0, 1].map(|a| ((input[a].div_ceil(stride[a]) - 1) * stride[a] + span[a]).saturating_sub(input[a]));
            let (small, large) = (total.map(|t| t / 2), total.map(|t| t - t / 2));
            let (begin, end) = if mode == "SAME_UPPER" { (small, large) } else { (large, small) };
            [begin[0], begin[1], end[0], end[1]]
        }
        other => return Err(node.fail(format!("auto_pad {other} is not supported"))),
    };
    let mut out = [0; 2];
    for a in 0..2 {
        let padded = input[a] + pad[a] + pad[a + 2];
        if padded < span[a] {
            return Err(node.fail("the window is larger than the padded input"));
        }
        out[a] = (padded - span[a]) / stride[a] + 1;
        if ceil_mode && !(padded - span[a]).is_multiple_of(stride[a]) {
            return Err(node.fail("ceil_mode with a partial last window is not supported"));
        }
    }
    Ok(Window { h: input[0], w: input[1], kernel, stride, pad, out_h: out[0], out_w: out[1] })
}

/// [m, k] of a MatMul operand (a 1-D left operand is one row; a 1-D right operand, `right`, is
/// one column).
fn matrix(shape: &[usize], right: bool) -> [usize; 2] {
    match shape {
        [k] if right => [*k, 1],
        [k] => [1, *k],
        [.., m, k] => [*m, *k],
        [] => [1, 1],
    }
}

/// The batch axes of a MatMul operand (all but the last two).
fn batch_axes(shape: &[usize]) -> &[usize] {
    &shape[..shape.len().saturating_sub(2)]
}

/// First index and length of an ONNX slice of an axis of length `dim`, clamped as ONNX does.
fn slice_range(dim: usize, start: i64, end: i64, step: i64) -> (usize, usize) {
    if dim == 0 {
        return (0, 0);
    }
    let dim = dim as i64;
    let wrap = |i: i64| if i < 0 { i.saturating_add(dim) } else { i };
    let (start, end) = if step > 0 {
        (wrap(start).clamp(0, dim), wrap(end).clamp(0, dim))
    } else {
        (wrap(start).clamp(0, dim - 1), wrap(end).clamp(-1, dim - 1))
    };
    let span = if step > 0 { end - start } else { start - end };
    let len = (span.max(0) as u64).div_ceil(step.unsigned_abs());
    (start.min(dim - 1) as usize, len as usize)
}

/// Source index along an axis of length `len` for every position of its edge- or
/// reflect-padded version; `None` when the padding does not fit.
fn border_indices(len: usize, before: usize, after: usize, reflect: bool) -> Option<Vec<usize>> {
    if len == 0 || reflect && (before >= len || after >= len) {
        return None;
    }
    let last = len as isize - 1;
    let source = |i: isize| match i {
        i if reflect && i < 0 => -i,
        i if reflect && i > last => 2 * last - i,
        i => i.clamp(0, last),
    };
    Some((0..before + len + after).map(|i| source(i as isize - before as isize) as usize).collect())
}

/// Non-negative integers (dimensions, pads).
fn dims(node: &Node, values: &[i64]) -> Result<Vec<usize>> {
    values
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| node.fail(format!("negative value {d} in {values:?}"))))
        .collect()
}

fn product(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Element strides of a dense row-major tensor.
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * shape[a + 1];
    }
    strides
}

/// The multi-index of flat position `flat` in `shape`.
pub(super) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        index[a] = flat % shape[a];
        flat /= shape[a];
    }
    index
}

/// Numpy broadcast of two shapes.
fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| if i + s.len() < rank { 1 } else { s[i + s.len() - rank] };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

/// Strides of a dense tensor of `shape` read at every index of the broadcast shape `out`: 0 on
/// the axes it is broadcast along.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = row_major_strides(shape);
    let pad = out.len() - shape.len();
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { own[i - pad] }).collect()
}

/// Drops the steps no graph output depends on and the values nothing reads, renumbering the rest.
fn prune(plan: Plan) -> Plan {
    let Plan { values, inputs, outputs, steps } = plan;
    let mut live = vec![false; values.len()];
    let mark = |live: &mut Vec<bool>, v: ValueId| {
        live[v] = true;
        if let ValueKind::Alias(target) = values[v].kind {
            live[target] = true;
        }
    };
    for &(_, v) in inputs.iter().chain(&outputs) {
        mark(&mut live, v);
    }
    let mut kept = Vec::new();
    for step in steps.into_iter().rev() {
        if !live[step.output] {
            continue;
        }
        for &v in &step.inputs {
            mark(&mut live, v);
        }
        kept.push(step);
    }
    kept.reverse();
    let mut renumber = vec![0; values.len()];
    let mut new_values = Vec::new();
    for (id, value) in values.into_iter().enumerate().filter(|(id, _)| live[*id]) {
        renumber[id] = new_values.len();
        new_values.push(value);
    }
    for value in &mut new_values {
        if let ValueKind::Alias(target) = &mut value.kind {
            *target = renumber[*target];
        }
    }
    for step in &mut kept {
        step.output = renumber[step.output];
        step.inputs.iter_mut().for_each(|v| *v = renumber[*v]);
    }
    let rename = |list: Vec<(String, ValueId)>| list.into_iter().map(|(name, v)| (name, renumber[v])).collect();
    Plan { values: new_values, inputs: rename(inputs), outputs: rename(outputs), steps: kept }
}
