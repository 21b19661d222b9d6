//! The bundled engines' graphs, lowered and run by the reference executor, against tract on the
//! same inputs: realistic frames for the encoder, the encoder's own outputs for the decoder.
//!
//! Tolerance: max |reference - tract| ≤ 1e-3 · max(1, max |tract|) per output.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tract_onnx::prelude::Framework;

use super::{difference, noise, run, tract};
use crate::backend::plan::{lower, Op, Plan, ValueKind};
use crate::format::{EngineFile, Tag};
use crate::manifest::{Direction, Graph, Manifest};

/// Named f32 tensors.
type Tensors = HashMap<String, Vec<f32>>;

/// An engine's graphs with the manifest's shapes.
struct Engine {
    name: &'static str,
    manifest: Manifest,
    encoder: Vec<u8>,
    decoder: Vec<u8>,
}

impl Engine {
    fn open(name: &'static str) -> Engine {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(name);
        let file = EngineFile::open(&path).expect("bundled engine");
        let section = |tag| file.section(tag).expect("required section").to_vec();
        let manifest = Manifest::from_json(&section(Tag::MANIFEST)).expect("manifest");
        Engine { name, manifest, encoder: section(Tag::ENCODER), decoder: section(Tag::DECODER) }
    }

    fn graph(&self, graph: Graph) -> &[u8] {
        match graph {
            Graph::Encoder => &self.encoder,
            Graph::Decoder => &self.decoder,
        }
    }

    fn lower(&self, graph: Graph) -> Plan {
        let shapes: Vec<(&str, &[usize])> =
            self.manifest.tensors(graph, Direction::Input).map(|t| (t.name.as_str(), &t.shape[..])).collect();
        lower(self.graph(graph), &shapes).unwrap_or_else(|e| panic!("{} {graph:?}: {e}", self.name))
    }

    /// Runs `graph` with tract on `inputs` (by name); its outputs by name.
    fn tract(&self, graph: Graph, plan: &Plan, inputs: &Tensors) -> Tensors {
        let model = tract_onnx::onnx().model_for_read(&mut self.graph(graph)).expect("tract loads the graph");
        let ordered = in_order(plan, inputs);
        names(plan).zip(tract(model, plan, &ordered)).collect()
    }

    /// Runs `graph` with the reference executor and with tract, checks every output and returns
    /// tract's, by name.
    fn compare(&self, graph: Graph, inputs: &Tensors) -> Tensors {
        let plan = self.lower(graph);
        let theirs = self.tract(graph, &plan, inputs);
        let ours = run(&plan, &in_order(&plan, inputs));
        for (name, ours) in names(&plan).zip(&ours) {
            let (diff, scale) = difference(ours, &theirs[&name]);
            eprintln!("{} {graph:?} {name}: max |Δ| = {diff:.3e} (scale {scale:.3e})", self.name);
            assert!(
                diff <= 1e-3 * scale.max(1.0),
                "{} {graph:?} output {name}: max |Δ| = {diff} (scale {scale})",
                self.name
            );
        }
        theirs
    }

    /// A synthetic frame: a bright ellipse on a shaded, speckled background in [0, 1], and the
    /// ellipse's mask.
    fn frame(&self, seed: u64, centre: [f32; 2], radii: [f32; 2]) -> Tensors {
        let (r, c) = (self.manifest.resolution, self.manifest.channels);
        let speckle = noise(c * r * r, seed, [-0.08, 0.08]);
        let inside = |i: usize| {
            let (y, x) = ((i / r) as f32 / r as f32, (i % r) as f32 / r as f32);
            ((y - centre[0]) / radii[0]).powi(2) + ((x - centre[1]) / radii[1]).powi(2) <= 1.0
        };
        let image = (0..c * r * r)
            .map(|i| {
                let p = i % (r * r);
                let shade = 0.25 + 0.2 * (p / r) as f32 / r as f32 + 0.05 * (i / (r * r)) as f32;
                (shade + if inside(p) { 0.4 } else { 0.0 } + speckle[i]).clamp(0.0, 1.0)
            })
            .collect();
        let mask = (0..r * r).map(|p| if inside(p) { 1.0 } else { 0.0 }).collect();
        HashMap::from([("image".to_string(), image), ("mask".to_string(), mask)])
    }

    /// Decoder inputs: the query's features, two shots' context tokens and one empty slot.
    fn decoder_inputs(&self, query: &Tensors, shots: &[Tensors]) -> Tensors {
        let (slots, tokens, width) =
            (self.manifest.max_shots, self.manifest.tokens_per_shot, self.manifest.token_width);
        assert!(shots.len() < slots, "leave a slot empty");
        let mut ctx = vec![0.0; slots * tokens * width];
        let mut valid = vec![0.0; slots * tokens];
        for (slot, shot) in shots.iter().enumerate() {
            ctx[slot * tokens * width..][..tokens * width].copy_from_slice(&shot["ctx"]);
            valid[slot * tokens..][..tokens].fill(1.0);
        }
        let mut inputs = query.clone();
        inputs.insert("ctx".into(), ctx);
        inputs.insert("ctx_valid".into(), valid);
        inputs
    }

    /// Both graphs against tract.
    fn check(&self) {
        let query = self.compare(Graph::Encoder, &self.frame(1, [0.45, 0.5], [0.2, 0.3]));
        let shots: Vec<Tensors> = [(2, [0.5, 0.4], [0.25, 0.2]), (3, [0.6, 0.55], [0.15, 0.3])]
            .into_iter()
            .map(|(seed, centre, radii)| {
                let plan = self.lower(Graph::Encoder);
                self.tract(Graph::Encoder, &plan, &self.frame(seed, centre, radii))
            })
            .collect();
        self.compare(Graph::Decoder, &self.decoder_inputs(&query, &shots));
    }
}

fn names(plan: &Plan) -> impl Iterator<Item = String> + '_ {
    plan.outputs.iter().map(|(name, _)| name.clone())
}

/// The plan's inputs taken from `tensors`, in plan order.
fn in_order<'t>(plan: &Plan, tensors: &'t Tensors) -> Vec<&'t [f32]> {
    plan.inputs
        .iter()
        .map(|(name, _)| tensors.get(name).unwrap_or_else(|| panic!("no input `{name}`")).as_slice())
        .collect()
}

#[test]
fn reference_engine_matches_tract() {
    Engine::open("segicl-ref.plan").check();
}

#[test]
fn fp16_engine_matches_tract() {
    Engine::open("segicl-ref-fp16.plan").check();
}

#[test]
fn prototype_engine_matches_tract() {
    Engine::open("prototype.plan").check();
}

/// Kinds of the steps of the bundled engines' plans, with how often each occurs: the kernels a
/// GPU executor needs. Every step reads values written before it, aliases point at non-aliases,
/// and a step's output is a computed value written once.
#[test]
fn bundled_plans_are_well_formed() {
    for name in ["segicl-ref.plan", "segicl-ref-fp16.plan", "prototype.plan"] {
        let engine = Engine::open(name);
        for graph in [Graph::Encoder, Graph::Decoder] {
            let plan = engine.lower(graph);
            check_well_formed(&plan);
            let mut kinds = BTreeMap::<String, usize>::new();
            for step in &plan.steps {
                *kinds.entry(kind(&step.op)).or_default() += 1;
            }
            eprintln!("{name} {graph:?}: {} steps, {} values; {kinds:?}", plan.steps.len(), plan.values.len());
        }
    }
}

fn kind(op: &Op) -> String {
    format!("{op:?}").split([' ', '{', '(']).next().unwrap_or_default().to_string()
}

fn check_well_formed(plan: &Plan) {
    let mut written: Vec<bool> = plan.values.iter().map(|v| !matches!(v.kind, ValueKind::Computed)).collect();
    for (id, value) in plan.values.iter().enumerate() {
        if let ValueKind::Alias(target) = value.kind {
            assert!(!matches!(plan.values[target].kind, ValueKind::Alias(_)), "alias {id} of an alias");
            assert_eq!(value.len(), plan.values[target].len(), "alias {id} changes the length");
        }
    }
    let root = |v: usize| if let ValueKind::Alias(t) = plan.values[v].kind { t } else { v };
    for step in &plan.steps {
        assert!(step.inputs.iter().all(|&v| written[root(v)]), "step `{}` reads an unwritten value", step.node);
        assert!(matches!(plan.values[step.output].kind, ValueKind::Computed), "step `{}`", step.node);
        assert!(!std::mem::replace(&mut written[step.output], true), "step `{}` rewrites its output", step.node);
    }
    assert!(plan.outputs.iter().all(|&(_, v)| written[root(v)]));
}
