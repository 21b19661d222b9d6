//! The engine manifest (JSON in the MANIFEST section): model identity, static shapes,
//! pre-processing rules and the tensor table the graphs are checked against.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest side R an engine may have.
pub const MAX_RESOLUTION: usize = 2048;

/// Most shots a context holds; fixed by the model contract.
pub const MAX_SHOTS: usize = 3;

/// How a colour frame becomes the encoder's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColourRule {
    /// One channel: 0.299 R + 0.587 G + 0.114 B.
    Luma,
    /// One channel: the green channel (fundus photographs).
    Green,
    /// Three channels: R, G, B (gray frames repeat their value).
    Rgb,
}

impl ColourRule {
    /// Channels this rule produces.
    pub fn channels(self) -> usize {
        match self {
            ColourRule::Luma | ColourRule::Green => 1,
            ColourRule::Rgb => 3,
        }
    }
}

/// How the resized frame is normalised before the encoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Normalisation {
    /// Per image, over all channels: (v − min) / (max − min); a flat image becomes zeros.
    MinMax,
    /// Per channel: (v − mean[c]) / std[c], with v in 0..=1.
    MeanStd {
        /// One mean per channel.
        mean: Vec<f32>,
        /// One standard deviation per channel.
        std: Vec<f32>,
    },
}

impl Normalisation {
    /// Checks a `mean_std` rule for `channels` channels: one finite mean in ±[`MAX_MEAN`] and one
    /// std in [`MIN_STD`]..=[`MAX_MEAN`] per channel, so that a normalised value stays finite.
    pub fn check(&self, channels: usize) -> std::result::Result<(), String> {
        if let Normalisation::MeanStd { mean, std } = self {
            let means = mean.iter().all(|v| v.is_finite() && v.abs() <= MAX_MEAN);
            let stds = std.iter().all(|v| v.is_finite() && (MIN_STD..=MAX_MEAN).contains(v));
            if mean.len() != channels || std.len() != channels || !means || !stds {
                return Err(format!(
                    "mean_std normalisation needs {channels} means within ±{MAX_MEAN} and {channels} stds \
                     within {MIN_STD}..={MAX_MEAN}"
                ));
            }
        }
        Ok(())
    }
}

/// Bound on a normalisation mean (and std): pixel values are 0..=1.
pub const MAX_MEAN: f32 = 1e3;
/// Smallest normalisation std: a smaller one turns pixel steps into huge values.
pub const MIN_STD: f32 = 1e-3;

/// Checks a tensor table: no name twice within a graph and direction (in linear time), and every
/// shape non-empty with at most `max_elements` elements.
pub(crate) fn check_tensor_table(tensors: &[TensorSpec], max_elements: usize) -> std::result::Result<(), String> {
    let mut seen = std::collections::HashSet::with_capacity(tensors.len());
    for t in tensors {
        if !seen.insert((t.graph, t.direction, t.name.as_str())) {
            return Err(format!("tensor `{}` appears twice in the {:?} {:?} rows", t.name, t.graph, t.direction));
        }
        if t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none_or(|n| n == 0 || n > max_elements) {
            return Err(format!("tensor `{}` of shape {:?} is empty or too large", t.name, t.shape));
        }
    }
    Ok(())
}

/// Element type of a tensor or of a graph's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 8-bit integer (quantised).
    I8,
}

/// Which graph a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Graph {
    /// The encoder graph.
    Encoder,
    /// The decoder graph.
    Decoder,
}

/// Input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Fed to the graph.
    Input,
    /// Produced by the graph.
    Output,
}

/// One row of the tensor table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Graph the tensor belongs to.
    pub graph: Graph,
    /// Input or output.
    pub direction: Direction,
    /// ONNX name.
    pub name: String,
    /// Static shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
}

/// Precision of each graph's weights: `f32`; `f16` (weights stored as f16, each followed by a
/// Cast to f32: the CPU backend folds the casts at open and computes in f32, a GPU backend may
/// compute in f16); `i8` (QDQ: per-output-channel symmetric int8 weights and calibrated int8/uint8
/// activations, as ONNX QuantizeLinear/DequantizeLinear pairs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precision {
    /// Encoder precision.
    pub encoder: DType,
    /// Decoder precision.
    pub decoder: DType,
}

/// How an activation's int8 range was chosen from the calibration data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// The largest magnitude seen.
    Minmax,
    /// A high percentile of the magnitudes seen (clips rare outliers).
    Percentile,
    /// The clipping threshold whose int8 histogram is closest (KL divergence) to the float one.
    Entropy,
}

/// How an int8 engine's activation ranges were calibrated (recorded by `segicl-quantize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// How each range was chosen.
    pub method: CalibrationMethod,
    /// Image/mask pairs run through both graphs to collect the ranges.
    pub pairs: usize,
    /// Nodes left in float (weights and inputs not quantised), by ONNX node name.
    pub float_nodes: Vec<String>,
}

/// The manifest of an engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Side R of the square the encoder sees.
    pub resolution: usize,
    /// Channels C of the encoder's image input.
    pub channels: usize,
    /// How frames become channels.
    pub colour: ColourRule,
    /// How the resized frame is normalised.
    pub normalisation: Normalisation,
    /// Shots S in the decoder's context (always 3 in v1).
    pub max_shots: usize,
    /// Context tokens T per shot.
    pub tokens_per_shot: usize,
    /// Width D of a context token.
    pub token_width: usize,
    /// Default probability threshold for the mask.
    pub threshold: f32,
    /// Precision of each graph.
    pub precision: Precision,
    /// How activation ranges were calibrated; present when a graph is int8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Every input and output of both graphs.
    pub tensors: Vec<TensorSpec>,
    /// Names of the tasks whose default shots the SHOTS section holds.
    #[serde(default)]
    pub default_shot_tasks: Vec<String>,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            let kind = serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| v.get("kind").cloned());
            if kind.is_some_and(|k| k == "refiner") {
                Error::contract("manifest", "this is a refiner, not an in-context engine: give it as --refiner")
            } else {
                Error::contract("manifest", format!("not valid manifest JSON: {e}"))
            }
        })?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest always serialises")
    }

    /// The tensors of `graph` in `direction`, in table order.
    pub fn tensors(&self, graph: Graph, direction: Direction) -> impl Iterator<Item = &TensorSpec> {
        self.tensors.iter().filter(move |t| t.graph == graph && t.direction == direction)
    }

    /// The names of the features the encoder hands to the decoder (`feat_*`), in table order.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.tensors(Graph::Encoder, Direction::Output).filter(|t| t.name != "ctx").map(|t| t.name.as_str())
    }

    fn spec(&self, graph: Graph, direction: Direction, name: &str) -> Result<&TensorSpec> {
        self.tensors(graph, direction).find(|t| t.name == name).ok_or_else(|| {
            Error::contract("manifest", format!("tensor table has no {graph:?} {direction:?} named `{name}`"))
        })
    }

    /// Checks the fields against each other and against the model contract.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::contract("manifest", what));
        let (r, c, s, t, d) = (self.resolution, self.channels, self.max_shots, self.tokens_per_shot, self.token_width);
        if !(16..=MAX_RESOLUTION).contains(&r) {
            return bad(format!("resolution {r} is outside 16..={MAX_RESOLUTION}"));
        }
        if c != self.colour.channels() {
            return bad(format!(
                "colour rule {:?} gives {} channel(s) but channels is {c}",
                self.colour,
                self.colour.channels()
            ));
        }
        if s != MAX_SHOTS {
            return bad(format!("max_shots is {s}; format v1 fixes it at {MAX_SHOTS}"));
        }
        if t == 0 || d == 0 || t.checked_mul(d).is_none_or(|n| n > 1 << 20) {
            return bad(format!("tokens_per_shot {t} × token_width {d} is out of range"));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return bad(format!("threshold {} is not strictly between 0 and 1", self.threshold));
        }
        let int8 = self.precision.encoder == DType::I8 || self.precision.decoder == DType::I8;
        if int8 != self.calibration.is_some() {
            return bad("an int8 graph needs a calibration record, and only an int8 graph has one".into());
        }
        self.normalisation.check(c).or_else(bad)?;
        check_tensor_table(&self.tensors, 1 << 28).or_else(bad)?;
        let expect = |graph, direction, name: &str, shape: &[usize]| -> Result<()> {
            let spec = self.spec(graph, direction, name)?;
            if spec.shape != shape {
                return bad(format!("tensor `{name}` has shape {:?}, the contract needs {shape:?}", spec.shape));
            }
            if spec.dtype != DType::F32 {
                return bad(format!("tensor `{name}` is {:?}; graph inputs and outputs are f32", spec.dtype));
            }
            Ok(())
        };
        expect(Graph::Encoder, Direction::Input, "image", &[1, c, r, r])?;
        expect(Graph::Encoder, Direction::Input, "mask", &[1, 1, r, r])?;
        expect(Graph::Encoder, Direction::Output, "ctx", &[1, t, d])?;
        expect(Graph::Decoder, Direction::Input, "ctx", &[1, s * t, d])?;
        expect(Graph::Decoder, Direction::Input, "ctx_valid", &[1, s * t])?;
        expect(Graph::Decoder, Direction::Output, "logits", &[1, 1, r, r])?;
        if self.tensors(Graph::Encoder, Direction::Input).count() != 2 {
            return bad("the encoder takes exactly two inputs, `image` and `mask`".into());
        }
        if self.tensors(Graph::Decoder, Direction::Output).count() != 1 {
            return bad("the decoder has exactly one output, `logits`".into());
        }
        let mut features = 0;
        for feat in self.tensors(Graph::Encoder, Direction::Output).filter(|t| t.name != "ctx") {
            if !feat.name.starts_with("feat_") {
                return bad(format!("encoder output `{}` is neither `ctx` nor `feat_*`", feat.name));
            }
            expect(Graph::Decoder, Direction::Input, &feat.name, &feat.shape)?;
            features += 1;
        }
        if features == 0 {
            return bad("the encoder has no `feat_*` output".into());
        }
        if self.tensors(Graph::Decoder, Direction::Input).count() != features + 2 {
            return bad("decoder inputs must be the encoder's `feat_*` outputs, `ctx` and `ctx_valid`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(graph: Graph, direction: Direction, name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec { graph, direction, name: name.into(), shape: shape.to_vec(), dtype: DType::F32 }
    }

    fn manifest() -> Manifest {
        use Direction::*;
        use Graph::*;
        Manifest {
            name: "t".into(),
            version: "1".into(),
            resolution: 32,
            channels: 1,
            colour: ColourRule::Luma,
            normalisation: Normalisation::MinMax,
            max_shots: 3,
            tokens_per_shot: 2,
            token_width: 4,
            threshold: 0.5,
            precision: Precision { encoder: DType::F32, decoder: DType::F32 },
            calibration: None,
            tensors: vec![
                spec(Encoder, Input, "image", &[1, 1, 32, 32]),
                spec(Encoder, Input, "mask", &[1, 1, 32, 32]),
                spec(Encoder, Output, "ctx", &[1, 2, 4]),
                spec(Encoder, Output, "feat_0", &[1, 4, 32, 32]),
                spec(Decoder, Input, "feat_0", &[1, 4, 32, 32]),
                spec(Decoder, Input, "ctx", &[1, 6, 4]),
                spec(Decoder, Input, "ctx_valid", &[1, 6]),
                spec(Decoder, Output, "logits", &[1, 1, 32, 32]),
            ],
            default_shot_tasks: vec![],
        }
    }

    #[test]
    fn json_round_trip() {
        let m = manifest();
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn mismatches_name_the_tensor() {
        type Mutation = Box<dyn Fn(&mut Manifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("`ctx` has shape", Box::new(|m| m.tensors[2].shape = vec![1, 3, 4])),
            ("`feat_0` has shape", Box::new(|m| m.tensors[4].shape = vec![1, 5, 32, 32])),
            ("named `logits`", Box::new(|m| m.tensors[7].name = "out".into())),
            ("colour rule", Box::new(|m| m.channels = 3)),
            ("max_shots", Box::new(|m| m.max_shots = 4)),
            ("threshold", Box::new(|m| m.threshold = 1.5)),
            ("calibration record", Box::new(|m| m.precision.decoder = DType::I8)),
            ("too large", Box::new(|m| m.tensors[3].shape = vec![usize::MAX, 2, 1, 1])),
        ];
        for (needle, mutate) in cases {
            let mut m = manifest();
            mutate(&mut m);
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "expected `{needle}` in `{err}`");
        }
    }
}
