//! An opened engine: the verified file, its manifest, default shots and prepared backend,
//! shared read-only by any number of sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::{self, BackendChoice};
use crate::error::{Error, Result};
use crate::format::{EngineFile, Tag};
use crate::manifest::Manifest;
use crate::session::Session;
use crate::shots::DefaultShots;

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Backend to run on.
    pub backend: BackendChoice,
    /// CPU threads for the graphs (1 = single-threaded).
    pub threads: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { backend: BackendChoice::Auto, threads: 1 }
    }
}

/// An engine ready to run; cheap to clone, shareable between threads.
#[derive(Clone)]
pub struct Engine(Arc<Inner>);

struct Inner {
    /// Where the file was read from: the file's bytes are dropped once the backend is prepared
    /// (the backends keep what they run; the manifest and default shots are parsed).
    path: PathBuf,
    manifest: Manifest,
    shots: DefaultShots,
    backend: Box<dyn backend::Backend>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.0.path)
            .field("model", &self.0.manifest.name)
            .field("backend", &self.0.backend.name())
            .finish()
    }
}

/// An engine file's metadata, verified but without any backend: for inspectors and packers.
#[derive(Debug)]
pub struct EngineMetadata {
    /// The verified file.
    pub file: EngineFile,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its default shots (empty if it has none).
    pub shots: DefaultShots,
}

impl EngineMetadata {
    /// Maps and verifies `path`, parses the manifest and default shots.
    pub fn open(path: &Path) -> Result<EngineMetadata> {
        let (file, manifest) = open_manifest(path)?;
        let shots = default_shots(&file, &manifest)?;
        Ok(EngineMetadata { file, manifest, shots })
    }

    /// The model card (CARD section), if any.
    pub fn card(&self) -> Option<&str> {
        self.file.section(Tag::CARD).and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// Reads and verifies the engine file at `path` and parses its manifest.
fn open_manifest(path: &Path) -> Result<(EngineFile, Manifest)> {
    let file = EngineFile::open(path)?;
    let manifest = Manifest::from_json(file.section(Tag::MANIFEST).expect("verified"))?;
    Ok((file, manifest))
}

/// Decodes the default shots of `file` (none without a SHOTS section) and checks that they are
/// the tasks `manifest` names.
fn default_shots(file: &EngineFile, manifest: &Manifest) -> Result<DefaultShots> {
    let shots = match file.section(Tag::SHOTS) {
        Some(bytes) => DefaultShots::from_bytes(bytes)?,
        None => DefaultShots::default(),
    };
    let stored: Vec<&str> = shots.names().collect();
    if stored != manifest.default_shot_tasks {
        return Err(Error::contract(
            "manifest",
            format!(
                "default_shot_tasks {:?} does not match the tasks in section SHOTS {stored:?}",
                manifest.default_shot_tasks
            ),
        ));
    }
    Ok(shots)
}

/// Most threads a graph may use: four per core of this machine, and never more than 256.
pub fn max_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (4 * cores).min(256)
}

/// Checks a thread count of [`EngineOptions`]: at least 1, at most [`max_threads`].
pub(crate) fn check_threads(threads: usize) -> Result<()> {
    let max = max_threads();
    if !(1..=max).contains(&threads) {
        return Err(Error::invalid(format!(
            "threads {threads} is outside 1..={max} (four per core of this machine, at most 256)"
        )));
    }
    Ok(())
}

impl Engine {
    /// Maps and verifies `path`, checks both graphs against the manifest and prepares the backend.
    pub fn open(path: impl AsRef<Path>, options: &EngineOptions) -> Result<Engine> {
        let (file, manifest) = open_manifest(path.as_ref())?;
        check_threads(options.threads)?;
        let backend = backend::prepare(options.backend, &file, &manifest, options.threads)?;
        // Decoded once the backend's temporaries are gone: they are never alive together.
        let shots = default_shots(&file, &manifest)?;
        log::info!(
            "opened {} ({} {}, R={}, backend {})",
            file.path().display(),
            manifest.name,
            manifest.version,
            manifest.resolution,
            backend.name()
        );
        let path = file.path().to_path_buf();
        Ok(Engine(Arc::new(Inner { path, manifest, shots, backend })))
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.0.manifest
    }

    /// Name of the backend the graphs run on.
    pub fn backend_name(&self) -> &'static str {
        self.0.backend.name()
    }

    /// The engine's default shots.
    pub fn default_shots(&self) -> &DefaultShots {
        &self.0.shots
    }

    /// Where the engine was opened from.
    pub fn path(&self) -> &Path {
        &self.0.path
    }

    /// A new session with its own context cache and buffers.
    pub fn session(&self) -> Result<Session> {
        Session::new(self.clone(), self.0.backend.runner()?)
    }
}
