//! The refinement pass: a pretrained promptable segmenter (LiteMedSAM) redraws the boundary of
//! the in-context mask from a box around it. The in-context pass decides *what*, the refiner
//! *where the boundary is*.
//!
//! A refiner is a file of its own, in the engine container (header, section table, crc32 per
//! section; `docs/engine-format.md`) with a [`RefinerManifest`], the image encoder (ENCODER) and
//! the prompt and mask decoder (DECODER): one refiner serves every in-context engine (fp32,
//! fp16, int8). [`Refiner::open`] verifies it and prepares both graphs once; a
//! [`Session`](crate::Session) takes it with [`RefineOptions`] through
//! [`Session::set_refiner`](crate::Session::set_refiner).
//!
//! Per frame: pass 1 (and the ROI pass if on) → the boxes of the mask by a [`BoxRule`] (one, or
//! one per blob), grown by a margin → the refiner's encoder on the frame (its embedding is
//! memoised for a few recent frames) → the decoder once per box → inside the boxes the union of
//! the refined masks, outside them pass 1's mask, at the frame's own size. An empty pass-1 mask
//! stays empty. Which rule and margin, and whether to refine at all, is chosen per task on the
//! shots ([`gate`]).

pub mod boxes;
pub mod gate;
mod graphs;
pub mod manifest;
mod runner;

use std::path::Path;
use std::sync::Arc;

pub use boxes::{BoxRule, PixelBox};
pub use gate::{Candidate, GateReport};
pub use manifest::RefinerManifest;
pub(crate) use runner::RefineRunner;
pub use runner::RefineTimings;

use self::graphs::RefinerGraphs;
use crate::backend::BackendChoice;
use crate::engine::EngineOptions;
use crate::error::{Error, Result};
use crate::format::{EngineFile, Tag};

/// How a session refines its masks.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RefineOptions {
    /// The box rule used when the gate does not choose (one shot, or `gate` off) and tried first
    /// when it does.
    pub rule: BoxRule,
    /// The margin that goes with `rule`; `None`: the refiner's own (`box_margin` in its manifest).
    pub margin: Option<f32>,
    /// Choose the rule and margin per task on the shots, or switch refinement off for a task
    /// where it does not beat the first pass on them ([`gate`]). Off: always refine with `rule`
    /// and `margin`.
    pub gate: bool,
    /// Frames whose refiner embedding is kept (at least 1): a frame seen again (a shot, or the
    /// same frame with other shots) costs only the decoder. Each takes the embedding's size
    /// (4 MiB for LiteMedSAM) plus the frame's pixels.
    pub memo_frames: usize,
}

impl Default for RefineOptions {
    /// Largest blob with the refiner's margin, the gate on, 4 frames memoised (the shots and the
    /// frame).
    fn default() -> Self {
        RefineOptions { rule: BoxRule::LargestBlob, margin: None, gate: true, memo_frames: 4 }
    }
}

impl RefineOptions {
    /// Checks the margin and the memo size.
    pub fn check(&self) -> Result<()> {
        if let Some(m) = self.margin {
            if !(m.is_finite() && (0.0..=1.0).contains(&m)) {
                return Err(Error::invalid(format!(
                    "refine margin {m} is not a fraction between 0 and 1 of the box's size (e.g. 0.05)"
                )));
            }
        }
        if !(1..=4096).contains(&self.memo_frames) {
            return Err(Error::invalid(format!("refine memo of {} frames is outside 1..=4096", self.memo_frames)));
        }
        Ok(())
    }

    /// The session's own candidate: `rule` with `margin`, or the refiner's margin.
    pub fn candidate(&self, refiner: &Refiner) -> Candidate {
        Candidate { rule: self.rule, margin: self.margin.unwrap_or(refiner.manifest().box_margin) }
    }
}

/// A refiner file's metadata, verified but without its graphs loaded: for inspectors.
#[derive(Debug)]
pub struct RefinerMetadata {
    /// The verified file.
    pub file: EngineFile,
    /// Its manifest.
    pub manifest: RefinerManifest,
}

impl RefinerMetadata {
    /// Maps and verifies `path` and parses its manifest.
    pub fn open(path: &Path) -> Result<RefinerMetadata> {
        let file = EngineFile::open(path)?;
        let manifest = RefinerManifest::from_json(file.section(Tag::MANIFEST).expect("verified"))?;
        Ok(RefinerMetadata { file, manifest })
    }

    /// The model card (CARD section), if any.
    pub fn card(&self) -> Option<&str> {
        self.file.section(Tag::CARD).and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// A refiner ready to run; cheap to clone, shareable between threads and sessions.
#[derive(Clone)]
pub struct Refiner(Arc<Inner>);

struct Inner {
    file: EngineFile,
    manifest: RefinerManifest,
    graphs: RefinerGraphs,
}

impl std::fmt::Debug for Refiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refiner").field("path", &self.0.file.path()).field("model", &self.0.manifest.name).finish()
    }
}

impl Refiner {
    /// Maps and verifies `path`, checks both graphs against its manifest and prepares them on
    /// the CPU with tract (`options.threads` threads; the native executor does not run refiners
    /// yet), or, with `--backend tensorrt` (or `auto` in a build with TensorRT, when it opens),
    /// as TensorRT plans on the GPU. The CUDA backend does not run refiners: `--backend cuda` is
    /// refused saying why; `auto` runs the refiner on TensorRT or the CPU.
    pub fn open(path: impl AsRef<Path>, options: &EngineOptions) -> Result<Refiner> {
        let RefinerMetadata { file, manifest } = RefinerMetadata::open(path.as_ref())?;
        crate::engine::check_threads(options.threads)?;
        if options.backend == BackendChoice::Cuda {
            return Err(cuda_refusal(&file, &manifest));
        }
        let graphs = RefinerGraphs::prepare(&file, &manifest, options.backend, options.threads)?;
        log::info!(
            "opened refiner {} ({} {}, input {}², on the {})",
            file.path().display(),
            manifest.name,
            manifest.version,
            manifest.input_size,
            graphs.backend_name()
        );
        Ok(Refiner(Arc::new(Inner { file, manifest, graphs })))
    }

    /// The manifest.
    pub fn manifest(&self) -> &RefinerManifest {
        &self.0.manifest
    }

    /// Where the refiner was opened from.
    pub fn path(&self) -> &Path {
        self.0.file.path()
    }

    /// Its prepared graphs.
    pub(crate) fn graphs(&self) -> &RefinerGraphs {
        &self.0.graphs
    }

    /// Whether `other` is this refiner (the same opened file), not merely an equal one.
    pub(crate) fn same(&self, other: &Refiner) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Name of the backend its graphs run on (`cpu` or `tensorrt`).
    pub fn backend_name(&self) -> &'static str {
        self.0.graphs.backend_name()
    }
}

/// Why `--backend cuda` cannot take the refiner: the first op its plan does not lower, or, if
/// both graphs lower, that the CUDA runner has no refiner path yet.
#[cfg(any(feature = "cuda-12", feature = "cuda-13"))]
fn cuda_refusal(file: &EngineFile, manifest: &RefinerManifest) -> Error {
    use crate::manifest::{Direction, Graph};
    let advice = "use --backend cpu, or auto (the engine on the GPU, the refiner on the CPU)";
    for (graph, tag, name) in [(Graph::Encoder, Tag::ENCODER, "encoder"), (Graph::Decoder, Tag::DECODER, "decoder")] {
        let inputs: Vec<(&str, &[usize])> =
            manifest.tensors(graph, Direction::Input).map(|t| (t.name.as_str(), &t.shape[..])).collect();
        let bytes = file.section(tag).expect("verified files have both graphs");
        if let Err(e) = crate::backend::plan::lower(bytes, &inputs) {
            return Error::Backend { backend: "cuda", what: format!("the refiner's {name} cannot run: {e}; {advice}") };
        }
    }
    Error::Backend { backend: "cuda", what: format!("the CUDA backend does not run refiners yet; {advice}") }
}

#[cfg(not(any(feature = "cuda-12", feature = "cuda-13")))]
fn cuda_refusal(_: &EngineFile, _: &RefinerManifest) -> Error {
    Error::Backend {
        backend: "cuda",
        what: "this build has no CUDA backend (and the CUDA backend does not run refiners): use --backend cpu or auto"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Direction, Graph};

    /// `--backend tensorrt` opens the refiner on TensorRT or says why not; `auto` takes TensorRT
    /// where that opens and the CPU otherwise (in CI: no GPU, so the CPU).
    #[cfg(feature = "tract")]
    #[test]
    fn the_refiner_runs_on_tensorrt_where_it_opens_and_auto_falls_back_to_the_cpu() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/litemedsam-int8.refiner");
        let open = |backend| Refiner::open(&path, &EngineOptions { backend, threads: 1 });
        let on_tensorrt = match open(BackendChoice::TensorRt) {
            Ok(refiner) => refiner.backend_name() == "tensorrt",
            Err(e) => {
                let e = e.to_string();
                assert!(e.starts_with("backend tensorrt: "), "{e}");
                assert!(cfg!(feature = "tensorrt") || e.contains("this build has no TensorRT backend: build"), "{e}");
                false
            }
        };
        let auto = open(BackendChoice::Auto).unwrap();
        assert_eq!(auto.backend_name(), if on_tensorrt { "tensorrt" } else { "cpu" });
    }

    /// What `--backend cuda` says about the committed refiner (the CUDA plan is lowered without a
    /// GPU, so this runs everywhere): the first op of each graph the plan does not lower.
    #[test]
    fn the_committed_refiner_does_not_lower_to_the_gpu_plan() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/litemedsam-int8.refiner");
        let meta = RefinerMetadata::open(&path).unwrap();
        let first_unsupported =
            [(Graph::Encoder, Tag::ENCODER, "(op Erf)"), (Graph::Decoder, Tag::DECODER, "(op ScatterND)")];
        for (graph, tag, op) in first_unsupported {
            let inputs: Vec<(&str, &[usize])> =
                meta.manifest.tensors(graph, Direction::Input).map(|t| (t.name.as_str(), &t.shape[..])).collect();
            let err = crate::backend::plan::lower(meta.file.section(tag).unwrap(), &inputs).unwrap_err().to_string();
            assert!(err.contains(op), "{graph:?}: {err}");
        }
    }
}
