//! The tract backend: tract runs both ONNX graphs on the CPU, optimised once at open with static
//! shapes. It runs every engine (the int8 one too) and is the reference the native executor is
//! tested against.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_core::tract_linalg::multithread::Executor;

use super::limits::{decode_checked, MAX_TENSOR_ELEMENTS};
use super::{Backend, Runner};
use crate::error::{Error, Result};
use crate::format::{EngineFile, Tag};
use crate::manifest::{Direction, Graph, Manifest, TensorSpec};

/// A graph optimised for this CPU.
pub(crate) type Plan = Arc<TypedRunnableModel>;

/// Both graphs of an engine, optimised for this CPU.
pub struct TractBackend {
    encoder: Plan,
    decoder: Plan,
    /// Where each decoder input comes from, in the decoder's input order.
    decoder_inputs: Vec<DecoderInput>,
    /// Whether the encoder takes `image` before `mask`.
    image_first: bool,
    /// Position of `ctx` among the encoder outputs; the others are features, in order.
    ctx_output: usize,
    shapes: Shapes,
}

#[derive(Debug, Clone, Copy)]
enum DecoderInput {
    Feature(usize),
    Ctx,
    CtxValid,
}

#[derive(Debug, Clone)]
struct Shapes {
    image: [usize; 4],
    mask: [usize; 4],
    ctx: [usize; 3],
    ctx_valid: [usize; 2],
}

impl TractBackend {
    /// Loads, checks against the manifest and optimises both graphs; `threads` > 1 enables
    /// tract's multithreaded matrix products.
    pub fn prepare(file: &EngineFile, manifest: &Manifest, threads: usize) -> Result<Self> {
        use crate::manifest::DType;
        match (manifest.precision.encoder, manifest.precision.decoder) {
            (DType::F16, _) | (_, DType::F16) => log::info!("tract: f16 weights are upcast to f32 at open"),
            (DType::I8, _) | (_, DType::I8) => {
                log::info!("tract: int8 weights are dequantised at open; activations run through QDQ in f32")
            }
            _ => {}
        }
        let options = run_options(threads);
        let (encoder, enc_in, enc_out) = load(&engine_graph(file, manifest, Graph::Encoder), &options)?;
        let (decoder, dec_in, _) = load(&engine_graph(file, manifest, Graph::Decoder), &options)?;
        let ctx_output = enc_out.iter().position(|n| n == "ctx").expect("checked by load");
        let features: Vec<&String> = enc_out.iter().filter(|n| *n != "ctx").collect();
        let decoder_inputs = dec_in
            .iter()
            .map(|name| match name.as_str() {
                "ctx" => DecoderInput::Ctx,
                "ctx_valid" => DecoderInput::CtxValid,
                feat => DecoderInput::Feature(features.iter().position(|f| *f == feat).expect("checked by load")),
            })
            .collect();
        let (r, c, t, d, s) = (
            manifest.resolution,
            manifest.channels,
            manifest.tokens_per_shot,
            manifest.token_width,
            manifest.max_shots,
        );
        Ok(TractBackend {
            encoder,
            decoder,
            decoder_inputs,
            image_first: enc_in[0] == "image",
            ctx_output,
            shapes: Shapes { image: [1, c, r, r], mask: [1, 1, r, r], ctx: [1, s * t, d], ctx_valid: [1, s * t] },
        })
    }
}

/// One ONNX graph to load and the rows of a tensor table that describe its inputs and outputs.
pub(crate) struct GraphSource<'a> {
    /// The graph's name in errors (`encoder`, `refiner decoder`).
    pub name: &'static str,
    /// The section that holds it, in errors (`ENCODER`).
    pub section: &'static str,
    /// ONNX bytes.
    pub bytes: &'a [u8],
    /// Its inputs, with their static shapes.
    pub inputs: Vec<&'a TensorSpec>,
    /// Its outputs.
    pub outputs: Vec<&'a TensorSpec>,
}

/// Run options for `threads` CPU threads (tract's multithreaded matrix products above 1).
pub(crate) fn run_options(threads: usize) -> RunOptions {
    let executor = (threads > 1).then(|| Executor::multithread(threads));
    RunOptions { executor, ..Default::default() }
}

/// One graph of an engine, with its rows of the manifest's tensor table.
fn engine_graph<'a>(file: &'a EngineFile, manifest: &'a Manifest, graph: Graph) -> GraphSource<'a> {
    let (name, section, tag) = match graph {
        Graph::Encoder => ("encoder", "ENCODER", Tag::ENCODER),
        Graph::Decoder => ("decoder", "DECODER", Tag::DECODER),
    };
    GraphSource {
        name,
        section,
        bytes: file.section(tag).expect("verified engines have both graphs"),
        inputs: manifest.tensors(graph, Direction::Input).collect(),
        outputs: manifest.tensors(graph, Direction::Output).collect(),
    }
}

/// Loads one graph, fixes its input shapes from the tensor table, checks every input and output
/// against it and optimises it. Returns the plan and its input and output names, in the graph's
/// order. A graph over [`MAX_GRAPH_NODES`](super::limits::MAX_GRAPH_NODES) nodes, or with a tensor over [`MAX_TENSOR_ELEMENTS`],
/// is refused, and so is one the plan finds invalid ([`refuse_invalid`]); a panic inside tract on a
/// malformed graph becomes a contract error naming it.
pub(crate) fn load(source: &GraphSource, options: &RunOptions) -> Result<(Plan, Vec<String>, Vec<String>)> {
    let fail = |what: String| Error::contract(source.name, what);
    decode_checked(source.bytes).map_err(|e| fail(format!("section {}: {e}", source.section)))?;
    refuse_invalid(source).map_err(fail)?;
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &source.bytes[..])
        .map_err(|e| fail(format!("section {} is not an ONNX protobuf: {e:#}", source.section)))?;
    crate::guard::no_panic(|| load_checked(source, &proto, options)).unwrap_or_else(|panic| {
        Err(fail(format!("section {} is a malformed graph (tract panicked: {panic})", source.section)))
    })
}

/// Refuses a graph that the plan's lowering finds invalid by ONNX's rules (an axis out of range, a
/// reshape that does not fit) before tract sees it: tract's shape inference loops forever on some
/// of these (a LayerNormalization of a rank-0 tensor). A node the plan lacks ends the check, so an
/// invalid node after it still reaches tract.
fn refuse_invalid(source: &GraphSource) -> std::result::Result<(), String> {
    let inputs: Vec<(&str, &[usize])> = source.inputs.iter().map(|t| (t.name.as_str(), &t.shape[..])).collect();
    match crate::backend::plan::lower(source.bytes, &inputs) {
        Err(e) if e.invalid => Err(format!("section {}: {e}", source.section)),
        _ => Ok(()),
    }
}

/// Every value of `model` whose shape is known has at most [`MAX_TENSOR_ELEMENTS`] elements.
fn check_sizes(model: &TypedModel) -> std::result::Result<(), String> {
    for node in model.nodes() {
        for (slot, output) in node.outputs.iter().enumerate() {
            let Some(shape) = output.fact.shape.as_concrete() else { continue };
            if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none_or(|n| n > MAX_TENSOR_ELEMENTS) {
                return Err(format!(
                    "output {slot} of node `{}` has shape {shape:?}, over {MAX_TENSOR_ELEMENTS} elements",
                    node.name
                ));
            }
        }
    }
    Ok(())
}

/// [`load`] once the protobuf passed its bounds.
fn load_checked(
    source: &GraphSource,
    proto: &tract_onnx::pb::ModelProto,
    options: &RunOptions,
) -> Result<(Plan, Vec<String>, Vec<String>)> {
    let fail = |what: String| Error::contract(source.name, what);
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(proto)
        .map_err(|e| fail(format!("section {} is not a loadable ONNX graph: {e:#}", source.section)))?;
    let inputs: Vec<String> = model
        .input_outlets()
        .map_err(|e| fail(e.to_string()))?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let expected = &source.inputs;
    for input in &inputs {
        if !expected.iter().any(|t| &t.name == input) {
            return Err(fail(format!("graph input `{input}` is not in the manifest's tensor table")));
        }
    }
    for (ix, input) in inputs.iter().enumerate() {
        let spec = expected.iter().find(|t| &t.name == input).expect("checked above");
        model.set_input_fact(ix, f32::fact(&spec.shape).into()).map_err(|e| fail(format!("input `{input}`: {e}")))?;
    }
    for spec in expected {
        if !inputs.contains(&spec.name) {
            return Err(fail(format!("the manifest lists input `{}` but the graph has no such input", spec.name)));
        }
    }
    let typed = model.into_typed().map_err(|e| fail(format!("cannot infer static shapes: {e:#}")))?;
    check_sizes(&typed).map_err(fail)?;
    let mut outputs = Vec::new();
    for outlet in typed.output_outlets().map_err(|e| fail(e.to_string()))? {
        let label = typed.outlet_label(*outlet).unwrap_or(&typed.node(outlet.node).name).to_string();
        let spec = source
            .outputs
            .iter()
            .find(|t| t.name == label)
            .ok_or_else(|| fail(format!("graph output `{label}` is not in the manifest's tensor table")))?;
        let fact = typed.outlet_fact(*outlet).map_err(|e| fail(e.to_string()))?;
        let shape: Option<Vec<usize>> = fact.shape.as_concrete().map(|s| s.to_vec());
        if shape.as_deref() != Some(&spec.shape[..]) || fact.datum_type != f32::datum_type() {
            return Err(fail(format!(
                "output `{label}` is {:?} {:?}, the manifest says f32 {:?}",
                fact.datum_type, fact.shape, spec.shape
            )));
        }
        outputs.push(label);
    }
    for spec in &source.outputs {
        if !outputs.contains(&spec.name) {
            return Err(fail(format!("the manifest lists output `{}` but the graph has no such output", spec.name)));
        }
    }
    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable_with_options(options))
        .map_err(|e| fail(format!("cannot optimise for the CPU: {e:#}")))?;
    Ok((plan, inputs, outputs))
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn runner(&self) -> Result<Box<dyn Runner>> {
        let backend_err = |e: TractError| Error::Backend { backend: "tract", what: e.to_string() };
        Ok(Box::new(TractRunner {
            encoder: self.encoder.spawn().map_err(backend_err)?,
            decoder: self.decoder.spawn().map_err(backend_err)?,
            decoder_inputs: self.decoder_inputs.clone(),
            image_first: self.image_first,
            ctx_output: self.ctx_output,
            features: TVec::new(),
            image: input_tensor(&self.shapes.image)?,
            mask: input_tensor(&self.shapes.mask)?,
            ctx: input_tensor(&self.shapes.ctx)?,
            ctx_valid: input_tensor(&self.shapes.ctx_valid)?,
        }))
    }
}

struct TractRunner {
    encoder: TypedSimpleState,
    decoder: TypedSimpleState,
    decoder_inputs: Vec<DecoderInput>,
    image_first: bool,
    ctx_output: usize,
    features: TVec<TValue>,
    image: Arc<Tensor>,
    mask: Arc<Tensor>,
    ctx: Arc<Tensor>,
    ctx_valid: Arc<Tensor>,
}

pub(crate) fn run_err(graph: &str, e: TractError) -> Error {
    Error::Backend { backend: "tract", what: format!("{graph} failed: {e:#}") }
}

/// Runs one graph; a panic inside tract (a malformed graph that passed the checks at open)
/// becomes a backend error naming `graph`.
pub(crate) fn run_graph(state: &mut TypedSimpleState, inputs: TVec<TValue>, graph: &str) -> Result<TVec<TValue>> {
    crate::guard::no_panic(|| state.run(inputs))
        .map_err(|panic| Error::Backend { backend: "tract", what: format!("{graph} failed: tract panicked: {panic}") })?
        .map_err(|e| run_err(graph, e))
}

pub(crate) fn input_tensor(shape: &[usize]) -> Result<Arc<Tensor>> {
    Tensor::zero::<f32>(shape).map(Arc::new).map_err(|e| run_err("input", e))
}

/// Copies `data` into the input tensor `slot` and returns a value sharing it. The tensor is
/// reused from run to run: tract releases its reference when a run ends.
pub(crate) fn fill(slot: &mut Arc<Tensor>, data: &[f32]) -> Result<TValue> {
    if Arc::get_mut(slot).is_none() {
        *slot = Arc::new(slot.as_ref().clone());
    }
    let tensor = Arc::get_mut(slot).expect("unique after the check above");
    let dst = tensor.try_as_plain_ram_mut().and_then(|mut v| {
        v.as_slice_mut::<f32>()?.copy_from_slice(data);
        Ok(())
    });
    dst.map_err(|e| run_err("input", e))?;
    Ok(TValue::from_const(slot.clone()))
}

impl Runner for TractRunner {
    fn encode(&mut self, image: &[f32], mask: &[f32], ctx: &mut [f32]) -> Result<()> {
        let (image, mask) = (fill(&mut self.image, image)?, fill(&mut self.mask, mask)?);
        let inputs = if self.image_first { tvec![image, mask] } else { tvec![mask, image] };
        let mut outputs = run_graph(&mut self.encoder, inputs, "encoder")?;
        let tokens = outputs.remove(self.ctx_output);
        ctx.copy_from_slice(
            tokens.try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(|e| run_err("encoder", e))?,
        );
        self.features = outputs;
        Ok(())
    }

    fn decode(&mut self, ctx: &[f32], ctx_valid: &[f32], logits: &mut [f32]) -> Result<()> {
        if self.features.is_empty() {
            return Err(Error::Backend { backend: "tract", what: "decode called before encode".into() });
        }
        let mut inputs = TVec::with_capacity(self.decoder_inputs.len());
        for source in &self.decoder_inputs {
            inputs.push(match source {
                DecoderInput::Feature(i) => self.features[*i].clone(),
                DecoderInput::Ctx => fill(&mut self.ctx, ctx)?,
                DecoderInput::CtxValid => fill(&mut self.ctx_valid, ctx_valid)?,
            });
        }
        let outputs = run_graph(&mut self.decoder, inputs, "decoder")?;
        logits.copy_from_slice(
            outputs[0].try_as_plain_ram().and_then(|v| v.as_slice::<f32>()).map_err(|e| run_err("decoder", e))?,
        );
        Ok(())
    }
}
