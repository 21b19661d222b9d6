//! segicl: in-context segmentation of medical frames from one to three example shots.
//!
//! Open an [`Engine`] (one file: encoder and decoder graphs, manifest, default shots), create a
//! [`Session`] per stream, set shots with [`Session::set_shot`], then call [`Session::segment`]
//! per frame: one encoder pass and one decoder pass, the shots' context served from a cache.
//! For small structures, [`Session::set_roi`] adds a second pass on a crop around the first
//! pass's prediction ([`roi`]); [`Session::set_refiner`] redraws the boundary with a pretrained
//! promptable segmenter from a box around the mask ([`refine`]).

#![warn(missing_docs)]

pub mod backend;
pub mod baseline;
pub mod cache;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod evaluation;
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
pub mod synthetic;

pub use backend::BackendChoice;
pub use engine::{Engine, EngineMetadata, EngineOptions};
pub use error::{Error, Result};
pub use image::{ImageView, MaskMut, OwnedImage, PixelFormat, Rect};
pub use refine::{BoxRule, RefineOptions, Refiner};
pub use roi::RoiOptions;
pub use session::{FrameTimings, Session, ShotUpdate};
