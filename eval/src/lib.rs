//! The tools' side of segicl, kept out of the runtime library that firmware links: synthetic
//! image/mask samples ([`synthetic`]), image/mask datasets on disk ([`dataset`]), Dice evaluation
//! of a session ([`evaluation`]) and the training-free baselines it is compared with
//! ([`baseline`]).

#![warn(missing_docs)]

pub mod baseline;
pub mod dataset;
pub mod evaluation;
pub mod synthetic;
