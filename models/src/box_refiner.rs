//! A tiny stand-in refiner for tests: its "refined" mask is the box itself. Refinement then
//! helps exactly where the target fills its box (rectangles) and hurts where it does not (rings,
//! diagonals), which makes the per-task gate testable without the real refiner's cost.

use segicl::manifest::{ColourRule, DType, Direction, Graph, Normalisation, Precision, TensorSpec};
use segicl::pack::RefinerParts;
use segicl::refine::manifest::{Kind, RefinerManifest, Resize};

use crate::onnx::{Attr, GraphBuilder};

/// Side of the stand-in's square input and logits.
pub const SIDE: usize = 64;

/// Logit per pixel of distance from the box's edge.
const SLOPE: f32 = 8.0;

fn spec(graph: Graph, direction: Direction, name: &str, shape: &[usize]) -> TensorSpec {
    TensorSpec { graph, direction, name: name.into(), shape: shape.to_vec(), dtype: DType::F32 }
}

/// The manifest: input and logits of [`SIDE`]², the embedding the mean of the channels.
pub fn manifest() -> RefinerManifest {
    use Direction::*;
    use Graph::*;
    let n = SIDE;
    RefinerManifest {
        kind: Kind::Refiner,
        name: "box-fill".into(),
        version: "test".into(),
        input_size: n,
        colour: ColourRule::Rgb,
        normalisation: Normalisation::MinMax,
        resize: Resize::LongestSide,
        box_margin: 0.0,
        threshold: 0.5,
        precision: Precision { encoder: DType::F32, decoder: DType::F32 },
        tensors: vec![
            spec(Encoder, Input, "image", &[1, 3, n, n]),
            spec(Encoder, Output, "embedding", &[1, 1, n, n]),
            spec(Decoder, Input, "embedding", &[1, 1, n, n]),
            spec(Decoder, Input, "box", &[1, 4]),
            spec(Decoder, Output, "logits", &[1, 1, n, n]),
        ],
    }
}

/// The encoder: the mean of the three channels.
pub fn encoder() -> Vec<u8> {
    let n = SIDE;
    let mut g = GraphBuilder::new("box-fill-encoder");
    let image = g.input("image", &[1, 3, n, n]);
    let mean = g.op("ReduceMean", &[&image], vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(1))]);
    g.output(&mean, "embedding", &[1, 1, n, n]);
    g.finish()
}

/// The decoder: logit SLOPE × (distance of the pixel centre inside the box's edge), so the mask is
/// the box (x0..=x1, y0..=y1 in input pixels); the embedding enters with weight zero.
pub fn decoder() -> Vec<u8> {
    let n = SIDE;
    let mut g = GraphBuilder::new("box-fill-decoder");
    let embedding = g.input("embedding", &[1, 1, n, n]);
    let boxes = g.input("box", &[1, 4]);
    let columns = g.constant(&[1, 1, n, n], (0..n * n).map(|i| (i % n) as f32).collect());
    let rows = g.constant(&[1, 1, n, n], (0..n * n).map(|i| (i / n) as f32).collect());
    let corner = |g: &mut GraphBuilder, k: i64| {
        let index = g.ints(&[k]);
        g.op("Gather", &[&boxes, &index], vec![("axis", Attr::Int(1))])
    };
    let (x0, y0, x1, y1) = (corner(&mut g, 0), corner(&mut g, 1), corner(&mut g, 2), corner(&mut g, 3));
    let half = g.scalar(0.5);
    let inside = |g: &mut GraphBuilder, low: &str, high: &str, at: &str| {
        let from_low = g.op("Sub", &[at, low], vec![]);
        let to_high = g.op("Sub", &[high, at], vec![]);
        let nearer = g.op("Min", &[&from_low, &to_high], vec![]);
        g.op("Add", &[&nearer, &half], vec![])
    };
    let across = inside(&mut g, &x0, &x1, &columns);
    let down = inside(&mut g, &y0, &y1, &rows);
    let distance = g.op("Min", &[&across, &down], vec![]);
    let slope = g.scalar(SLOPE);
    let logits = g.op("Mul", &[&distance, &slope], vec![]);
    let zero = g.scalar(0.0);
    let unused = g.op("Mul", &[&embedding, &zero], vec![]);
    let logits = g.op("Add", &[&logits, &unused], vec![]);
    g.output(&logits, "logits", &[1, 1, n, n]);
    g.finish()
}

/// The stand-in refiner as a refiner file.
pub fn file() -> segicl::Result<Vec<u8>> {
    RefinerParts {
        manifest: manifest(),
        encoder: encoder(),
        decoder: decoder(),
        card: Some("# box-fill\nA test stand-in: the refined mask is the box.\n".into()),
    }
    .to_bytes()
}
