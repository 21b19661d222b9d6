//! segicl-quantize: an fp32 engine → an int8 (QDQ, calibrated on real shots and frames) or fp16
//! engine, and a report of what it costs in Dice, logits, size and CPU latency; an fp32 refiner →
//! an fp16 refiner ([`refiner`]), with its report.
//!
//! [`quantize`] writes the new engine; [`report::compare`] measures it against the original.

#![warn(missing_docs)]

pub mod calibrate;
pub mod fp16;
pub mod graph;
pub mod int8;
pub mod refiner;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use segicl::manifest::{Calibration, CalibrationMethod, DType};
use segicl::pack::{stored_shot, EngineParts};
use segicl::shots::DefaultShots;
use segicl::EngineMetadata;

use crate::int8::{ActivationScale, KeepFloat};

/// The precision to convert to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// int8 weights (per output channel) and calibrated symmetric int8 activations, as QDQ graphs.
    Int8,
    /// f16 weights, f32 arithmetic on the CPU.
    Fp16,
}

/// What to quantise and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fp32 engine.
    pub engine: PathBuf,
    /// The precision to convert to.
    pub target: Target,
    /// Folder of image/mask pairs to calibrate on (required for int8).
    pub calib: Option<PathBuf>,
    /// How activation ranges are chosen (int8).
    pub method: CalibrationMethod,
    /// Calibration pairs used at most (a seeded subset of the folder).
    pub calib_pairs: usize,
    /// Seed of the calibration subset.
    pub seed: u64,
    /// Which quantisable nodes stay in float (int8).
    pub keep_float: KeepFloat,
    /// Side of the stored default shots (`None`: the engine's resolution R).
    pub shot_side: Option<usize>,
}

/// What [`quantize`] did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The new engine's bytes.
    pub bytes: Vec<u8>,
    /// Nodes quantised (int8) or weights converted (fp16).
    pub converted: usize,
    /// Nodes left in float (int8), with the reason `auto` gave when it chose them.
    pub float_nodes: Vec<String>,
    /// Calibration pairs used (int8).
    pub calib_pairs: usize,
}

/// Converts the engine named by `options` and returns the new engine's bytes (the manifest
/// records the precision and calibration; default shots are stored at `shot_side`).
pub fn quantize(options: &Options) -> Result<Outcome> {
    let meta = EngineMetadata::open(&options.engine)?;
    let manifest = &meta.manifest;
    if (manifest.precision.encoder, manifest.precision.decoder) != (DType::F32, DType::F32) {
        bail!(
            "{} is already {:?}/{:?}; quantise an fp32 engine",
            options.engine.display(),
            manifest.precision.encoder,
            manifest.precision.decoder
        );
    }
    let section = |tag| meta.file.section(tag).expect("verified engines have both graphs");
    let mut encoder = graph::decode(section(segicl::format::Tag::ENCODER), "section ENCODER")?;
    let mut decoder = graph::decode(section(segicl::format::Tag::DECODER), "section DECODER")?;
    let mut manifest = manifest.clone();
    let mut calib = None;
    let (converted, float_nodes, calib_pairs) = match options.target {
        Target::Fp16 => {
            let n = fp16::convert(&mut encoder)? + fp16::convert(&mut decoder)?;
            manifest.precision.encoder = DType::F16;
            manifest.precision.decoder = DType::F16;
            (n, Vec::new(), 0)
        }
        Target::Int8 => {
            let Some(dir) = &options.calib else { bail!("int8 needs --calib DIR (image/mask pairs to calibrate on)") };
            let (enc_q, mut float) = int8::select(int8::candidates(&encoder), &options.keep_float);
            let (dec_q, dec_float) = int8::select(int8::candidates(&decoder), &options.keep_float);
            float.extend(dec_float);
            if let KeepFloat::Nodes(names) = &options.keep_float {
                if let Some(unknown) = names.iter().find(|n| !float.contains(n)) {
                    let all: Vec<&str> = enc_q.iter().chain(&dec_q).map(|c| c.name.as_str()).collect();
                    bail!(
                        "--keep-float names `{unknown}`, which is no Conv/MatMul/Gemm of either graph; they are: {}",
                        all.join(", ")
                    );
                }
            }
            let data = calibrate::load(dir, options.calib_pairs, options.seed)?;
            let observed = |q: &[int8::Candidate]| {
                let mut names: Vec<String> = q.iter().flat_map(|c| c.activations.iter().cloned()).collect();
                names.sort();
                names.dedup();
                names
            };
            let original = (graph::encode(&encoder), graph::encode(&decoder));
            let ranges = calibrate::calibrate(
                &manifest,
                (&original.0, &original.1),
                (observed(&enc_q), observed(&dec_q)),
                &data,
                options.method,
            )?;
            let scales = |ranges: &HashMap<String, calibrate::TensorRange>| {
                ranges.iter().map(|(n, r)| (n.clone(), ActivationScale::new(r.amax))).collect()
            };
            int8::rewrite(&mut encoder, &enc_q, &scales(&ranges.encoder)).context("encoder")?;
            int8::rewrite(&mut decoder, &dec_q, &scales(&ranges.decoder)).context("decoder")?;
            manifest.precision.encoder = DType::I8;
            manifest.precision.decoder = DType::I8;
            manifest.calibration =
                Some(Calibration { method: options.method, pairs: data.len(), float_nodes: float.clone() });
            calib = Some(serde_json::to_vec_pretty(&serde_json::json!({
                "method": options.method, "encoder": ranges.encoder, "decoder": ranges.decoder,
            }))?);
            (enc_q.len() + dec_q.len(), float, data.len())
        }
    };
    let side = options.shot_side.unwrap_or(manifest.resolution);
    let card = meta.card().map(|c| format!("{c}\n\n{}", card_note(options, &manifest, side)));
    let parts = EngineParts {
        manifest,
        encoder: graph::encode(&encoder),
        decoder: graph::encode(&decoder),
        card,
        shots: restore_shots(&meta.shots, side)?,
        calib,
    };
    Ok(Outcome { bytes: parts.to_bytes()?, converted, float_nodes, calib_pairs })
}

/// The default shots re-stored at `side` (kept as they are where they are not larger).
fn restore_shots(shots: &DefaultShots, side: usize) -> Result<DefaultShots> {
    let mut out = DefaultShots::default();
    for (task, list) in &shots.tasks {
        let list = list
            .iter()
            .map(|s| match s.image.width.max(s.image.height) > side {
                true => stored_shot(&s.image.view(), &s.mask.view(), side),
                false => Ok(s.clone()),
            })
            .collect::<segicl::Result<Vec<_>>>()
            .with_context(|| format!("default shots of `{task}`"))?;
        out.tasks.push((task.clone(), list));
    }
    Ok(out)
}

/// The paragraph appended to the model card.
fn card_note(options: &Options, manifest: &segicl::manifest::Manifest, side: usize) -> String {
    let source = options.engine.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let how = match &manifest.calibration {
        Some(c) => format!(
            "int8 QDQ (per-output-channel symmetric weights; activations calibrated by {:?} on {} pairs; \
             in float: {})",
            c.method,
            c.pairs,
            if c.float_nodes.is_empty() { "nothing".to_string() } else { c.float_nodes.join(", ") }
        ),
        None => "fp16 weights (f32 arithmetic on the CPU)".to_string(),
    };
    format!("## Quantised engine\n\nMade by segicl-quantize from `{source}`: {how}. Default shots stored at {side}².")
}

/// Writes `bytes` to `path` atomically (the engine is never left half-written).
pub fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(segicl::format::write_atomically(path, bytes)?)
}
