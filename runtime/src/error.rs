//! The one error type of the runtime: each variant says what is wrong and, where it can, what to do.

use std::path::PathBuf;

/// Result with the runtime's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, as one clear line each.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {reason}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said (in the message, not as a `source`, so that error
        /// chains print it once).
        reason: std::io::Error,
    },
    /// The file is damaged: a checksum, a bound or a structure does not hold.
    #[error("{}: corrupt engine file: {what}", path.display())]
    Corrupt {
        /// The engine file.
        path: PathBuf,
        /// What failed, naming the section or field.
        what: String,
    },
    /// The file is not an engine file; `hint` says what to run instead.
    #[error("{}: not a segicl engine file: {hint}", path.display())]
    NotAnEngine {
        /// The file.
        path: PathBuf,
        /// What it looks like and how to wrap it.
        hint: String,
    },
    /// The engine was written by a newer, incompatible format version.
    #[error("{}: engine format {major}.{minor} is not supported (this runtime reads {supported}.x); upgrade segicl-edge", path.display())]
    UnsupportedVersion {
        /// The engine file.
        path: PathBuf,
        /// Major version in the file.
        major: u16,
        /// Minor version in the file.
        minor: u16,
        /// Major version this runtime reads.
        supported: u16,
    },
    /// The manifest or a graph breaks the model contract.
    #[error("{graph}: {what}")]
    Contract {
        /// `manifest`, `encoder` or `decoder`.
        graph: &'static str,
        /// What does not match, naming the tensor.
        what: String,
    },
    /// An argument from the caller is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// `segment` was called before any shot was set.
    #[error("no shots: set at least one shot (image and mask) or use the engine's default shots before segmenting")]
    NoShots,
    /// A graph produced NaN or infinite values: the engine's weights are damaged or overflow.
    /// Nothing derived from them (a mask, a cached shot) is kept.
    #[error("{graph}: {what} hold NaN or infinite values; the engine's weights are damaged or overflow (rebuild or re-quantise it)")]
    NonFinite {
        /// The graph (`encoder`, `decoder`, `refiner decoder`).
        graph: &'static str,
        /// Its output (`the context tokens`, `the logits`).
        what: &'static str,
    },
    /// The requested backend cannot run here.
    #[error("backend {backend}: {what}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What failed and what to do.
        what: String,
    },
}

impl Error {
    /// `Ok` if every value of `values` (an output of `graph`) is finite, else [`Error::NonFinite`].
    pub fn check_finite(values: &[f32], graph: &'static str, what: &'static str) -> Result<()> {
        match values.iter().all(|v| v.is_finite()) {
            true => Ok(()),
            false => Err(Error::NonFinite { graph, what }),
        }
    }

    /// An [`Error::InvalidArgument`] with the given message.
    pub fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument(what.into())
    }

    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, reason: std::io::Error) -> Self {
        Error::Io { path: path.into(), reason }
    }

    /// An [`Error::Contract`] about `graph`.
    pub fn contract(graph: &'static str, what: impl Into<String>) -> Self {
        Error::Contract { graph, what: what.into() }
    }
}
