//! segicl: in-context segmentation of medical frames from one to three example shots.
//!
//! Open an [`Engine`] (one file: encoder and decoder graphs, manifest, default shots), create a
//! [`Session`] per stream, set shots with [`Session::set_shot`], then call [`Session::segment`]
//! per frame: one encoder pass and one decoder pass, the shots' context served from a cache.
//! For small structures, [`Session::set_roi`] adds a second pass on a crop around the first
//! pass's prediction ([`roi`]); [`Session::set_refiner`] redraws the boundary with a pretrained
//! promptable segmenter from a box around the mask ([`refine`]).
//!
//! This crate is what firmware links (through `segicl-ffi`): the engine format, the session, the
//! backends and nothing of the tools. The `tract` feature (on by default) adds the tract backend,
//! which also runs refiners; without it the CPU path is the native executor alone. Synthetic
//! samples, datasets, evaluation and baselines are in `segicl-eval`; the command line in
//! `segicl-edge`.

#![warn(missing_docs)]

pub mod backend;
pub mod cache;
pub mod engine;
pub mod error;
pub mod format;
pub mod guard;
pub mod image;
pub mod manifest;
pub mod metrics;
pub mod pack;
pub mod postprocess;
pub mod preprocess;
pub mod refine;
pub mod roi;
pub mod session;
pub mod shots;

pub use backend::BackendChoice;
pub use engine::{Engine, EngineMetadata, EngineOptions};
pub use error::{Error, Result};
pub use image::{ImageView, MaskMut, OwnedImage, PixelFormat, Rect};
pub use refine::{BoxRule, RefineOptions, Refiner};
pub use roi::RoiOptions;
pub use session::{FrameTimings, Session, ShotUpdate};
