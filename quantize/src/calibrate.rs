//! Calibration: real shots and frames from a folder run through both fp32 graphs (the runtime's
//! pre-processing, 1 to 3 shots per frame) while the activations that int8 will quantise are
//! observed; each gets a clipping range by the chosen method.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use segicl::cache::ContextCache;
use segicl::manifest::{CalibrationMethod, Direction, Graph, Manifest};
use segicl::preprocess::Preprocessor;
use segicl_eval::evaluation::{load_labelled, Labelled};
use tract_onnx::prelude::*;

/// Histogram bins over [0, max |x|] for the percentile and entropy methods.
const BINS: usize = 2048;
/// The percentile of |x| the percentile method clips at.
pub const PERCENTILE: f64 = 99.99;

/// What calibration saw of one activation tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorRange {
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// The clipping magnitude chosen by the method (≤ max |x|).
    pub amax: f32,
    #[serde(skip)]
    hist: Vec<u64>,
}

impl TensorRange {
    fn new() -> Self {
        TensorRange { min: f32::INFINITY, max: f32::NEG_INFINITY, amax: 0.0, hist: Vec::new() }
    }

    fn observe_range(&mut self, values: &[f32]) {
        for &v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    fn magnitude(&self) -> f32 {
        self.min.abs().max(self.max.abs())
    }

    fn observe_histogram(&mut self, values: &[f32]) {
        let top = self.magnitude();
        if self.hist.is_empty() {
            self.hist = vec![0; BINS];
        }
        if top <= 0.0 {
            return;
        }
        // Exact zeros (a ReLU's) are exact at any scale: they would only swamp the first bin.
        for &v in values.iter().filter(|&&v| v != 0.0) {
            let bin = ((v.abs() / top) * BINS as f32) as usize;
            self.hist[bin.min(BINS - 1)] += 1;
        }
    }

    /// Chooses `amax` by `method` (minmax needs no histogram).
    fn choose(&mut self, method: CalibrationMethod) {
        let top = self.magnitude();
        let width = top / BINS as f32;
        self.amax = match method {
            CalibrationMethod::Minmax => top,
            CalibrationMethod::Percentile => {
                percentile_bin(&self.hist, PERCENTILE).map_or(top, |b| (b + 1) as f32 * width)
            }
            CalibrationMethod::Entropy => {
                let levels = if self.min >= 0.0 { 256 } else { 128 };
                entropy_bins(&self.hist, levels).map_or(top, |b| b as f32 * width)
            }
        };
    }
}

/// The first bin at which the cumulative count reaches `p` percent.
fn percentile_bin(hist: &[u64], p: f64) -> Option<usize> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let mut seen = 0u64;
    hist.iter().position(|&h| {
        seen += h;
        seen as f64 >= total as f64 * p / 100.0
    })
}

/// The number of bins to keep (a clipping threshold) that minimises the KL divergence between
/// the clipped histogram and its `levels`-level quantisation (TensorRT's entropy calibration).
fn entropy_bins(hist: &[u64], levels: usize) -> Option<usize> {
    if hist.iter().all(|&h| h == 0) || hist.len() <= levels {
        return None;
    }
    let mut best = (f64::INFINITY, hist.len());
    for keep in levels..=hist.len() {
        let mut p: Vec<f64> = hist[..keep].iter().map(|&h| h as f64).collect();
        p[keep - 1] += hist[keep..].iter().sum::<u64>() as f64;
        let mut q = vec![0f64; keep];
        for level in 0..levels {
            let (start, end) = (level * keep / levels, (level + 1) * keep / levels);
            let chunk = &hist[start..end];
            let nonzero = chunk.iter().filter(|&&h| h > 0).count();
            if nonzero == 0 {
                continue;
            }
            let share = chunk.iter().sum::<u64>() as f64 / nonzero as f64;
            for (k, &h) in chunk.iter().enumerate() {
                if h > 0 {
                    q[start + k] = share;
                }
            }
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        if qs == 0.0 {
            continue;
        }
        let kl: f64 = p
            .iter()
            .zip(&q)
            .filter(|(&p, _)| p > 0.0)
            .map(|(&p, &q)| {
                let (p, q) = (p / ps, (q / qs).max(1e-12));
                p * (p / q).ln()
            })
            .sum();
        if kl < best.0 {
            best = (kl, keep);
        }
    }
    Some(best.1)
}

/// One graph prepared for calibration: its regular outputs plus the observed tensors.
struct Probe {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    observed: Vec<String>,
}

impl Probe {
    fn new(onnx: &[u8], manifest: &Manifest, graph: Graph, observed: Vec<String>) -> Result<Probe> {
        let mut model = tract_onnx::onnx().model_for_read(&mut &onnx[..]).map_err(|e| anyhow!("{e:#}"))?;
        let inputs: Vec<String> =
            model.input_outlets()?.iter().map(|o| model.node(o.node).name.clone()).collect::<Vec<_>>();
        for (ix, name) in inputs.iter().enumerate() {
            let spec = manifest
                .tensors(graph, Direction::Input)
                .find(|t| &t.name == name)
                .ok_or_else(|| anyhow!("graph input `{name}` is not in the manifest"))?;
            model.set_input_fact(ix, f32::fact(&spec.shape).into())?;
        }
        let mut outlets = model.output_outlets()?.to_vec();
        let outputs: Vec<String> =
            outlets.iter().map(|o| model.outlet_label(*o).unwrap_or(&model.node(o.node).name).to_string()).collect();
        for name in &observed {
            let outlet = model
                .find_outlet_label(name)
                .or_else(|| model.node_id_by_name(name).ok().map(|n| OutletId::new(n, 0)))
                .ok_or_else(|| anyhow!("tensor `{name}` is not in the graph"))?;
            outlets.push(outlet);
        }
        model.select_output_outlets(&outlets)?;
        let plan = model
            .into_typed()
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable_with_options(&Default::default()))
            .map_err(|e| anyhow!("{e:#}"))?;
        Ok(Probe { plan, inputs, outputs, observed })
    }

    /// Runs on named inputs; returns the regular outputs by name and the observed tensors in order.
    fn run(&self, feed: &HashMap<String, TValue>) -> Result<(HashMap<String, TValue>, Vec<TValue>)> {
        let inputs: TVec<TValue> = self.inputs.iter().map(|n| feed[n].clone()).collect();
        let mut out = self.plan.spawn()?.run(inputs).map_err(|e| anyhow!("{e:#}"))?.into_vec();
        let observed = out.split_off(self.outputs.len());
        Ok((self.outputs.iter().cloned().zip(out).collect(), observed))
    }
}

fn values(t: &TValue) -> Result<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

fn tensor(shape: &[usize], data: &[f32]) -> Result<TValue> {
    Ok(Tensor::from_shape(shape, data)?.into_tvalue())
}

/// The calibration pairs of `dir`: at most `limit` (a seeded subset), at least 2.
pub fn load(dir: &Path, limit: usize, seed: u64) -> Result<Vec<Labelled>> {
    let data =
        load_labelled(dir, Some(limit), seed).with_context(|| format!("calibration folder {}", dir.display()))?;
    if data.len() < 2 {
        bail!(
            "calibration folder {}: {} pair(s); calibration needs at least 2 (shots and a frame)",
            dir.display(),
            data.len()
        );
    }
    Ok(data)
}

/// Calibrated ranges of the observed tensors of each graph.
pub struct Ranges {
    /// Encoder tensors by name.
    pub encoder: HashMap<String, TensorRange>,
    /// Decoder tensors by name.
    pub decoder: HashMap<String, TensorRange>,
}

/// Runs every pair of `data` as a frame, with the next 1, 2 or 3 pairs (in turn) as its shots,
/// through the fp32 `encoder` and `decoder`, observing the named tensors; a second pass builds the
/// histograms the percentile and entropy methods need.
pub fn calibrate(
    manifest: &Manifest,
    (encoder, decoder): (&[u8], &[u8]),
    (enc_observed, dec_observed): (Vec<String>, Vec<String>),
    data: &[Labelled],
    method: CalibrationMethod,
) -> Result<Ranges> {
    let enc = Probe::new(encoder, manifest, Graph::Encoder, enc_observed).context("preparing the encoder")?;
    let dec = Probe::new(decoder, manifest, Graph::Decoder, dec_observed).context("preparing the decoder")?;
    let mut enc_ranges: Vec<TensorRange> = enc.observed.iter().map(|_| TensorRange::new()).collect();
    let mut dec_ranges: Vec<TensorRange> = dec.observed.iter().map(|_| TensorRange::new()).collect();
    let passes = if method == CalibrationMethod::Minmax { 1 } else { 2 };
    let pre = Preprocessor::from_manifest(manifest);
    let (r, c) = (manifest.resolution, manifest.channels);
    let (image_shape, mask_shape) = ([1, c, r, r], [1, 1, r, r]);
    let mut image = vec![0f32; pre.image_len()];
    let mut mask = vec![0f32; r * r];
    let mut cache = ContextCache::new(manifest.tokens_per_shot, manifest.token_width);
    let ctx_shape = [1, manifest.max_shots * manifest.tokens_per_shot, manifest.token_width];
    for pass in 0..passes {
        let bar = ProgressBar::new(data.len() as u64).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} frames, {eta} left")?.progress_chars("=> "),
        );
        bar.set_message(if pass == 0 { "calibration: ranges" } else { "calibration: histograms" });
        let observe = |ranges: &mut [TensorRange], outs: &[TValue]| -> Result<()> {
            for (range, t) in ranges.iter_mut().zip(outs) {
                match pass {
                    0 => range.observe_range(values(t)?),
                    _ => range.observe_histogram(values(t)?),
                }
            }
            Ok(())
        };
        for (i, frame) in data.iter().enumerate() {
            let k = (1 + i % 3).min(data.len() - 1);
            for slot in 0..manifest.max_shots {
                cache.clear(slot);
            }
            for slot in 0..k {
                let shot = &data[(i + 1 + slot) % data.len()];
                pre.image(&shot.image.view(), &mut image);
                pre.mask(&shot.mask.view(), &shot.image.view(), &mut mask)?;
                let feed = HashMap::from([
                    ("image".to_string(), tensor(&image_shape, &image)?),
                    ("mask".to_string(), tensor(&mask_shape, &mask)?),
                ]);
                let (outs, observed) = enc.run(&feed)?;
                observe(&mut enc_ranges, &observed)?;
                cache.store(slot, slot as u64, values(&outs["ctx"])?);
            }
            pre.image(&frame.image.view(), &mut image);
            mask.fill(0.0);
            let feed = HashMap::from([
                ("image".to_string(), tensor(&image_shape, &image)?),
                ("mask".to_string(), tensor(&mask_shape, &mask)?),
            ]);
            let (mut feed, observed) = enc.run(&feed)?;
            observe(&mut enc_ranges, &observed)?;
            feed.insert("ctx".into(), tensor(&ctx_shape, cache.ctx())?);
            feed.insert("ctx_valid".into(), tensor(&ctx_shape[..2], cache.valid())?);
            let (_, observed) = dec.run(&feed)?;
            observe(&mut dec_ranges, &observed)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    let finish = |names: &[String], mut ranges: Vec<TensorRange>| {
        ranges.iter_mut().for_each(|r| r.choose(method));
        names.iter().cloned().zip(ranges).collect()
    };
    Ok(Ranges { encoder: finish(&enc.observed, enc_ranges), decoder: finish(&dec.observed, dec_ranges) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_clips_a_rare_outlier() {
        let mut r = TensorRange::new();
        let mut values = vec![0.5f32; 100_000];
        values[0] = 100.0;
        r.observe_range(&values);
        r.observe_histogram(&values);
        r.choose(CalibrationMethod::Minmax);
        assert_eq!(r.amax, 100.0);
        r.choose(CalibrationMethod::Percentile);
        assert!(r.amax < 1.0, "percentile kept the outlier: {}", r.amax);
    }

    #[test]
    fn entropy_keeps_the_bulk_and_drops_a_far_tail() {
        // A bell-shaped bulk (|x| of a normal sample, deterministic) and a thin tail at 50.
        let mut state = 1u64;
        let mut uniform = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let mut values: Vec<f32> = (0..50_000)
            .map(|_| ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32)
            .collect();
        values.extend(std::iter::repeat_n(50.0, 3));
        let mut r = TensorRange::new();
        r.observe_range(&values);
        r.observe_histogram(&values);
        r.choose(CalibrationMethod::Entropy);
        assert!(r.amax > 2.0 && r.amax < 10.0, "entropy threshold {}", r.amax);
    }
}
