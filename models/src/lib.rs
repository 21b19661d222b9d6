//! Model builders for segicl-edge: the training-free prototype engine (`models/prototype.plan`),
//! the classical few-shot baseline and the test fixture; and a stand-in refiner for tests.

#![warn(missing_docs)]

pub mod box_refiner;
pub mod onnx;
pub mod prototype;
