//! Mutations of a valid engine file, one class at a time, each written back with every checksum
//! recomputed so that the parser's deeper checks (and the graph loader) see the damage.

use std::path::Path;

use prost::Message;
use rand::seq::{IndexedMutRandom, IndexedRandom};
use rand::{Rng, RngCore};
use segicl::format::{EngineWriter, Layout, Tag, ENTRY_LEN, HEADER_LEN};
use tract_onnx::pb;

/// What part of the file a case damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Header and section table fields (both checksums recomputed).
    Container,
    /// The manifest's JSON: values, keys and structure.
    Manifest,
    /// The SHOTS payload: counts, sizes, formats, names, pixels.
    Shots,
    /// The ONNX protobuf of the encoder or the decoder: nodes, attributes, initializers, shapes.
    Onnx,
}

impl Class {
    /// Every class, in the order cases cycle through them.
    pub const ALL: [Class; 4] = [Class::Container, Class::Manifest, Class::Shots, Class::Onnx];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Class::Container => "container",
            Class::Manifest => "manifest",
            Class::Shots => "shots",
            Class::Onnx => "onnx",
        }
    }
}

/// A verified engine file to mutate: its bytes and sections.
pub struct Base {
    /// The file's name, for reports.
    pub name: String,
    bytes: Vec<u8>,
    sections: Vec<(Tag, u32, Vec<u8>)>,
}

impl Base {
    /// Reads and verifies `path`.
    pub fn open(path: &Path) -> anyhow::Result<Base> {
        let bytes = std::fs::read(path)?;
        let layout = Layout::verify(&bytes, path)?;
        let sections = layout
            .sections
            .iter()
            .map(|s| (s.tag, s.flags, bytes[s.offset as usize..(s.offset + s.length) as usize].to_vec()))
            .collect();
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Base { name, bytes, sections })
    }

    /// A damaged copy of the file: 1 to 3 mutations of `class`, checksums recomputed.
    pub fn mutate(&self, class: Class, rng: &mut impl Rng) -> Vec<u8> {
        let rounds = rng.random_range(1..=3);
        match class {
            Class::Container => {
                let mut bytes = self.bytes.clone();
                for _ in 0..rounds {
                    container(&mut bytes, rng);
                }
                reseal(&mut bytes);
                bytes
            }
            Class::Manifest => self.with_section(Tag::MANIFEST, rng, |payload, rng| {
                let mut value: serde_json::Value = serde_json::from_slice(payload).expect("a verified manifest");
                for _ in 0..rounds {
                    json(&mut value, rng, 0);
                }
                *payload = serde_json::to_vec(&value).expect("JSON serialises");
            }),
            Class::Shots => self.with_section(Tag::SHOTS, rng, |payload, rng| {
                for _ in 0..rounds {
                    shots(payload, rng);
                }
            }),
            Class::Onnx => {
                let tag = if rng.random_bool(0.5) { Tag::ENCODER } else { Tag::DECODER };
                self.with_section(tag, rng, |payload, rng| {
                    if rng.random_bool(0.1) {
                        flip_bytes(payload, rng);
                        return;
                    }
                    let mut model = pb::ModelProto::decode(&payload[..]).expect("a verified graph decodes");
                    if let Some(graph) = model.graph.as_mut() {
                        for _ in 0..rounds {
                            onnx(graph, rng);
                        }
                    }
                    *payload = model.encode_to_vec();
                })
            }
        }
    }

    /// The file with section `tag` changed by `f` (another random section when it has none),
    /// laid out again by the writer.
    fn with_section(&self, tag: Tag, rng: &mut impl Rng, f: impl FnOnce(&mut Vec<u8>, &mut dyn RngCore)) -> Vec<u8> {
        let mut sections = self.sections.clone();
        let index = match sections.iter().position(|(t, _, _)| *t == tag) {
            Some(i) => i,
            None => rng.random_range(0..sections.len()),
        };
        f(&mut sections[index].2, rng);
        sections
            .into_iter()
            .fold(EngineWriter::new(), |w, (tag, flags, payload)| w.section_with_flags(tag, flags, payload))
            .to_bytes()
    }
}

/// Recomputes the table and header checksums of `bytes` where the header and table still fit.
fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    let count = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    let table_end = HEADER_LEN.saturating_add(count.saturating_mul(ENTRY_LEN));
    if table_end <= bytes.len() {
        let crc = crc32fast::hash(&bytes[HEADER_LEN..table_end]);
        bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Values that break bounds: zero, one, minus one, powers of two around common limits, maxima.
fn extreme_u64(rng: &mut (impl Rng + ?Sized)) -> u64 {
    *[0, 1, 2, 3, 4095, 4096, 4097, 1 << 16, 1 << 31, 1 << 32, 1 << 40, u32::MAX as u64, u64::MAX, u64::MAX - 4095]
        .choose(rng)
        .unwrap()
}

fn container(bytes: &mut Vec<u8>, rng: &mut impl Rng) {
    if bytes.len() < HEADER_LEN {
        // An earlier round cut the header short: there are no fields left to damage, only the
        // length.
        let len = bytes.len();
        bytes.resize(rng.random_range(0..=len + 64), 0);
        return;
    }
    let count = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    let table_end = (HEADER_LEN + count * ENTRY_LEN).min(bytes.len());
    match rng.random_range(0..6) {
        // A bit anywhere in the header or table.
        0 => {
            let at = rng.random_range(0..table_end);
            bytes[at] ^= 1 << rng.random_range(0..8);
        }
        // A section's offset or length set to an extreme or nudged.
        1 | 2 => {
            let entry = HEADER_LEN + rng.random_range(0..count.max(1)) * ENTRY_LEN;
            let field = entry + if rng.random_bool(0.5) { 8 } else { 16 };
            if field + 8 <= bytes.len() {
                let old = u64::from_le_bytes(bytes[field..field + 8].try_into().unwrap());
                let new =
                    if rng.random_bool(0.5) { extreme_u64(rng) } else { old.wrapping_add(rng.random_range(1..9000)) };
                bytes[field..field + 8].copy_from_slice(&new.to_le_bytes());
            }
        }
        // Header fields: count, alignment, file length, version, flags.
        3 => {
            let (at, width) = *[(8, 2), (10, 2), (12, 4), (16, 4), (20, 4), (24, 8)].choose(rng).unwrap();
            let v = extreme_u64(rng).to_le_bytes();
            bytes[at..at + width].copy_from_slice(&v[..width]);
        }
        // A tag or flags of an entry.
        4 => {
            let entry = HEADER_LEN + rng.random_range(0..count.max(1)) * ENTRY_LEN;
            let at = entry + if rng.random_bool(0.5) { rng.random_range(0..8) } else { 28 };
            if at < bytes.len() {
                bytes[at] = rng.random();
            }
        }
        // Truncated or extended (the header's length kept or updated).
        _ => {
            let len = bytes.len();
            let new_len = if rng.random_bool(0.5) { rng.random_range(0..len) } else { len + rng.random_range(1..5000) };
            bytes.resize(new_len, 0);
            if rng.random_bool(0.5) && bytes.len() >= 32 {
                let n = bytes.len() as u64;
                bytes[24..32].copy_from_slice(&n.to_le_bytes());
            }
        }
    }
}

fn flip_bytes(payload: &mut [u8], rng: &mut (impl Rng + ?Sized)) {
    for _ in 0..rng.random_range(1..=8) {
        if payload.is_empty() {
            return;
        }
        let at = rng.random_range(0..payload.len());
        payload[at] = rng.random();
    }
}

/// Numbers a manifest field should refuse or survive.
fn odd_number(rng: &mut (impl Rng + ?Sized)) -> serde_json::Value {
    let f: f64 = *[0.0, -0.0, -1.0, 0.5, 1.0, 1e-45, 1e-38, 1e38, 3.4e38, 1e308, -1e308, 1e-320].choose(rng).unwrap();
    let i: i64 = *[0, -1, 1, 2, 3, 4, 16, 127, 128, 2049, 4096, 1 << 20, 1 << 31, 1 << 40, i64::MAX, i64::MIN]
        .choose(rng)
        .unwrap();
    if rng.random_bool(0.5) {
        serde_json::json!(f)
    } else {
        serde_json::json!(i)
    }
}

fn json(value: &mut serde_json::Value, rng: &mut (impl Rng + ?Sized), depth: usize) {
    use serde_json::Value;
    let descend = depth < 6 && rng.random_bool(0.75);
    match value {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = keys.choose(rng).unwrap().clone();
            if descend {
                json(map.get_mut(&key).unwrap(), rng, depth + 1);
            } else {
                match rng.random_range(0..3) {
                    0 => {
                        map.remove(&key);
                    }
                    1 => {
                        let v = map.remove(&key).unwrap();
                        map.insert(format!("{key}_"), v);
                    }
                    _ => *map.get_mut(&key).unwrap() = odd_number(rng),
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.random_range(0..items.len());
            if descend {
                json(&mut items[i], rng, depth + 1);
            } else {
                match rng.random_range(0..4) {
                    0 => {
                        items.remove(i);
                    }
                    1 => {
                        let v = items[i].clone();
                        items.insert(i, v);
                    }
                    2 => items.extend(std::iter::repeat_n(items[i].clone(), rng.random_range(1..2000))),
                    _ => items[i] = odd_number(rng),
                }
            }
        }
        Value::String(s) => {
            *s = [String::new(), "x".repeat(10_000), "feat_9".into(), "ctx".into(), "logits".into(), "\u{0}".into()]
                .choose(rng)
                .unwrap()
                .clone()
        }
        other => *other = if rng.random_bool(0.8) { odd_number(rng) } else { Value::Null },
    }
}

fn shots(payload: &mut Vec<u8>, rng: &mut (impl Rng + ?Sized)) {
    match rng.random_range(0..4) {
        0 => flip_bytes(payload, rng),
        // A u32 field (count, name length, format, width, height) at a 4-byte boundary.
        1 | 2 => {
            if payload.len() >= 4 {
                let at = rng.random_range(0..payload.len() / 4) * 4;
                let v = extreme_u64(rng) as u32;
                payload[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => {
            let new_len = if rng.random_bool(0.5) {
                rng.random_range(0..=payload.len())
            } else {
                payload.len() + rng.random_range(1..100)
            };
            payload.resize(new_len, 0);
        }
    }
}

const OPS: [&str; 24] = [
    "Relu",
    "Add",
    "Mul",
    "MatMul",
    "Conv",
    "Reshape",
    "Transpose",
    "Concat",
    "Gather",
    "Expand",
    "ConstantOfShape",
    "Range",
    "Resize",
    "Softmax",
    "ReduceSum",
    "Slice",
    "Squeeze",
    "Unsqueeze",
    "Div",
    "Sqrt",
    "Log",
    "Tile",
    "Pad",
    "Identity",
];

fn odd_int(rng: &mut (impl Rng + ?Sized)) -> i64 {
    *[-1, 0, 1, 2, 3, 7, 64, 1 << 20, 1 << 31, 1 << 40, -(1 << 40), i64::MAX, i64::MIN].choose(rng).unwrap()
}

fn odd_float(rng: &mut (impl Rng + ?Sized)) -> f32 {
    *[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e38, -1e38, 1e-45, 0.0, -0.0].choose(rng).unwrap()
}

fn onnx(graph: &mut pb::GraphProto, rng: &mut (impl Rng + ?Sized)) {
    let n = graph.node.len();
    match rng.random_range(0..10) {
        // Another op in a node's place.
        0 if n > 0 => graph.node[rng.random_range(0..n)].op_type = OPS.choose(rng).unwrap().to_string(),
        // A node's input rewired to another value, or to a value nobody produces.
        1 if n > 0 => {
            let from = rng.random_range(0..n);
            let to = rng.random_range(0..n);
            let name = match (rng.random_bool(0.8), graph.node[from].output.first()) {
                (true, Some(out)) => out.clone(),
                _ => "nowhere".to_string(),
            };
            let inputs = &mut graph.node[to].input;
            if inputs.is_empty() {
                inputs.push(name);
            } else {
                let i = rng.random_range(0..inputs.len());
                inputs[i] = name;
            }
        }
        // A node removed or duplicated.
        2 if n > 0 => {
            graph.node.remove(rng.random_range(0..n));
        }
        3 if n > 0 => {
            let node = graph.node[rng.random_range(0..n)].clone();
            graph.node.insert(rng.random_range(0..=n), node);
        }
        // An attribute's value.
        4 | 5 if n > 0 => {
            let node = &mut graph.node[rng.random_range(0..n)];
            if let Some(a) = node.attribute.choose_mut(rng) {
                if !a.ints.is_empty() {
                    let i = rng.random_range(0..a.ints.len());
                    a.ints[i] = odd_int(rng);
                } else if !a.floats.is_empty() {
                    let i = rng.random_range(0..a.floats.len());
                    a.floats[i] = odd_float(rng);
                } else {
                    a.i = odd_int(rng);
                    a.f = odd_float(rng);
                }
            }
        }
        // An initializer: a value (shape constants, weights), its dims, or its raw bytes.
        6 | 7 if !graph.initializer.is_empty() => {
            let t = graph.initializer.choose_mut(rng).unwrap();
            match rng.random_range(0..4) {
                0 if !t.int64_data.is_empty() => {
                    let i = rng.random_range(0..t.int64_data.len());
                    t.int64_data[i] = odd_int(rng);
                }
                1 if !t.float_data.is_empty() => {
                    let i = rng.random_range(0..t.float_data.len());
                    t.float_data[i] = odd_float(rng);
                }
                2 if !t.dims.is_empty() => {
                    let i = rng.random_range(0..t.dims.len());
                    t.dims[i] = odd_int(rng);
                }
                _ => flip_bytes(&mut t.raw_data, rng),
            }
        }
        // A declared input or output shape.
        8 => {
            let values = if rng.random_bool(0.5) { &mut graph.input } else { &mut graph.output };
            if let Some(v) = values.choose_mut(rng) {
                if let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
                    if let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.choose_mut(rng)) {
                        dim.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(odd_int(rng)));
                    }
                }
            }
        }
        // A long chain of cheap nodes on one value.
        _ if n > 0 => {
            let node = graph.node[rng.random_range(0..n)].clone();
            if let Some(out) = node.output.first().cloned() {
                for k in 0..rng.random_range(10..3000) {
                    let input = if k == 0 { out.clone() } else { format!("{out}_chain{}", k - 1) };
                    graph.node.push(pb::NodeProto {
                        input: vec![input],
                        output: vec![format!("{out}_chain{k}")],
                        op_type: "Relu".into(),
                        name: format!("chain{k}"),
                        ..Default::default()
                    });
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_class_changes_the_prototype_and_keeps_the_checksums_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/prototype.plan");
        let base = Base::open(&path).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for class in Class::ALL {
            let mut changed = 0;
            for _ in 0..50 {
                let bytes = base.mutate(class, &mut rng);
                changed += usize::from(bytes != base.bytes);
                if class != Class::Container {
                    // The writer lays the damaged payload out again: the container itself is sound.
                    Layout::verify(&bytes, &path).unwrap();
                }
            }
            assert!(changed >= 40, "{}: only {changed} of 50 cases differ", class.name());
        }
    }

    /// A round after one that cut the file shorter than its header (the fuzzer itself panicked
    /// on such a case after 41,426 cases of a long run).
    #[test]
    fn container_rounds_after_a_cut_header_do_not_panic() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for len in 0..HEADER_LEN + 40 {
            for _ in 0..50 {
                let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                container(&mut bytes, &mut rng);
            }
        }
    }
}
