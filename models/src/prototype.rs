//! The prototype engine: classical few-shot segmentation by nearest prototype, written as an
//! encoder/decoder pair that fits the model contract, with no training.
//!
//! Encoder: fixed filters give F = 5 features per pixel (local means at 3, 9 and 17 pixels,
//! local standard deviation at 9, gradient magnitude); a shot's mask splits the frame into its
//! foreground, a ring of background around it and the rest, each split again into the pixels
//! darker and brighter than its mean, and the mean feature of each part is a token (T = 6).
//! Decoder: each valid shot votes γ × (distance to its nearest background token − distance to
//! its nearest foreground token); a pixel's logit is the mean vote.

use segicl::manifest::{
    ColourRule, DType, Direction, Graph, Manifest, Normalisation, Precision, TensorSpec, MAX_SHOTS,
};
use segicl::pack::{stored_shot, EngineParts};
use segicl::shots::DefaultShots;
use segicl_eval::synthetic::{self, Task};

use crate::onnx::{Attr, GraphBuilder};

/// Side of the encoder's input.
pub const RESOLUTION: usize = 128;
/// Features per pixel.
pub const FEATURES: usize = 5;
/// Times each region (foreground, near and far background) is split at its mean intensity.
const SPLITS: u32 = 2;
/// Tokens per shot: 2^SPLITS intensity bands of each of the 3 regions, ordered so that token j
/// describes region j mod 3 (0 foreground, 1 near background, 2 far background).
pub const TOKENS: usize = 3 << SPLITS;
/// Which of a shot's tokens describe the foreground.
const FOREGROUND: [i64; TOKENS / 3] = [0, 3, 6, 9];
/// Which of a shot's tokens describe the background.
const BACKGROUND: [i64; TOKENS * 2 / 3] = [1, 2, 4, 5, 7, 8, 10, 11];
/// Weight of each feature in the distance: local means 3/9/17, local std, gradient.
const FEATURE_WEIGHTS: [f32; FEATURES] = [0.5, 1.0, 1.0, 2.0, 0.25];
/// Side of the max-pool that dilates the mask into the near-background ring.
const RING: i64 = 15;
/// Logit scale γ.
const GAMMA: f32 = 50.0;
/// Offset added to a token whose region is empty, so that it is never the nearest.
const EMPTY_TOKEN: f32 = 1.0e3;
/// Seeds of the default shots stored for each synthetic task.
const DEFAULT_SHOT_SEEDS: [u64; 3] = [9001, 9002, 9003];

/// A k×k max pool (stride 1, same size) as a k×1 then a 1×k pass: exact, and k/2 times cheaper.
fn max_pool(g: &mut GraphBuilder, x: &str, k: i64) -> String {
    let p = k / 2;
    let rows =
        g.op("MaxPool", &[x], vec![("kernel_shape", Attr::Ints(vec![k, 1])), ("pads", Attr::Ints(vec![p, 0, p, 0]))]);
    g.op("MaxPool", &[&rows], vec![("kernel_shape", Attr::Ints(vec![1, k])), ("pads", Attr::Ints(vec![0, p, 0, p]))])
}

/// Means of single-channel maps over k×k windows (stride 1, same size; a window clipped at the
/// border averages what is inside), one `(map, k)` per output channel: \[1, n, R, R\].
///
/// Each sum is two single-channel box convolutions (k×1, then 1×k); dividing by the same sums of
/// a map of ones (the number of pixels inside each window) keeps the padding out of the mean.
/// tract runs single-channel convolutions about 20 times faster than AveragePool without the
/// padding, and far faster than grouped (depthwise) ones with wide kernels.
fn box_means(g: &mut GraphBuilder, maps: &[(&str, i64)]) -> String {
    let zero = g.scalar(0.0);
    let one = g.scalar(1.0);
    let ones = g.op("Mul", &[maps[0].0, &zero], vec![]);
    let ones = g.op("Add", &[&ones, &one], vec![]);
    let box_sum = |g: &mut GraphBuilder, x: &str, k: i64| {
        let p = k / 2;
        let column = g.constant(&[1, 1, k as usize, 1], vec![1.0; k as usize]);
        let row = g.constant(&[1, 1, 1, k as usize], vec![1.0; k as usize]);
        let sums = g.op("Conv", &[x, &column], vec![("pads", Attr::Ints(vec![p, 0, p, 0]))]);
        g.op("Conv", &[&sums, &row], vec![("pads", Attr::Ints(vec![0, p, 0, p]))])
    };
    let mut counts: Vec<(i64, String)> = Vec::new();
    let mut means = Vec::new();
    for &(map, k) in maps {
        let count = match counts.iter().find(|(kk, _)| *kk == k) {
            Some((_, c)) => c.clone(),
            None => {
                let c = box_sum(g, &ones, k);
                counts.push((k, c.clone()));
                c
            }
        };
        let sum = box_sum(g, map, k);
        means.push(g.op("Div", &[&sum, &count], vec![]));
    }
    g.op("Concat", &means.iter().map(String::as_str).collect::<Vec<_>>(), vec![("axis", Attr::Int(1))])
}

/// Channel `c` of `x` (\[1, C, R, R\] → \[1, 1, R, R\]).
fn channel(g: &mut GraphBuilder, x: &str, c: i64) -> String {
    let ix = g.ints(&[c]);
    g.op("Gather", &[x, &ix], vec![("axis", Attr::Int(1))])
}

/// Mean feature (\[1, k, F\]) and area (\[1, k, 1\]) of k weighted regions (\[1, k, R·R\]),
/// given the features as \[1, R·R, F\].
fn region_means(g: &mut GraphBuilder, regions: &str, flat_t: &str) -> (String, String) {
    let sums = g.op("MatMul", &[regions, flat_t], vec![]);
    let axis2 = g.ints(&[2]);
    let area = g.op("ReduceSum", &[regions, &axis2], vec![("keepdims", Attr::Int(1))]);
    let eps = g.scalar(1e-6);
    let area_eps = g.op("Add", &[&area, &eps], vec![]);
    (g.op("Div", &[&sums, &area_eps], vec![]), area)
}

/// Splits each of k regions (\[1, k, R·R\]) at its mean local intensity (feature 1, the 9-pixel
/// mean; `means` \[1, k, F\]) into its darker and its brighter pixels: 2k regions, darker first.
fn split(g: &mut GraphBuilder, regions: &str, means: &str, flat: &str) -> String {
    let m9 = g.ints(&[1]);
    let level = g.op("Gather", &[means, &m9], vec![("axis", Attr::Int(2))]);
    let pixel = g.op("Gather", &[flat, &m9], vec![("axis", Attr::Int(1))]);
    let below = g.op("Sub", &[&level, &pixel], vec![]);
    let below = g.op("Sign", &[&below], vec![]);
    let darker = g.op("Relu", &[&below], vec![]);
    let one = g.scalar(1.0);
    let brighter = g.op("Sub", &[&one, &darker], vec![]);
    let dark = g.op("Mul", &[regions, &darker], vec![]);
    let bright = g.op("Mul", &[regions, &brighter], vec![]);
    g.op("Concat", &[&dark, &bright], vec![("axis", Attr::Int(1))])
}

/// The encoder graph (ONNX bytes).
pub fn encoder() -> Vec<u8> {
    let r = RESOLUTION;
    let rr = (r * r) as i64;
    let mut g = GraphBuilder::new("prototype-encoder");
    let image = g.input("image", &[1, 1, r, r]);
    let mask = g.input("mask", &[1, 1, r, r]);

    let sq = g.op("Mul", &[&image, &image], vec![]);
    let means = box_means(&mut g, &[(&image, 3), (&image, 9), (&image, 17), (&sq, 9)]);
    let (m3, m9, m17, s9) = (
        channel(&mut g, &means, 0),
        channel(&mut g, &means, 1),
        channel(&mut g, &means, 2),
        channel(&mut g, &means, 3),
    );
    let m9sq = g.op("Mul", &[&m9, &m9], vec![]);
    let var = g.op("Sub", &[&s9, &m9sq], vec![]);
    let var = g.op("Relu", &[&var], vec![]);
    let eps = g.scalar(1e-6);
    let var = g.op("Add", &[&var, &eps], vec![]);
    let std = g.op("Sqrt", &[&var], vec![]);

    let pads = g.ints(&[0, 0, 1, 1, 0, 0, 1, 1]);
    let padded = g.op("Pad", &[&m3, &pads], vec![("mode", Attr::Str("edge"))]);
    let sobel = g.constant(
        &[2, 1, 3, 3],
        vec![-1.0, 0.0, 1.0, -2.0, 0.0, 2.0, -1.0, 0.0, 1.0, -1.0, -2.0, -1.0, 0.0, 0.0, 0.0, 1.0, 2.0, 1.0],
    );
    let grad = g.op("Conv", &[&padded, &sobel], vec![("kernel_shape", Attr::Ints(vec![3, 3]))]);
    let grad2 = g.op("Mul", &[&grad, &grad], vec![]);
    let axis1 = g.ints(&[1]);
    let grad2 = g.op("ReduceSum", &[&grad2, &axis1], vec![("keepdims", Attr::Int(1))]);
    let grad2 = g.op("Add", &[&grad2, &eps], vec![]);
    let gmag = g.op("Sqrt", &[&grad2], vec![]);

    let feat = g.op("Concat", &[&m3, &m9, &m17, &std, &gmag], vec![("axis", Attr::Int(1))]);
    let weights = g.constant(&[1, FEATURES, 1, 1], FEATURE_WEIGHTS.to_vec());
    let feat = g.op("Mul", &[&feat, &weights], vec![]);
    g.output(&feat, "feat_0", &[1, FEATURES, r, r]);

    let dilated = max_pool(&mut g, &mask, RING);
    let ring = g.op("Sub", &[&dilated, &mask], vec![]);
    let one = g.scalar(1.0);
    let far = g.op("Sub", &[&one, &dilated], vec![]);
    let regions = g.op("Concat", &[&mask, &ring, &far], vec![("axis", Attr::Int(1))]);
    let shape = g.ints(&[1, 3, rr]);
    let regions = g.op("Reshape", &[&regions, &shape], vec![]);
    let shape = g.ints(&[1, FEATURES as i64, rr]);
    let flat = g.op("Reshape", &[&feat, &shape], vec![]);
    let flat_t = g.op("Transpose", &[&flat], vec![("perm", Attr::Ints(vec![0, 2, 1]))]);
    let (means, _) = region_means(&mut g, &regions, &flat_t);
    let mut regions = regions;
    let mut means = means;
    let mut area = String::new();
    for _ in 0..SPLITS {
        regions = split(&mut g, &regions, &means, &flat);
        (means, area) = region_means(&mut g, &regions, &flat_t);
    }
    // An empty region (area < 0.5) moves its token EMPTY_TOKEN away from every feature.
    let half = g.scalar(0.5);
    let lack = g.op("Sub", &[&half, &area], vec![]);
    let lack = g.op("Relu", &[&lack], vec![]);
    let big = g.scalar(2.0 * EMPTY_TOKEN);
    let offset = g.op("Mul", &[&lack, &big], vec![]);
    let ctx = g.op("Add", &[&means, &offset], vec![]);
    g.output(&ctx, "ctx", &[1, TOKENS, FEATURES]);
    g.finish()
}

/// The decoder graph (ONNX bytes).
pub fn decoder() -> Vec<u8> {
    let r = RESOLUTION;
    let n = MAX_SHOTS * TOKENS;
    let mut g = GraphBuilder::new("prototype-decoder");
    let feat = g.input("feat_0", &[1, FEATURES, r, r]);
    let ctx = g.input("ctx", &[1, n, FEATURES]);
    let valid = g.input("ctx_valid", &[1, n]);

    let shape = g.ints(&[1, FEATURES as i64, (r * r) as i64]);
    let flat = g.op("Reshape", &[&feat, &shape], vec![]);
    let dot = g.op("MatMul", &[&ctx, &flat], vec![]);
    let two = g.scalar(2.0);
    let dot2 = g.op("Mul", &[&dot, &two], vec![]);
    let f2 = g.op("Mul", &[&flat, &flat], vec![]);
    let axis1 = g.ints(&[1]);
    let f2 = g.op("ReduceSum", &[&f2, &axis1], vec![("keepdims", Attr::Int(1))]);
    let c2 = g.op("Mul", &[&ctx, &ctx], vec![]);
    let axis2 = g.ints(&[2]);
    let c2 = g.op("ReduceSum", &[&c2, &axis2], vec![("keepdims", Attr::Int(1))]);
    let d = g.op("Sub", &[&f2, &dot2], vec![]);
    let d = g.op("Add", &[&d, &c2], vec![]);
    // Each shot votes with its own margin; the logit is the mean vote of the valid shots.
    let s = MAX_SHOTS as i64;
    let shape = g.ints(&[1, s, TOKENS as i64, (r * r) as i64]);
    let d = g.op("Reshape", &[&d, &shape], vec![]);
    // Nearest token of each kind: an element-wise Min over the kind's tokens (tract's ReduceMin
    // allocates once per output element).
    let token = |g: &mut GraphBuilder, j: i64| {
        let ix = g.ints(&[j]);
        g.op("Gather", &[&d, &ix], vec![("axis", Attr::Int(2))])
    };
    let fg: Vec<String> = FOREGROUND.iter().map(|&j| token(&mut g, j)).collect();
    let bg: Vec<String> = BACKGROUND.iter().map(|&j| token(&mut g, j)).collect();
    let fg = g.op("Min", &fg.iter().map(String::as_str).collect::<Vec<_>>(), vec![]);
    let bg = g.op("Min", &bg.iter().map(String::as_str).collect::<Vec<_>>(), vec![]);
    let margin = g.op("Sub", &[&bg, &fg], vec![]);
    let first = g.ints(&(0..s).map(|k| k * TOKENS as i64).collect::<Vec<_>>());
    let shot_valid = g.op("Gather", &[&valid, &first], vec![("axis", Attr::Int(1))]);
    let shape = g.ints(&[1, s, 1, 1]);
    let shot_valid = g.op("Reshape", &[&shot_valid, &shape], vec![]);
    let votes = g.op("Mul", &[&margin, &shot_valid], vec![]);
    let votes = g.op("ReduceSum", &[&votes, &axis1], vec![("keepdims", Attr::Int(0))]);
    let count = g.op("ReduceSum", &[&shot_valid, &axis1], vec![("keepdims", Attr::Int(0))]);
    let eps = g.scalar(1e-6);
    let count = g.op("Add", &[&count, &eps], vec![]);
    let margin = g.op("Div", &[&votes, &count], vec![]);
    let gamma = g.scalar(GAMMA);
    let logits = g.op("Mul", &[&margin, &gamma], vec![]);
    let shape = g.ints(&[1, 1, r as i64, r as i64]);
    let logits = g.op("Reshape", &[&logits, &shape], vec![]);
    g.output(&logits, "logits", &[1, 1, r, r]);
    g.finish()
}

/// The manifest of the prototype engine.
pub fn manifest() -> Manifest {
    use Direction::*;
    use Graph::*;
    let r = RESOLUTION;
    let t = |graph, direction, name: &str, shape: &[usize]| TensorSpec {
        graph,
        direction,
        name: name.into(),
        shape: shape.to_vec(),
        dtype: DType::F32,
    };
    Manifest {
        name: "segicl-prototype".into(),
        version: "1.0.0".into(),
        resolution: r,
        channels: 1,
        colour: ColourRule::Luma,
        normalisation: Normalisation::MinMax,
        max_shots: MAX_SHOTS,
        tokens_per_shot: TOKENS,
        token_width: FEATURES,
        threshold: 0.5,
        precision: Precision { encoder: DType::F32, decoder: DType::F32 },
        calibration: None,
        tensors: vec![
            t(Encoder, Input, "image", &[1, 1, r, r]),
            t(Encoder, Input, "mask", &[1, 1, r, r]),
            t(Encoder, Output, "feat_0", &[1, FEATURES, r, r]),
            t(Encoder, Output, "ctx", &[1, TOKENS, FEATURES]),
            t(Decoder, Input, "feat_0", &[1, FEATURES, r, r]),
            t(Decoder, Input, "ctx", &[1, MAX_SHOTS * TOKENS, FEATURES]),
            t(Decoder, Input, "ctx_valid", &[1, MAX_SHOTS * TOKENS]),
            t(Decoder, Output, "logits", &[1, 1, r, r]),
        ],
        default_shot_tasks: vec![],
    }
}

/// Default shots: three synthetic samples of every synthetic task.
pub fn default_shots() -> segicl::Result<DefaultShots> {
    let mut tasks = Vec::new();
    for task in Task::ALL {
        let shots = DEFAULT_SHOT_SEEDS
            .iter()
            .map(|&seed| {
                let (image, mask) = synthetic::sample(task, seed);
                let mask = segicl::OwnedImage {
                    width: image.width,
                    height: image.height,
                    format: segicl::PixelFormat::Gray8,
                    data: mask,
                };
                stored_shot(&image.view(), &mask.view(), RESOLUTION)
            })
            .collect::<segicl::Result<Vec<_>>>()?;
        tasks.push((task.name().to_string(), shots));
    }
    Ok(DefaultShots { tasks })
}

/// All parts of the prototype engine.
pub fn engine_parts() -> segicl::Result<EngineParts> {
    Ok(EngineParts {
        manifest: manifest(),
        encoder: encoder(),
        decoder: decoder(),
        card: Some(include_str!("../PROTOTYPE_CARD.md").to_string()),
        shots: default_shots()?,
        calib: None,
    })
}
