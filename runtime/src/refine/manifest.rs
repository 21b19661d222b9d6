//! The refiner's manifest (JSON in the MANIFEST section of a refiner file): identity, the input
//! contract (size, resize rule, colour, normalisation), the box convention and the tensor table
//! its two graphs are checked against.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{
    check_tensor_table, ColourRule, DType, Direction, Graph, Normalisation, Precision, TensorSpec, MAX_RESOLUTION,
};

/// Most elements the embedding between the two graphs may have (LiteMedSAM's is 256×64×64).
pub const MAX_EMBEDDING: usize = 1 << 24;

/// The `kind` field that marks a manifest as a refiner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A promptable segmenter that refines a mask from its box.
    Refiner,
}

/// How a frame is fitted into the refiner's square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// The longer side is resized to the input size, the aspect ratio kept; the rest of the square
    /// (bottom and right) is zero padding. Normalisation covers the resized frame only.
    LongestSide,
}

/// The manifest of a refiner file.
///
/// The encoder takes `image` [1, C, N, N] and gives `embedding` (any static shape); the decoder
/// takes `embedding` and `box` [1, 4] and gives `logits` [1, 1, M, M] (and optionally an IoU
/// estimate `iou` [1, 1]). A box is (x0, y0, x1, y1), the first and last foreground column and row,
/// in input pixels: frame pixels × N / max(frame width, height). The logits cover the input
/// square at M/N of its scale; their region over the resized frame is upsampled to the frame's size
/// and thresholded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefinerManifest {
    /// Always `refiner`: what tells a refiner file from an in-context engine.
    pub kind: Kind,
    /// Model name.
    pub name: String,
    /// Model version (and where it comes from).
    pub version: String,
    /// Side N of the square input.
    pub input_size: usize,
    /// How frames become channels.
    pub colour: ColourRule,
    /// How the resized frame is normalised.
    pub normalisation: Normalisation,
    /// How a frame is fitted into the square.
    pub resize: Resize,
    /// The margin the box gets by default on each side, as a fraction of its width (left and
    /// right) and height (top and bottom).
    pub box_margin: f32,
    /// Probability threshold of the refined mask.
    pub threshold: f32,
    /// Precision of each graph's weights: f32; f16 (weights stored as f16 with a Cast); i8 (the
    /// Conv/MatMul/Gemm weights as per-channel int8 read through DequantizeLinear, the others f16,
    /// activations in float). The CPU backend computes in f32 in every case.
    pub precision: Precision,
    /// Every input and output of both graphs.
    pub tensors: Vec<TensorSpec>,
}

impl RefinerManifest {
    /// Parses and checks a refiner manifest; an in-context engine's manifest is refused saying so.
    pub fn from_json(bytes: &[u8]) -> Result<RefinerManifest> {
        let m: RefinerManifest = serde_json::from_slice(bytes).map_err(|e| {
            let kind = serde_json::from_slice::<serde_json::Value>(bytes).ok().and_then(|v| v.get("kind").cloned());
            match kind {
                None => Error::contract(
                    "refiner manifest",
                    "this is an in-context engine, not a refiner (its manifest has no `\"kind\": \"refiner\"`): \
                     give it as --engine",
                ),
                Some(_) => Error::contract("refiner manifest", format!("not valid refiner manifest JSON: {e}")),
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

    /// The tensor `name` of `graph` in `direction` (the table is validated: the contract's tensors
    /// are there).
    pub fn spec(&self, graph: Graph, direction: Direction, name: &str) -> Option<&TensorSpec> {
        self.tensors(graph, direction).find(|t| t.name == name)
    }

    /// Side M of the square logits.
    pub fn output_size(&self) -> usize {
        self.spec(Graph::Decoder, Direction::Output, "logits").map_or(0, |t| t.shape[2])
    }

    /// Elements of the embedding the encoder hands to the decoder.
    pub fn embedding_len(&self) -> usize {
        self.spec(Graph::Encoder, Direction::Output, "embedding").map_or(0, |t| t.shape.iter().product())
    }

    /// Checks the fields against each other and against the refiner contract.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::contract("refiner manifest", what));
        let (n, c) = (self.input_size, self.colour.channels());
        if !(16..=MAX_RESOLUTION).contains(&n) {
            return bad(format!("input_size {n} is outside 16..={MAX_RESOLUTION}"));
        }
        if !(self.box_margin.is_finite() && (0.0..=1.0).contains(&self.box_margin)) {
            return bad(format!("box_margin {} is not a fraction between 0 and 1", self.box_margin));
        }
        if !(self.threshold > 0.0 && self.threshold < 1.0) {
            return bad(format!("threshold {} is not strictly between 0 and 1", self.threshold));
        }
        self.normalisation.check(c).or_else(bad)?;
        check_tensor_table(&self.tensors, MAX_EMBEDDING).or_else(bad)?;
        if let Some(t) = self.tensors.iter().find(|t| t.dtype != DType::F32) {
            return bad(format!("tensor `{}` is {:?}; graph inputs and outputs are f32", t.name, t.dtype));
        }
        let find = |graph, direction, name: &str| {
            self.spec(graph, direction, name).map(|t| &t.shape[..]).ok_or_else(|| {
                Error::contract(
                    "refiner manifest",
                    format!("tensor table has no {graph:?} {direction:?} named `{name}`"),
                )
            })
        };
        let image = find(Graph::Encoder, Direction::Input, "image")?;
        if image != [1, c, n, n] {
            return bad(format!("tensor `image` has shape {image:?}, the contract needs {:?}", [1, c, n, n]));
        }
        let embedding = find(Graph::Encoder, Direction::Output, "embedding")?;
        if find(Graph::Decoder, Direction::Input, "embedding")? != embedding {
            return bad("the decoder's `embedding` input must have the shape of the encoder's output".into());
        }
        let boxes = find(Graph::Decoder, Direction::Input, "box")?;
        if boxes != [1, 4] {
            return bad(format!("tensor `box` has shape {boxes:?}, the contract needs [1, 4]"));
        }
        let logits = find(Graph::Decoder, Direction::Output, "logits")?;
        if logits.len() != 4 || logits[..2] != [1, 1] || logits[2] != logits[3] || logits[2] > MAX_RESOLUTION {
            return bad(format!(
                "tensor `logits` has shape {logits:?}, the contract needs [1, 1, M, M], M ≤ {MAX_RESOLUTION}"
            ));
        }
        if let Some(iou) = self.spec(Graph::Decoder, Direction::Output, "iou") {
            if iou.shape != [1, 1] {
                return bad(format!("tensor `iou` has shape {:?}, the contract needs [1, 1]", iou.shape));
            }
        }
        let counts = [
            (Graph::Encoder, Direction::Input, 1, "the encoder takes exactly one input, `image`"),
            (Graph::Encoder, Direction::Output, 1, "the encoder has exactly one output, `embedding`"),
            (Graph::Decoder, Direction::Input, 2, "the decoder takes exactly `embedding` and `box`"),
        ];
        for (graph, direction, count, what) in counts {
            if self.tensors(graph, direction).count() != count {
                return bad(what.into());
            }
        }
        if self.tensors(Graph::Decoder, Direction::Output).any(|t| t.name != "logits" && t.name != "iou") {
            return bad("the decoder's outputs are `logits` and optionally `iou`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn spec(graph: Graph, direction: Direction, name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec { graph, direction, name: name.into(), shape: shape.to_vec(), dtype: DType::F32 }
    }

    /// A valid manifest with an input of `n` and logits of `m`.
    pub(crate) fn manifest(n: usize, m: usize) -> RefinerManifest {
        use Direction::*;
        use Graph::*;
        RefinerManifest {
            kind: Kind::Refiner,
            name: "t".into(),
            version: "1".into(),
            input_size: n,
            colour: ColourRule::Rgb,
            normalisation: Normalisation::MinMax,
            resize: Resize::LongestSide,
            box_margin: 0.05,
            threshold: 0.5,
            precision: Precision { encoder: DType::F32, decoder: DType::F32 },
            tensors: vec![
                spec(Encoder, Input, "image", &[1, 3, n, n]),
                spec(Encoder, Output, "embedding", &[1, 3, n, n]),
                spec(Decoder, Input, "embedding", &[1, 3, n, n]),
                spec(Decoder, Input, "box", &[1, 4]),
                spec(Decoder, Output, "logits", &[1, 1, m, m]),
            ],
        }
    }

    #[test]
    fn json_round_trip_and_sizes() {
        let m = manifest(32, 16);
        assert_eq!(RefinerManifest::from_json(&m.to_json()).unwrap(), m);
        assert_eq!((m.output_size(), m.embedding_len()), (16, 3 * 32 * 32));
    }

    #[test]
    fn mismatches_name_the_field_or_tensor() {
        type Mutation = Box<dyn Fn(&mut RefinerManifest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("`image` has shape", Box::new(|m| m.tensors[0].shape = vec![1, 1, 32, 32])),
            ("shape of the encoder's output", Box::new(|m| m.tensors[2].shape = vec![1, 4, 32, 32])),
            ("`box` has shape", Box::new(|m| m.tensors[3].shape = vec![1, 5])),
            ("`logits` has shape", Box::new(|m| m.tensors[4].shape = vec![1, 1, 16, 8])),
            ("input_size", Box::new(|m| m.input_size = 4)),
            ("box_margin", Box::new(|m| m.box_margin = f32::NAN)),
            ("threshold", Box::new(|m| m.threshold = 1.0)),
            ("too large", Box::new(|m| m.tensors[1].shape = vec![usize::MAX, 2])),
            (
                "mean_std",
                Box::new(|m| m.normalisation = Normalisation::MeanStd { mean: vec![0.0; 3], std: vec![1e-30; 3] }),
            ),
            ("named `box`", Box::new(|m| m.tensors[3].name = "boxes".into())),
        ];
        for (needle, mutate) in cases {
            let mut m = manifest(32, 16);
            mutate(&mut m);
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "expected `{needle}` in `{err}`");
        }
    }

    #[test]
    fn an_engine_manifest_is_told_apart() {
        let err = RefinerManifest::from_json(br#"{"name": "segicl-ref", "resolution": 128}"#).unwrap_err().to_string();
        assert!(err.contains("in-context engine, not a refiner"), "{err}");
        let err = RefinerManifest::from_json(br#"{"kind": "refiner", "name": 3}"#).unwrap_err().to_string();
        assert!(err.contains("not valid refiner manifest JSON"), "{err}");
    }
}
