//! Model builders for segicl-edge. Today: the training-free prototype engine
//! (`models/prototype.plan`), the classical few-shot baseline and the test fixture.

#![warn(missing_docs)]

pub mod onnx;
pub mod prototype;
