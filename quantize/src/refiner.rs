//! Refiner files: fp32 → fp16 or int8 weights ([`convert`]), and a report
//! of what it costs: on the same draws of shots, masks refined by both refiners after the same
//! in-context pass (refinement forced on), Dice, the largest logit difference, sizes and the
//! refiner's CPU time.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use segicl::format::Tag;
use segicl::manifest::DType;
use segicl::metrics::mean_std;
use segicl::pack::RefinerParts;
use segicl::refine::RefinerMetadata;
use segicl::{BackendChoice, Engine, EngineOptions, RefineOptions, Refiner};
use segicl_eval::evaluation::{score, set_shots, Labelled};

use crate::{fp16, graph, int8, Target};

/// The `target` version of the fp32 refiner at `path`; returns its bytes and how many weight
/// tensors were converted. fp16: every f32 weight (initializers and large Constant nodes) stored
/// as f16. int8: the weights of every Conv, MatMul and Gemm as per-output-channel symmetric int8
/// read through DequantizeLinear (activations stay float: no calibration), the other weights as
/// f16.
pub fn convert(path: &Path, target: Target) -> Result<(Vec<u8>, usize)> {
    let meta = RefinerMetadata::open(path)?;
    let mut manifest = meta.manifest.clone();
    if (manifest.precision.encoder, manifest.precision.decoder) != (DType::F32, DType::F32) {
        bail!(
            "{} is already {:?}/{:?}; convert an fp32 refiner",
            path.display(),
            manifest.precision.encoder,
            manifest.precision.decoder
        );
    }
    let section = |tag| meta.file.section(tag).expect("verified refiners have both graphs");
    let mut converted = 0;
    let mut graphs = Vec::new();
    for (tag, what) in [(Tag::ENCODER, "section ENCODER"), (Tag::DECODER, "section DECODER")] {
        let mut model = graph::decode(section(tag), what)?;
        graph::constants_to_initializers(&mut model, fp16::MIN_ELEMENTS);
        let mut scales = HashSet::new();
        if target == Target::Int8 {
            let weights: Vec<_> = int8::candidates(&model)
                .into_iter()
                .filter(|c| c.weight.is_some())
                .map(|c| int8::Candidate { activations: Vec::new(), ..c })
                .collect();
            let before: HashSet<String> = graph::graph(&model).initializer.iter().map(|t| t.name.clone()).collect();
            int8::rewrite(&mut model, &weights, &HashMap::new())?;
            scales = graph::graph(&model)
                .initializer
                .iter()
                .map(|t| t.name.clone())
                .filter(|n| !before.contains(n))
                .collect();
            converted += weights.len();
        }
        converted += fp16::convert_except(&mut model, &scales)?;
        graphs.push(graph::encode(&model));
    }
    let dtype = match target {
        Target::Int8 => DType::I8,
        Target::Fp16 => DType::F16,
    };
    manifest.precision = segicl::manifest::Precision { encoder: dtype, decoder: dtype };
    let how = match target {
        Target::Int8 => {
            "int8 Conv/MatMul/Gemm weights (per output channel, symmetric; activations in float), other weights f16"
        }
        Target::Fp16 => "fp16 weights",
    };
    let source = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let note =
        format!("## Converted refiner\n\nMade by segicl-quantize from `{source}`: {how} (f32 arithmetic on the CPU).");
    let card = Some(meta.card().map_or(note.clone(), |c| format!("{c}\n\n{note}")));
    let decoder = graphs.pop().expect("two graphs");
    let encoder = graphs.pop().expect("two graphs");
    Ok((RefinerParts { manifest, encoder, decoder, card }.to_bytes()?, converted))
}

/// Both refiners on the same draws.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RefinerComparison {
    /// Shots per draw.
    pub shots: usize,
    /// Queries scored.
    pub queries: usize,
    /// Mean Dice of the in-context pass alone.
    pub pass1_dice: f64,
    /// Mean Dice refined by the fp32 refiner.
    pub reference_dice: f64,
    /// Mean Dice refined by the converted refiner.
    pub quantised_dice: f64,
    /// Largest |Δ Dice| of one query.
    pub max_query_dice_diff: f64,
    /// Largest |refiner logit difference| over every pixel of every query.
    pub max_logit_diff: f32,
    /// File sizes (bytes): fp32, converted.
    pub sizes: (u64, u64),
    /// Time of a refined frame (pass 1 and refinement, p50 ms, 1 thread, the frame's embedding
    /// not memoised: the first draw's queries): fp32, converted.
    pub refine_ms: (f64, f64),
}

/// Compares the refiners `reference` and `quantised` after the in-context pass of `engine` on
/// `data`: `draws` draws of 3 shots (fewer if the folder is small), every other pair a query,
/// refinement on for every query (the default box rule and margin; no gate).
pub fn compare(
    engine: &Path,
    reference: &Path,
    quantised: &Path,
    data: &[Labelled],
    draws: usize,
    seed: u64,
) -> Result<RefinerComparison> {
    let cpu = EngineOptions { backend: BackendChoice::Auto, threads: 1 };
    let engine = Engine::open(engine, &cpu).with_context(|| format!("opening {}", engine.display()))?;
    let open = |p: &Path| Refiner::open(p, &cpu).with_context(|| format!("opening {}", p.display()));
    let (ra, rb) = (open(reference)?, open(quantised)?);
    // Every pair is a shot or a query of some draw: keep all their embeddings.
    let options = RefineOptions { gate: false, memo_frames: data.len().clamp(1, 256), ..Default::default() };
    let (mut plain, mut sa, mut sb) = (engine.session()?, engine.session()?, engine.session()?);
    sa.set_refiner(Some((&ra, options)))?;
    sb.set_refiner(Some((&rb, options)))?;
    let k = 3.min(data.len().saturating_sub(1));
    if k == 0 {
        bail!("the eval folder needs at least 2 pairs");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut d0, mut da, mut db, mut worst, mut diff) = (Vec::new(), Vec::new(), Vec::new(), 0f64, 0f32);
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for draw in 0..draws {
        let chosen = sample(&mut rng, data.len(), k).into_vec();
        for s in [&mut plain, &mut sa, &mut sb] {
            set_shots(s, data, &chosen)?;
        }
        for query in data.iter().enumerate().filter(|(i, _)| !chosen.contains(i)).map(|(_, q)| q) {
            d0.push(score(&mut plain, query)?.0.dice);
            // Timed in the first draw, before a query's embedding is memoised.
            let started = Instant::now();
            let a = score(&mut sa, query)?.0.dice;
            let elapsed = started.elapsed();
            let started = Instant::now();
            let b = score(&mut sb, query)?.0.dice;
            if draw == 0 {
                ta.push(elapsed);
                tb.push(started.elapsed());
            }
            worst = worst.max((a - b).abs());
            da.push(a);
            db.push(b);
            if let (Some(la), Some(lb)) = (sa.refined_logits(), sb.refined_logits()) {
                diff = diff.max(la.iter().zip(lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max));
            }
        }
    }
    let p50 = |mut t: Vec<std::time::Duration>| {
        t.sort();
        t[t.len() / 2].as_secs_f64() * 1e3
    };
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).with_context(|| p.display().to_string());
    Ok(RefinerComparison {
        shots: k,
        queries: d0.len(),
        pass1_dice: mean_std(&d0).0,
        reference_dice: mean_std(&da).0,
        quantised_dice: mean_std(&db).0,
        max_query_dice_diff: worst,
        max_logit_diff: diff,
        sizes: (len(reference)?, len(quantised)?),
        refine_ms: (p50(ta), p50(tb)),
    })
}

impl RefinerComparison {
    /// The report as Markdown; `notes` are listed under the title.
    pub fn markdown(&self, title: &str, notes: &[String], label: &str) -> String {
        let mut s = format!("# {title}\n\n");
        for n in notes {
            s.push_str(&format!("- {n}\n"));
        }
        s.push_str(&format!(
            "\n## Accuracy (same draws, {} shots, {} queries, refinement on for every query)\n\n\
             | pass 1 Dice | fp32-refined Dice | {label}-refined Dice | Δ Dice | largest Δ Dice of one query | max abs refiner logit diff |\n\
             |---|---|---|---|---|---|\n| {:.4} | {:.4} | {:.4} | {:+.4} | {:.4} | {:.4} |\n",
            self.shots,
            self.queries,
            self.pass1_dice,
            self.reference_dice,
            self.quantised_dice,
            self.quantised_dice - self.reference_dice,
            self.max_query_dice_diff,
            self.max_logit_diff
        ));
        let (a, b) = self.sizes;
        s.push_str(&format!(
            "\n## Size and CPU time\n\n| refiner | file (bytes) | frame with refinement, p50 ms (1 thread, tract) |\n|---|---|---|\n\
             | fp32 | {a} | {:.0} |\n| {label} | {b} ({:.1} %) | {:.0} |\n",
            self.refine_ms.0,
            100.0 * b as f64 / a.max(1) as f64,
            self.refine_ms.1
        ));
        s
    }
}
