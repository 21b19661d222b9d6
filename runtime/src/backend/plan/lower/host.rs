//! Constant tensors held on the host while lowering: decoding ONNX tensors, and evaluating the
//! nodes whose inputs are all constant (shape arithmetic, casts, data movement, element-wise
//! arithmetic). Errors are plain messages; the caller names the node.

use half::f16;

use super::{broadcast_shapes, broadcast_strides, row_major_strides, unravel};
use crate::backend::limits::check_len;
use crate::backend::onnx::{self as pb, DataType};
use crate::backend::plan::{BinaryKind, Int8, Op, WeightData};

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Host {
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its elements, row-major.
    pub data: Data,
}

/// Constant contents. Integer and boolean tensors are held as i64 (booleans as 0 / 1). Float
/// tensors are f32, or f16 where the engine stored them so: either way their elements are read as
/// floats, and a Cast between the two float types only changes the storage.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Data {
    /// float, double.
    F32(Vec<f32>),
    /// float16.
    F16(Vec<f16>),
    /// Every integer type and bool.
    I64(Vec<i64>),
    /// Floats held as int8 values and scales (a dequantised int8 weight), kept so for executors
    /// with int8 kernels.
    I8(Int8),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::I8(q) => q.values.len(),
        }
    }

    /// The elements as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            Data::F32(v) => v.clone(),
            Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Data::I8(q) => q.to_f32(),
        }
    }

    /// The elements of an integer tensor; `None` for floats.
    pub fn ints(&self) -> Option<&[i64]> {
        match self {
            Data::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The contents as plan weights; `None` for integer tensors, which the plan does not compute on.
    pub fn weight(&self) -> Option<WeightData> {
        match self {
            Data::F32(v) => Some(WeightData::F32(v.clone())),
            Data::F16(v) => Some(WeightData::F16(v.clone())),
            Data::I8(q) => Some(WeightData::I8(q.clone())),
            Data::I64(_) => None,
        }
    }

    /// Element `map[i]` of self for every i, `fill` where the map has none.
    fn pick(&self, map: &[Option<usize>], fill: f32) -> Data {
        match self {
            Data::F32(v) => Data::F32(map.iter().map(|i| i.map_or(fill, |i| v[i])).collect()),
            Data::F16(v) => Data::F16(map.iter().map(|i| i.map_or(f16::from_f32(fill), |i| v[i])).collect()),
            Data::I64(v) => Data::I64(map.iter().map(|i| i.map_or(fill as i64, |i| v[i])).collect()),
            Data::I8(_) => Data::F32(self.to_f32()).pick(map, fill),
        }
    }
}

impl Host {
    /// A float scalar.
    pub fn scalar(value: f32) -> Host {
        Host { shape: Vec::new(), data: Data::F32(vec![value]) }
    }

    /// A 1-D integer tensor.
    pub fn ints(values: Vec<i64>) -> Host {
        Host { shape: vec![values.len()], data: Data::I64(values) }
    }

    /// Decodes an ONNX tensor (elements inline or in `raw_data`, little-endian).
    pub fn decode(t: &pb::TensorProto) -> Result<Host, String> {
        if !t.external_data.is_empty() || t.data_location == Some(pb::DATA_LOCATION_EXTERNAL) {
            return Err("its data is in an external file".into());
        }
        let shape = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("negative dimension {d}")))
            .collect::<Result<Vec<_>, _>>()?;
        let dtype = DataType::try_from(t.data_type).map_err(|_| format!("unknown element type {}", t.data_type))?;
        let raw = &t.raw_data;
        let data = match dtype {
            DataType::Float if raw.is_empty() => Data::F32(t.float_data.clone()),
            DataType::Float => {
                Data::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DataType::Double if raw.is_empty() => Data::F32(t.double_data.iter().map(|&x| x as f32).collect()),
            DataType::Double => Data::F32(
                raw.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect(),
            ),
            DataType::Float16 if raw.is_empty() => {
                Data::F16(t.int32_data.iter().map(|&b| f16::from_bits(b as u16)).collect())
            }
            DataType::Float16 => Data::F16(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()),
            _ => Data::I64(decode_ints(t, dtype)?),
        };
        if data.len() != shape.iter().product::<usize>() {
            return Err(format!("{} elements for shape {shape:?}", data.len()));
        }
        Ok(Host { shape, data })
    }

    /// The value of a one-element tensor as f32.
    pub fn scalar_f32(&self) -> Option<f32> {
        (self.data.len() == 1).then(|| self.data.to_f32()[0])
    }
}

/// The elements of an integer or boolean ONNX tensor.
fn decode_ints(t: &pb::TensorProto, dtype: DataType) -> Result<Vec<i64>, String> {
    let (width, signed) = match dtype {
        DataType::Int8 => (1, true),
        DataType::Uint8 | DataType::Bool => (1, false),
        DataType::Int16 => (2, true),
        DataType::Uint16 => (2, false),
        DataType::Int32 => (4, true),
        DataType::Uint32 => (4, false),
        DataType::Int64 => (8, true),
        DataType::Uint64 => (8, false),
        other => return Err(format!("element type {other:?} is not supported")),
    };
    if !t.raw_data.is_empty() {
        return Ok(t.raw_data.chunks_exact(width).map(|c| int_from_le(c, signed)).collect());
    }
    Ok(match dtype {
        DataType::Int64 => t.int64_data.clone(),
        DataType::Uint32 | DataType::Uint64 => t.uint64_data.iter().map(|&x| x as i64).collect(),
        _ => t.int32_data.iter().map(|&x| i64::from(x)).collect(),
    })
}

/// A little-endian integer of 1 to 8 bytes.
fn int_from_le(bytes: &[u8], signed: bool) -> i64 {
    let mut word = [0u8; 8];
    word[..bytes.len()].copy_from_slice(bytes);
    let value = u64::from_le_bytes(word);
    let unused = 64 - 8 * bytes.len() as u32;
    if signed {
        ((value << unused) as i64) >> unused
    } else {
        value as i64
    }
}

/// Evaluates `op` on constant operands. `Ok(None)` when the host does not evaluate this op: it
/// then runs as a step on uploaded weights.
pub(super) fn eval(op: &Op, inputs: &[&Host]) -> Result<Option<Data>, String> {
    let x = || inputs[0];
    Ok(Some(match op {
        Op::Transpose { in_shape, perm } => {
            let strides = signed(&row_major_strides(in_shape));
            let shape: Vec<usize> = perm.iter().map(|&p| in_shape[p]).collect();
            let strides: Vec<isize> = perm.iter().map(|&p| strides[p]).collect();
            x().data.pick(&strided(&shape, 0, &strides), 0.0)
        }
        Op::Slice { shape, starts, steps, in_strides } => {
            let offset: usize = starts.iter().zip(in_strides).map(|(s, t)| s * t).sum();
            let strides: Vec<isize> = steps.iter().zip(in_strides).map(|(&s, &t)| s * t as isize).collect();
            x().data.pick(&strided(shape, offset as isize, &strides), 0.0)
        }
        Op::Broadcast { shape, strides } => x().data.pick(&strided(shape, 0, &signed(strides)), 0.0),
        Op::Gather { outer, axis_len, inner, indices } => {
            let map = (0..*outer)
                .flat_map(|o| {
                    indices.iter().flat_map(move |&j| (0..*inner).map(move |i| Some((o * axis_len + j) * inner + i)))
                })
                .collect::<Vec<_>>();
            x().data.pick(&map, 0.0)
        }
        Op::Pad { in_shape, before, after, value } => x().data.pick(&pad_map(in_shape, before, after), *value),
        Op::Concat { outer, widths } => concat(inputs, *outer, widths),
        Op::Binary { kind, shape, a_strides, b_strides } => {
            let (a, b) = (strided(shape, 0, &signed(a_strides)), strided(shape, 0, &signed(b_strides)));
            binary(*kind, &inputs[0].data.pick(&a, 0.0), &inputs[1].data.pick(&b, 0.0))?
        }
        Op::Unary { kind, .. } => match &x().data {
            Data::I64(_) => return Ok(None),
            data => Data::F32(data.to_f32().into_iter().map(|v| kind.apply(v)).collect()),
        },
        _ => return Ok(None),
    }))
}

fn signed(strides: &[usize]) -> Vec<isize> {
    strides.iter().map(|&s| s as isize).collect()
}

/// Flat source index of every element of `shape` read at `offset + Σ index · stride`.
fn strided(shape: &[usize], offset: isize, strides: &[isize]) -> Vec<Option<usize>> {
    let len: usize = shape.iter().product();
    (0..len)
        .map(|flat| {
            let at: isize = unravel(flat, shape).iter().zip(strides).map(|(&i, &s)| i as isize * s).sum();
            Some((offset + at) as usize)
        })
        .collect()
}

/// Source index of every element of a constant-padded tensor; `None` in the padding.
fn pad_map(in_shape: &[usize], before: &[usize], after: &[usize]) -> Vec<Option<usize>> {
    let shape: Vec<usize> = (0..in_shape.len()).map(|a| before[a] + in_shape[a] + after[a]).collect();
    let strides = row_major_strides(in_shape);
    (0..shape.iter().product())
        .map(|flat| {
            let index = unravel(flat, &shape);
            (0..in_shape.len()).try_fold(0, |at, a| {
                let i = index[a].checked_sub(before[a]).filter(|&i| i < in_shape[a])?;
                Some(at + i * strides[a])
            })
        })
        .collect()
}

/// Concatenation of constant parts viewed as [outer, widths[i]].
fn concat(parts: &[&Host], outer: usize, widths: &[usize]) -> Data {
    fn join<T: Copy>(parts: &[&[T]], outer: usize, widths: &[usize]) -> Vec<T> {
        (0..outer)
            .flat_map(|o| parts.iter().zip(widths).flat_map(move |(p, &w)| p[o * w..(o + 1) * w].iter().copied()))
            .collect()
    }
    let ints: Option<Vec<&[i64]>> = parts.iter().map(|p| p.data.ints()).collect();
    let halves: Option<Vec<&[f16]>> =
        parts.iter().map(|p| if let Data::F16(v) = &p.data { Some(&v[..]) } else { None }).collect();
    if let Some(ints) = ints {
        Data::I64(join(&ints, outer, widths))
    } else if let Some(halves) = halves {
        Data::F16(join(&halves, outer, widths))
    } else {
        let floats: Vec<Vec<f32>> = parts.iter().map(|p| p.data.to_f32()).collect();
        Data::F32(join(&floats.iter().map(Vec::as_slice).collect::<Vec<_>>(), outer, widths))
    }
}

/// An element-wise function of two equally long operands: integer arithmetic when both are
/// integers, else float.
fn binary(kind: BinaryKind, a: &Data, b: &Data) -> Result<Data, String> {
    let (Some(a), Some(b)) = (a.ints(), b.ints()) else {
        return Ok(Data::F32(a.to_f32().into_iter().zip(b.to_f32()).map(|(a, b)| kind.apply(a, b)).collect()));
    };
    let overflow = || format!("integer {kind:?} overflows or divides by zero");
    let apply = |(&a, &b): (&i64, &i64)| -> Option<i64> {
        match kind {
            BinaryKind::Add => a.checked_add(b),
            BinaryKind::Sub => a.checked_sub(b),
            BinaryKind::Mul => a.checked_mul(b),
            BinaryKind::Div => a.checked_div(b),
            BinaryKind::Max => Some(a.max(b)),
            BinaryKind::Min => Some(a.min(b)),
            BinaryKind::Pow => u32::try_from(b).ok().and_then(|b| a.checked_pow(b)),
        }
    };
    a.iter().zip(b).map(apply).collect::<Option<Vec<_>>>().map(Data::I64).ok_or_else(overflow)
}

/// Numpy-broadcast operands of an element-wise function, each as f32 or i64 at every output
/// index; the common shape.
fn broadcast_all(operands: &[&Host]) -> Result<(Vec<usize>, Vec<Data>), String> {
    let shape = operands.iter().try_fold(Vec::new(), |s, x| broadcast_shapes(&s, &x.shape)).ok_or_else(|| {
        format!("shapes {:?} do not broadcast", operands.iter().map(|x| &x.shape).collect::<Vec<_>>())
    })?;
    check_len(&shape)?;
    let data = operands
        .iter()
        .map(|x| x.data.pick(&strided(&shape, 0, &signed(&broadcast_strides(&x.shape, &shape))), 0.0))
        .collect();
    Ok((shape, data))
}

/// ONNX Equal (a boolean tensor, as 0 / 1).
pub(super) fn equal(a: &Host, b: &Host) -> Result<Host, String> {
    let (shape, data) = broadcast_all(&[a, b])?;
    let same: Vec<i64> = match (data[0].ints(), data[1].ints()) {
        (Some(a), Some(b)) => a.iter().zip(b).map(|(a, b)| i64::from(a == b)).collect(),
        _ => data[0].to_f32().iter().zip(data[1].to_f32()).map(|(a, b)| i64::from(*a == b)).collect(),
    };
    Ok(Host { shape, data: Data::I64(same) })
}

/// ONNX Where: x where the condition holds, else y.
pub(super) fn select(condition: &Host, x: &Host, y: &Host) -> Result<Host, String> {
    let (shape, data) = broadcast_all(&[condition, x, y])?;
    let condition = data[0].ints().ok_or("the condition is not boolean")?;
    let data = match (data[1].ints(), data[2].ints()) {
        (Some(x), Some(y)) => Data::I64(choose(condition, x, y)),
        _ => Data::F32(choose(condition, &data[1].to_f32(), &data[2].to_f32())),
    };
    Ok(Host { shape, data })
}

fn choose<T: Copy>(condition: &[i64], x: &[T], y: &[T]) -> Vec<T> {
    condition.iter().zip(x.iter().zip(y)).map(|(&c, (&x, &y))| if c != 0 { x } else { y }).collect()
}

/// ONNX Cast of a constant to element type `to`.
pub(super) fn cast(x: &Host, to: i32) -> Result<Host, String> {
    let to = DataType::try_from(to).map_err(|_| format!("unknown element type {to}"))?;
    let data = match (to, &x.data) {
        (DataType::Float | DataType::Double, Data::I64(v)) => Data::F32(v.iter().map(|&v| v as f32).collect()),
        (DataType::Float | DataType::Double, data) => data.clone(),
        (DataType::Float16, Data::F16(v)) => Data::F16(v.clone()),
        (DataType::Float16, data) => Data::F16(data.to_f32().into_iter().map(f16::from_f32).collect()),
        (DataType::Bool, data) => Data::I64(data.to_f32().into_iter().map(|v| i64::from(v != 0.0)).collect()),
        (DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8, Data::I64(v)) => Data::I64(v.clone()),
        (DataType::Int64 | DataType::Int32 | DataType::Int16 | DataType::Int8, data) => {
            Data::I64(data.to_f32().into_iter().map(|v| v.trunc() as i64).collect())
        }
        (other, _) => return Err(format!("a cast to {other:?} is not supported")),
    };
    Ok(Host { shape: x.shape.clone(), data })
}

/// ONNX Range: start, start + delta, … up to `limit` (excluded).
pub(super) fn range(start: &Host, limit: &Host, delta: &Host) -> Result<Host, String> {
    let scalars = [start, limit, delta];
    if scalars.iter().any(|x| x.data.len() != 1) {
        return Err("start, limit and delta must be scalars".into());
    }
    let ints: Option<Vec<i64>> = scalars.iter().map(|x| x.data.ints().map(|v| v[0])).collect();
    let data = match ints {
        Some(v) if v[2] == 0 => return Err("delta is 0".into()),
        Some(v) => {
            let (start, limit, delta) = (i128::from(v[0]), i128::from(v[1]), i128::from(v[2]));
            let count = (limit - start + delta - delta.signum()) / delta;
            check_len(&[usize::try_from(count.max(0)).unwrap_or(usize::MAX)])?;
            Data::I64((0..count.max(0) as i64).map(|i| v[0] + i * v[2]).collect())
        }
        None => {
            let v: Vec<f32> = scalars.iter().map(|x| x.data.to_f32()[0]).collect();
            let n = ((v[1] - v[0]) / v[2]).ceil();
            if !n.is_finite() {
                return Err("delta is 0".into());
            }
            check_len(&[n.max(0.0).min(usize::MAX as f32) as usize])?;
            Data::F32((0..n.max(0.0) as usize).map(|i| v[0] + i as f32 * v[2]).collect())
        }
    };
    Ok(Host { shape: vec![data.len()], data })
}

/// ONNX QuantizeLinear of a constant with one scale: round(x · (1 / scale)) to even, plus the
/// zero point, clamped to `range`.
pub(super) fn quantize(x: &Host, scale: f32, zero: i64, range: (i64, i64)) -> Host {
    let level = |v: f32| ((v * scale.recip()).round_ties_even() as i64).saturating_add(zero).clamp(range.0, range.1);
    Host { shape: x.shape.clone(), data: Data::I64(x.data.to_f32().into_iter().map(level).collect()) }
}

/// ONNX ConstantOfShape: `shape` filled with the one element of `value`.
pub(super) fn constant_of_shape(shape: &[usize], value: &Host) -> Result<Host, String> {
    if value.data.len() != 1 {
        return Err("value must have one element".into());
    }
    let len = check_len(shape)?;
    Ok(Host { shape: shape.to_vec(), data: value.data.pick(&vec![Some(0); len], 0.0) })
}

/// ONNX DequantizeLinear of a constant: (x - zero_point) · scale, per tensor or per slice of `axis`;
/// held as [`Data::I8`] when the zero points are 0 and every value fits in an i8.
pub(super) fn dequantize(x: &Host, scale: &Host, zero_point: Option<&Host>, axis: usize) -> Result<Host, String> {
    let values = x.data.ints().ok_or("the quantized input is not an integer tensor")?;
    let per_axis = scale.data.len() > 1;
    let channels = if per_axis { *x.shape.get(axis).ok_or("a per-axis scale of a scalar")? } else { 1 };
    let zero = zero_point.map_or(vec![0; channels], |z| z.data.to_f32().into_iter().map(|v| v as i64).collect());
    if scale.data.len() != channels || zero.len() != channels {
        return Err(format!("scale / zero point lengths must be 1 or {channels}"));
    }
    let inner: usize = if per_axis { x.shape[axis + 1..].iter().product() } else { 1 };
    let scale = scale.data.to_f32();
    if zero.iter().all(|&z| z == 0) {
        if let Ok(values) = values.iter().map(|&q| i8::try_from(q)).collect::<Result<Vec<_>, _>>() {
            return Ok(Host { shape: x.shape.clone(), data: Data::I8(Int8 { values, scales: scale, inner }) });
        }
    }
    let data = values.iter().enumerate().map(|(i, &q)| {
        let c = (i / inner) % channels;
        (q - zero[c]) as f32 * scale[c]
    });
    Ok(Host { shape: x.shape.clone(), data: Data::F32(data.collect()) })
}
