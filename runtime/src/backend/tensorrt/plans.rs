//! Plans: what one depends on ([`PlanKey`]), how one is stored with its key (a cache file or a
//! baked `TRT_*` section), the plan cache, and [`obtain`], which takes a baked or cached plan
//! whose key matches and TensorRT accepts, or builds one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::api::{PlanPrecision, Trt, TrtEngine};
use super::tensorrt_error as error;
use crate::error::Result;
use crate::format::{write_atomically, Tag};
use crate::manifest::Graph;

/// First bytes of a stored plan: then the key's length (u32, little-endian), the key (JSON) and
/// the plan.
const RECORD_MAGIC: &[u8; 8] = b"SEGTRTP1";

/// `encoder` or `decoder`.
pub fn graph_name(graph: Graph) -> &'static str {
    match graph {
        Graph::Encoder => "encoder",
        Graph::Decoder => "decoder",
    }
}

/// The section holding a graph's baked plan.
pub fn baked_tag(graph: Graph) -> Tag {
    match graph {
        Graph::Encoder => Tag::TRT_ENCODER,
        Graph::Decoder => Tag::TRT_DECODER,
    }
}

/// The GPU a plan was built for, and its driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceId {
    /// The device's name.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sms: i32,
    /// The driver's CUDA version (`cuDriverGetVersion`, 12060 for 12.6).
    pub driver: i32,
}

/// Everything a plan depends on: a plan is used only where its key equals the one wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanKey {
    /// Which graph.
    pub graph: Graph,
    /// CRC-32 of the graph's section.
    pub graph_crc: u32,
    /// The plan's precision (`f32`, `f16`, `int8`).
    pub precision: String,
    /// Builder options besides the precision.
    pub builder: String,
    /// TensorRT's product and version (`TensorRT 10.3.0.26`).
    pub tensorrt: String,
    /// The GPU.
    pub device: DeviceId,
}

impl PlanKey {
    /// One line for messages and `inspect`.
    pub fn summary(&self) -> String {
        let d = &self.device;
        format!(
            "{} crc {:08x}, {}, {}, {} on {} (sm_{}{}, {} SMs, driver {}.{})",
            graph_name(self.graph),
            self.graph_crc,
            self.precision,
            self.builder,
            self.tensorrt,
            d.name,
            d.compute_capability.0,
            d.compute_capability.1,
            d.sms,
            d.driver / 1000,
            d.driver % 1000 / 10
        )
    }

    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a key serialises")
    }
}

/// A plan stored with its key.
pub fn encode_record(key: &PlanKey, plan: &[u8]) -> Vec<u8> {
    let json = key.json();
    let mut out = Vec::with_capacity(12 + json.len() + plan.len());
    out.extend_from_slice(RECORD_MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(plan);
    out
}

/// The key and plan of a stored plan; damaged bytes are an error saying what is wrong.
pub fn decode_record(bytes: &[u8]) -> std::result::Result<(PlanKey, &[u8]), String> {
    if bytes.len() < 12 || &bytes[..8] != RECORD_MAGIC {
        return Err("not a stored TensorRT plan (no SEGTRTP1 header)".into());
    }
    let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    let json = bytes.get(12..12 + len).ok_or("its key runs past the end")?;
    let key = serde_json::from_slice(json).map_err(|e| format!("its key is unreadable: {e}"))?;
    Ok((key, &bytes[12 + len..]))
}

/// Where built plans and timing caches are kept between runs.
#[derive(Debug, Clone)]
pub struct PlanCache {
    dir: PathBuf,
}

/// The variable naming the plan cache's folder.
pub const CACHE_VARIABLE: &str = "SEGICL_TENSORRT_CACHE";

impl PlanCache {
    /// A cache in `dir` (created when a plan is first stored).
    pub fn new(dir: impl Into<PathBuf>) -> PlanCache {
        PlanCache { dir: dir.into() }
    }

    /// `SEGICL_TENSORRT_CACHE`, else `$XDG_CACHE_HOME/segicl/tensorrt`, else
    /// `~/.cache/segicl/tensorrt`; `None` when none of them is set.
    pub fn from_env() -> Option<PlanCache> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        var(CACHE_VARIABLE)
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("segicl/tensorrt")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/segicl/tensorrt")))
            .map(PlanCache::new)
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the plan for `key`.
    pub fn plan_path(&self, key: &PlanKey) -> PathBuf {
        self.dir.join(format!("{}-{:08x}.plan", graph_name(key.graph), crc32fast::hash(&key.json())))
    }

    /// The timing cache shared by every plan built with `key`'s TensorRT on its device.
    pub fn timing_path(&self, key: &PlanKey) -> PathBuf {
        let id = serde_json::to_vec(&(&key.tensorrt, &key.device)).expect("serialises");
        self.dir.join(format!("timing-{:08x}.cache", crc32fast::hash(&id)))
    }

    fn store(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| crate::error::Error::io(&self.dir, e))?;
        write_atomically(path, bytes)
    }
}

/// Where [`obtain`]'s plan came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The engine file's `TRT_*` section.
    Baked,
    /// The plan cache.
    Cached,
    /// Built now.
    Built,
}

/// How to build a plan when none fits.
pub struct BuildOptions {
    /// The builder's workspace limit in bytes.
    pub workspace: usize,
}

impl BuildOptions {
    /// The key's `builder` field.
    pub fn describe(&self) -> String {
        format!("workspace {} MiB", self.workspace >> 20)
    }
}

/// The stored plan `bytes` deserialized, if its key is `key` and TensorRT accepts it; else why not.
fn accept(trt: &Arc<Trt>, key: &PlanKey, bytes: &[u8]) -> std::result::Result<TrtEngine, String> {
    let (stored, plan) = decode_record(bytes)?;
    if stored != *key {
        return Err(format!("it is for {}, not {}", stored.summary(), key.summary()));
    }
    trt.deserialize(plan).map_err(|e| e.to_string())
}

/// A plan for `key`: the baked one if it matches and TensorRT accepts it, else the cached one
/// likewise, else one built from `onnx` (and stored in the cache, with the timing cache). Every
/// plan passed over is logged with the reason.
pub fn obtain(
    trt: &Arc<Trt>,
    key: &PlanKey,
    precision: PlanPrecision,
    onnx: &[u8],
    baked: Option<&[u8]>,
    cache: Option<&PlanCache>,
    options: &BuildOptions,
) -> Result<(TrtEngine, Origin)> {
    let graph = graph_name(key.graph);
    if let Some(bytes) = baked {
        match accept(trt, key, bytes) {
            Ok(engine) => return Ok((engine, Origin::Baked)),
            Err(why) => log::info!("tensorrt: not using the baked {graph} plan: {why}"),
        }
    }
    if let Some(cache) = cache {
        let path = cache.plan_path(key);
        if let Ok(bytes) = std::fs::read(&path) {
            match accept(trt, key, &bytes) {
                Ok(engine) => return Ok((engine, Origin::Cached)),
                Err(why) => log::info!("tensorrt: rebuilding the cached {graph} plan {}: {why}", path.display()),
            }
        }
    }
    for warning in clipping_warnings(onnx) {
        log::warn!("tensorrt: {graph}: {warning}");
    }
    let timing = cache.and_then(|c| std::fs::read(c.timing_path(key)).ok()).unwrap_or_default();
    let started = std::time::Instant::now();
    let built = trt.build(onnx, precision, options.workspace, &timing)?;
    log::info!(
        "tensorrt: built the {graph} plan ({} {}, {:.1} s, {} KiB)",
        key.tensorrt,
        key.precision,
        started.elapsed().as_secs_f32(),
        built.plan.len() >> 10
    );
    for warning in &built.warnings {
        log::debug!("tensorrt: {graph}: {warning}");
    }
    let engine = trt.deserialize(&built.plan)?;
    if let Some(cache) = cache {
        let stored = cache.store(&cache.plan_path(key), &encode_record(key, &built.plan)).and_then(|()| {
            if built.timing_cache.is_empty() {
                Ok(())
            } else {
                cache.store(&cache.timing_path(key), &built.timing_cache)
            }
        });
        if let Err(e) = stored {
            log::warn!("tensorrt: the {graph} plan is not cached ({e}); it will be built again next time");
        }
    }
    Ok((engine, Origin::Built))
}

/// The QuantizeLinear nodes of `onnx` that TensorRT would clip: TensorRT imports every
/// QuantizeLinear as symmetric int8 with the graph's scale, so a uint8 one (or one with a zero
/// point other than 0) loses the upper half of its range. Empty for graphs that are not QDQ or
/// do not parse.
pub fn clipping_warnings(onnx: &[u8]) -> Vec<String> {
    use crate::backend::onnx::ModelProto;
    let Some(graph) = ModelProto::decode_bytes(onnx).ok().and_then(|m| m.graph) else {
        return Vec::new();
    };
    let zero_points: std::collections::HashMap<&str, _> =
        graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .filter_map(|n| {
            let name = if n.name.is_empty() { n.output.first().map_or("?", String::as_str) } else { &n.name };
            let zero = n.input.get(2).filter(|z| !z.is_empty())?;
            let Some(t) = zero_points.get(zero.as_str()) else {
                return Some(format!("QuantizeLinear `{name}` has a zero point computed at run time"));
            };
            let nonzero = t.raw_data.iter().any(|&b| b != 0) || t.int32_data.iter().any(|&v| v != 0);
            match t.data_type {
                UINT8 => Some(format!(
                    "QuantizeLinear `{name}` is uint8: TensorRT reads it as symmetric int8 with the same scale, \
                     so values above half its range are clipped (requantise with a current segicl-quantize)"
                )),
                _ if nonzero => Some(format!(
                    "QuantizeLinear `{name}` has a nonzero zero point: TensorRT supports symmetric int8 only"
                )),
                _ => None,
            }
        })
        .collect()
}

/// ONNX's `TensorProto.DataType` for uint8.
const UINT8: i32 = 2;

/// A plan baked into an engine file, as `inspect` and `verify` show it.
#[derive(Debug)]
pub struct Baked {
    /// Its graph.
    pub graph: Graph,
    /// Its key, or why it cannot be read.
    pub key: std::result::Result<PlanKey, String>,
    /// Bytes of the plan (with its key).
    pub len: usize,
    /// CRC-32 of the engine's section of that graph.
    pub graph_crc: Option<u32>,
}

impl Baked {
    /// What is wrong with it: unreadable, or baked from another graph than the file's.
    pub fn problem(&self) -> Option<String> {
        match &self.key {
            Err(why) => Some(why.clone()),
            Ok(key) if Some(key.graph_crc) != self.graph_crc => Some(format!(
                "it was built from a {} graph with crc {:08x}, the file's is {}",
                graph_name(self.graph),
                key.graph_crc,
                self.graph_crc.map_or("missing".into(), |c| format!("{c:08x}"))
            )),
            Ok(_) => None,
        }
    }
}

/// The plans baked into `file` (none for most engines).
pub fn baked(file: &crate::format::EngineFile) -> Vec<Baked> {
    [(Graph::Encoder, Tag::ENCODER), (Graph::Decoder, Tag::DECODER)]
        .into_iter()
        .filter_map(|(graph, source)| {
            let bytes = file.section(baked_tag(graph))?;
            let graph_crc = file.layout().find(source).map(|s| s.crc32);
            Some(Baked { graph, key: decode_record(bytes).map(|(key, _)| key), len: bytes.len(), graph_crc })
        })
        .collect()
}

/// The key of the stored plan `bytes` (a baked section), or what is wrong with it.
pub fn record_key(bytes: &[u8]) -> Result<PlanKey> {
    decode_record(bytes).map(|(key, _)| key).map_err(error)
}
