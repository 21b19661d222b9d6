//! A lowered graph with its constants on the device: the weights in the backend's storage
//! precision and the indices of its Gather steps, uploaded once and shared by every session.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits};

use super::{Element, ErrorContext};
use crate::backend::plan::{Op, Plan, ValueId, ValueKind, WeightData};
use crate::error::{Error, Result};

/// One graph's plan and device constants.
pub struct DeviceGraph<T> {
    /// `encoder` or `decoder`.
    pub name: &'static str,
    /// The steps and values.
    pub plan: Plan,
    /// The weights, by value.
    weights: HashMap<ValueId, CudaSlice<T>>,
    /// The indices of each Gather step, by step.
    indices: HashMap<usize, CudaSlice<i64>>,
}

impl<T: Element> DeviceGraph<T> {
    /// Converts the weights of `plan` to `T` and uploads them and the Gather indices on `stream`
    /// (the caller synchronises it).
    pub fn upload(name: &'static str, plan: Plan, stream: &Arc<CudaStream>) -> Result<Self> {
        let mut weights = HashMap::new();
        for (id, value) in plan.values.iter().enumerate() {
            let ValueKind::Weight(data) = &value.kind else { continue };
            let host: Vec<T> = match data {
                WeightData::F32(v) => v.iter().map(|&x| T::from_f32(x)).collect(),
                WeightData::F16(v) => v.iter().map(|&x| T::from_f16(x)).collect(),
                WeightData::I8(q) => q.to_f32().into_iter().map(T::from_f32).collect(),
            };
            if host.len() != value.len() {
                return Err(Error::contract(
                    name,
                    format!("weight value {id} holds {} numbers for shape {:?}", host.len(), value.shape),
                ));
            }
            weights.insert(id, upload(stream, &host)?);
        }
        let mut indices = HashMap::new();
        for (index, step) in plan.steps.iter().enumerate() {
            if let Op::Gather { indices: gathered, .. } = &step.op {
                let host: Vec<i64> = gathered.iter().map(|&i| i as i64).collect();
                indices.insert(index, upload(stream, &host)?);
            }
        }
        Ok(DeviceGraph { name, plan, weights, indices })
    }

    /// Device address of the weight `value`, if it is one.
    pub fn weight(&self, value: ValueId, stream: &CudaStream) -> Option<u64> {
        self.weights.get(&value).map(|w| address(w, stream))
    }

    /// Device address of the indices of the Gather step `step`, if it is one.
    pub fn indices(&self, step: usize, stream: &CudaStream) -> Option<u64> {
        self.indices.get(&step).map(|i| address(i, stream))
    }
}

/// Copies `data` into a new device buffer (of one zero when `data` is empty: CUDA allocates no
/// empty buffers).
pub fn upload<E: DeviceRepr + ValidAsZeroBits>(stream: &Arc<CudaStream>, data: &[E]) -> Result<CudaSlice<E>> {
    if data.is_empty() {
        return stream.alloc_zeros(1).context("allocating device memory");
    }
    stream.clone_htod(data).context("copying to the device")
}

/// The device address of `buffer`. The backend turns cudarc's event tracking off, so taking the
/// address records nothing.
pub fn address<E>(buffer: &CudaSlice<E>, stream: &CudaStream) -> u64 {
    buffer.device_ptr(stream).0
}
