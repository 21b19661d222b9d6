//! The native executor against the plan's reference executor (single ops on random shapes) and
//! against tract (every bundled engine).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::program::Extra;
use super::*;
use crate::backend::plan::reference::{self, difference, noise};
use crate::backend::plan::{
    BinaryKind, Op, Plan, PoolKind, ReduceKind, ResizeCoordinates, ResizeMode, Step, UnaryKind, Value, ValueKind,
    WeightData, Window,
};
#[cfg(feature = "tract")]
use crate::backend::tract::TractBackend;
use crate::engine::EngineMetadata;

fn bundled(name: &str) -> EngineMetadata {
    EngineMetadata::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(name)).unwrap()
}

/// Runs one frame through `runner`: three shots encoded into the context, then a query, as a
/// session does. Returns every shot's tokens and the logits.
fn frame(runner: &mut dyn Runner, manifest: &Manifest, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (r, c, t, d, s) =
        (manifest.resolution, manifest.channels, manifest.tokens_per_shot, manifest.token_width, manifest.max_shots);
    let mut ctx = vec![0.0; s * t * d];
    let disc = |i: usize, seed: u64| {
        let (y, x) = ((i / r) as f32, (i % r) as f32);
        let (cy, cx) = (r as f32 * (0.3 + 0.1 * (seed % 4) as f32), r as f32 * 0.5);
        (((y - cy).powi(2) + (x - cx).powi(2)).sqrt() < r as f32 * 0.2) as u8 as f32
    };
    for shot in 0..s {
        let seed = seed * 10 + shot as u64;
        let mask: Vec<f32> = (0..r * r).map(|i| disc(i, seed)).collect();
        let speckle = noise(c * r * r, seed, [0.0, 0.3]);
        let image: Vec<f32> = (0..c * r * r).map(|i| mask[i % (r * r)] * 0.6 + speckle[i]).collect();
        runner.encode(&image, &mask, &mut ctx[shot * t * d..][..t * d]).unwrap();
    }
    let query: Vec<f32> = (0..c * r * r).map(|i| disc(i % (r * r), seed + 1) * 0.5).collect();
    let mut scratch = vec![0.0; t * d];
    runner.encode(&query, &vec![0.0; r * r], &mut scratch).unwrap();
    let valid = vec![1.0; s * t];
    let mut logits = vec![0.0; r * r];
    runner.decode(&ctx, &valid, &mut logits).unwrap();
    (ctx, logits)
}

/// Every bundled engine gives tract's context and logits, within 1e-4 of their scale (the float
/// engines) or 3e-2 (the int8 engine: its convolutions sum exact int8 products where tract sums
/// floats, or, on CPUs without an int8 kernel, sum floats in another order (Winograd's
/// transforms), and a last-bit difference can move a later activation to the next int8 level:
/// 0.17 of logits up to 11 on these frames, where the quantiser's report puts int8 within 0.49
/// of fp32).
#[cfg(feature = "tract")]
#[test]
fn the_bundled_engines_match_tract() {
    for (name, tolerance) in [
        ("segicl-ref.plan", 1e-4),
        ("segicl-ref-fp16.plan", 1e-4),
        ("segicl-ref-int8.plan", 3e-2),
        ("prototype.plan", 1e-4),
    ] {
        let engine = bundled(name);
        let tract = TractBackend::prepare(&engine.file, &engine.manifest, 1).unwrap();
        // The int8 convolutions in int8 on each fast kernel the CPU has and, as on CPUs without
        // one, in f32.
        let fast = int8_kernels().into_iter().filter(|&k| k != int8::Kernel::Portable);
        for int8 in fast.map(Some).chain([None]) {
            let native = NativeBackend::prepare_with(&engine.file, &engine.manifest, 1, int8)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let (mut ours, mut theirs) = (native.runner().unwrap(), tract.runner().unwrap());
            for seed in 0..2 {
                let (ctx, logits) = frame(ours.as_mut(), &engine.manifest, seed);
                let (ctx_t, logits_t) = frame(theirs.as_mut(), &engine.manifest, seed);
                for (what, a, b) in [("ctx", &ctx, &ctx_t), ("logits", &logits, &logits_t)] {
                    let (diff, scale) = difference(a, b);
                    eprintln!("{name} ({int8:?}) seed {seed} {what}: max |Δ| {diff:.2e}, scale {scale:.2e}");
                    assert!(diff <= tolerance * scale.max(1.0), "{name} {what}: max |Δ| {diff} at scale {scale}");
                }
            }
        }
    }
}

/// Every bundled engine gives the same context and logits, bit for bit, on 1 and on 3
/// threads (the pool splits work on whole output rows, each computed as on one thread).
#[test]
fn the_bundled_engines_do_not_depend_on_the_thread_count() {
    for name in ["segicl-ref.plan", "segicl-ref-int8.plan", "prototype.plan"] {
        let engine = bundled(name);
        let runs: Vec<_> = [1, 3]
            .into_iter()
            .map(|threads| {
                let native =
                    NativeBackend::prepare_with(&engine.file, &engine.manifest, threads, Some(int8_kernel())).unwrap();
                frame(native.runner().unwrap().as_mut(), &engine.manifest, 0)
            })
            .collect();
        assert!(runs[0] == runs[1], "{name}: 3 threads changed the context or the logits");
    }
}

/// A plan of one step: the graph inputs (their shapes), then constant operands, in the op's
/// operand order.
fn one_step(op: Op, inputs: &[Vec<usize>], weights: &[Vec<usize>], out: Vec<usize>, seed: u64) -> Plan {
    let mut values = Vec::new();
    let mut plan_inputs = Vec::new();
    for (i, shape) in inputs.iter().enumerate() {
        plan_inputs.push((format!("in{i}"), values.len()));
        values.push(Value { shape: shape.clone(), kind: ValueKind::Input });
    }
    for (i, shape) in weights.iter().enumerate() {
        let data = noise(shape.iter().product(), seed + 100 + i as u64, [-1.0, 1.0]);
        values.push(Value { shape: shape.clone(), kind: ValueKind::Weight(WeightData::F32(data)) });
    }
    let output = values.len();
    values.push(Value { shape: out, kind: ValueKind::Computed });
    let step = Step { node: "step".into(), op, inputs: (0..output).collect(), output };
    Plan { values, inputs: plan_inputs, outputs: vec![("out".into(), output)], steps: vec![step] }
}

/// The int8 kernel of this CPU, or the portable one: the tests run int8 convolutions in int8
/// even where the runtime would run them in f32.
fn int8_kernel() -> int8::Kernel {
    int8::Kernel::detect().unwrap_or(int8::Kernel::Portable)
}

/// Every int8 kernel this CPU can run, the portable one first.
fn int8_kernels() -> Vec<int8::Kernel> {
    [int8::Kernel::Portable, int8::Kernel::Vnni, int8::Kernel::AvxVnni, int8::Kernel::Dot]
        .into_iter()
        .filter(|k| k.supported())
        .collect()
}

/// `plan`'s outputs from the native executor with the tile kernel `isa` (and [`int8_kernel`]),
/// on `inputs`, every convolution and matrix product split over three threads; checks that one
/// thread gives the same outputs, bit for bit.
fn run_native(plan: &Plan, isa: Isa, inputs: &[Vec<f32>]) -> (Program, Vec<Vec<f32>>) {
    let program = Program::compile(plan, isa, Some(int8_kernel()), 0, &[]).unwrap();
    let outputs = run_compiled(&program, inputs);
    (program, outputs)
}

/// [`run_native`] on a compiled program.
fn run_compiled(program: &Program, inputs: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let run = |threads: Threads| {
        let mut arena = vec![f32::NAN; program.arena_end];
        let mut scratch = vec![f32::NAN; program.scratch.max(kernels::im2col_len(program))];
        for ((_, slot), data) in program.inputs.iter().zip(inputs) {
            let Place::Arena(at) = slot.place else { panic!("inputs live in the arena") };
            arena[at..at + slot.len].copy_from_slice(data);
        }
        kernels::run(program, &mut arena, &mut scratch, &threads, None);
        let outputs: Vec<Vec<f32>> = program
            .outputs
            .iter()
            .map(|(_, slot)| match slot.place {
                Place::Arena(at) => arena[at..at + slot.len].to_vec(),
                Place::Constant(at) => program.constants[at..at + slot.len].to_vec(),
            })
            .collect();
        outputs
    };
    let split = run(Threads::eager(3, kernels::panel_len(program)));
    let alone = run(Threads::new(1, kernels::panel_len(program)).unwrap());
    let same = split.iter().flatten().zip(alone.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "3 threads and 1 give different outputs");
    split
}

/// Every tile kernel this CPU runs (the portable one on any).
fn isas() -> Vec<Isa> {
    let mut isas = vec![Isa::Portable, Isa::detect()];
    #[cfg(target_arch = "x86_64")]
    if isas[1] == Isa::Avx512
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
    {
        isas.push(Isa::Avx2);
    }
    isas.dedup();
    isas
}

/// Native (with every tile kernel the CPU has) and reference outputs of `plan` agree within
/// 1e-4 of their scale.
fn agree(plan: &Plan, what: &str, seed: u64) {
    let inputs: Vec<Vec<f32>> = plan
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &(_, v))| noise(plan.values[v].len(), seed + i as u64, [-1.0, 1.0]))
        .collect();
    let refs: Vec<&[f32]> = inputs.iter().map(Vec::as_slice).collect();
    let expected = reference::run(plan, &refs);
    for isa in isas() {
        let (_, got) = run_native(plan, isa, &inputs);
        for (g, e) in got.iter().zip(&expected) {
            let (diff, scale) = difference(g, e);
            assert!(diff <= 1e-4 * scale.max(1.0), "{what} ({isa:?}): max |Δ| {diff} at scale {scale}");
        }
    }
}

fn window(rng: &mut ChaCha8Rng, h: usize, w: usize, kernel: [usize; 2], dilation: [usize; 2]) -> Option<Window> {
    let stride = [rng.random_range(1..=2), rng.random_range(1..=2)];
    let pad = [0; 4].map(|_| rng.random_range(0..=kernel[0].min(kernel[1]) - 1 + 1) % kernel[0].max(1));
    let span = |i: usize| dilation[i] * (kernel[i] - 1) + 1;
    let (ph, pw) = (h + pad[0] + pad[2], w + pad[1] + pad[3]);
    if ph < span(0) || pw < span(1) {
        return None;
    }
    let (out_h, out_w) = ((ph - span(0)) / stride[0] + 1, (pw - span(1)) / stride[1] + 1);
    Some(Window { h, w, kernel, stride, pad, out_h, out_w })
}

#[test]
fn convolutions_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut done = 0;
    while done < 120 {
        let groups = [1, 1, 2, 3][rng.random_range(0..4)];
        let (c_in, c_out) = (groups * rng.random_range(1..=9), groups * rng.random_range(1..=20));
        let depthwise = rng.random_bool(0.15);
        let (c_in, c_out, groups) = if depthwise { (c_in, c_in, c_in) } else { (c_in, c_out, groups) };
        let kernel = [rng.random_range(1..=3), rng.random_range(1..=3)];
        let dilation = [rng.random_range(1..=2), 1];
        let (n, h, w) = (rng.random_range(1..=2), rng.random_range(1..=13), rng.random_range(1..=40));
        let Some(window) = window(&mut rng, h, w, kernel, dilation) else { continue };
        let op = Op::Conv { n, c_in, c_out, window, dilation, groups };
        let mut weights = vec![vec![c_out, c_in / groups, kernel[0], kernel[1]]];
        if rng.random_bool(0.7) {
            weights.push(vec![c_out]);
        }
        let out = vec![n, c_out, window.out_h, window.out_w];
        let plan = one_step(op.clone(), &[vec![n, c_in, h, w]], &weights, out, done);
        agree(&plan, &format!("{op:?}"), done);
        done += 1;
    }
}

/// Convolutions read their input in place (padded once, split into phase planes for a stride
/// of 2) whether or not output rows are whole panels (16, 32 and 64 columns are, 20 and 40 are
/// not on any tile kernel); pointwise ones read it unpadded. All match the reference.
#[test]
fn convolutions_read_in_place_match_the_reference() {
    let mut seed = 0;
    for w in [16, 20, 32, 40, 64] {
        for (kernel, pad, dilation, stride) in [
            ([3, 3], [1; 4], [1, 1], [1, 1]),
            ([3, 3], [2; 4], [2, 2], [1, 1]),
            ([1, 1], [0; 4], [1, 1], [1, 1]),
            ([5, 3], [2, 1, 2, 1], [1, 1], [1, 1]),
            ([3, 3], [1; 4], [1, 1], [2, 2]),
            ([3, 2], [1, 0, 2, 1], [1, 1], [2, 1]),
        ] {
            let (c_in, c_out, h) = (7, 13, 5);
            let span =
                |i: usize, n: usize| (n + pad[i] + pad[i + 2] - dilation[i] * (kernel[i] - 1) - 1) / stride[i] + 1;
            let (out_h, out_w) = (span(0, h), span(1, w));
            let window = Window { h, w, kernel, stride, pad, out_h, out_w };
            let op = Op::Conv { n: 2, c_in, c_out, window, dilation, groups: 1 };
            let plan = one_step(
                op.clone(),
                &[vec![2, c_in, h, w]],
                &[vec![c_out, c_in, kernel[0], kernel[1]], vec![c_out]],
                vec![2, c_out, out_h, out_w],
                seed,
            );
            for isa in isas() {
                let program = Program::compile(&plan, isa, None, 0, &[]).unwrap();
                let Extra::Conv(extra) = &program.steps[0].extra else { panic!("a convolution") };
                let in_place = !matches!(extra.columns, super::program::Columns::Im2col);
                assert!(in_place, "{op:?} reads its input in place");
            }
            agree(&plan, &format!("{op:?}"), seed);
            seed += 1;
        }
    }
}

/// A 3×3 convolution of `c_in` → `c_out` channels over `window` (h × w, padding), then Add (a
/// residual) → Relu, or Clip.
fn fused_plan(c_in: usize, c_out: usize, window: Window, clip: bool, seed: u64) -> Plan {
    let Window { h, w, out_h, out_w, .. } = window;
    let conv = Op::Conv { n: 1, c_in, c_out, window, dilation: [1, 1], groups: 1 };
    let shape = vec![1, c_out, out_h, out_w];
    let len = c_out * out_h * out_w;
    let dense = crate::backend::plan::row_major_strides(&shape);
    let mut plan = one_step(
        conv,
        &[vec![1, c_in, h, w], shape.clone()],
        &[vec![c_out, c_in, 3, 3], vec![c_out]],
        shape.clone(),
        seed,
    );
    // one_step put the residual input among the conv's operands: take it out again.
    let conv_out = plan.steps[0].output;
    plan.steps[0].inputs = vec![0, 2, 3];
    let push = |plan: &mut Plan, op: Op, inputs: Vec<usize>| {
        let output = plan.values.len();
        plan.values.push(Value { shape: shape.clone(), kind: ValueKind::Computed });
        plan.steps.push(Step { node: format!("step{output}"), op, inputs, output });
        output
    };
    let last = if clip {
        push(&mut plan, Op::Unary { kind: UnaryKind::Clip { min: -0.2, max: 0.3 }, len }, vec![conv_out])
    } else {
        let add =
            Op::Binary { kind: BinaryKind::Add, shape: shape.clone(), a_strides: dense.clone(), b_strides: dense };
        let sum = push(&mut plan, add, vec![conv_out, 1]);
        push(&mut plan, Op::Unary { kind: UnaryKind::Relu, len }, vec![sum])
    };
    plan.outputs = vec![("out".into(), last)];
    plan
}

/// Conv → Add (a residual) → Relu, and Conv → Clip, become one step and still match.
#[test]
fn fused_convolutions_match_the_unfused_reference() {
    let window = Window { h: 9, w: 21, kernel: [3, 3], stride: [1, 1], pad: [1; 4], out_h: 9, out_w: 21 };
    for clip in [false, true] {
        let plan = fused_plan(5, 12, window, clip, 3);
        let (program, _) = run_native(&plan, Isa::detect(), &[vec![0.0; 5 * 9 * 21], vec![0.0; 12 * 9 * 21]]);
        assert_eq!(program.steps.len(), 1, "clip {clip}: fused into one step");
        agree(&plan, &format!("fused, clip {clip}"), 4);
    }
}

/// 3×3 stride-1 convolutions with enough channels run by Winograd's F(2×2, 3×3) on AVX-512 and
/// match the reference: odd output sizes (a tile half outside), tile rows longer than a vector
/// (more than 16 tiles), fewer tiles than a panel, output channels that do not fill a panel,
/// asymmetric padding, a fused residual with Relu or a Clip.
#[test]
fn winograd_convolutions_match_the_reference() {
    let mut seed = 40;
    for (c_in, c_out, h, w, pad) in [
        (8, 8, 2, 2, [1; 4]),
        (9, 13, 7, 5, [1; 4]),
        (16, 24, 12, 40, [1; 4]),
        (11, 16, 9, 35, [0, 1, 2, 1]),
        (24, 8, 33, 67, [1; 4]),
        (12, 9, 6, 6, [0; 4]),
    ] {
        let [out_h, out_w] = [h + pad[0] + pad[2] - 2, w + pad[1] + pad[3] - 2];
        let window = Window { h, w, kernel: [3, 3], stride: [1, 1], pad, out_h, out_w };
        for clip in [false, true] {
            let plan = fused_plan(c_in, c_out, window, clip, seed);
            #[cfg(target_arch = "x86_64")]
            if Isa::detect() == Isa::Avx512 {
                let program = Program::compile(&plan, Isa::Avx512, None, 0, &[]).unwrap();
                let Extra::Conv(extra) = &program.steps[0].extra else { panic!("a convolution") };
                assert_eq!(extra.columns, super::program::Columns::Winograd, "{window:?}");
            }
            agree(&plan, &format!("{c_in} → {c_out} channels, {window:?}, clip {clip}"), seed);
            seed += 1;
        }
    }
}

/// Quantize → Conv with int8 weights (→ Add of a residual → Relu) becomes one int8 step, on
/// every int8 kernel the CPU has, and matches the reference's float arithmetic on the same
/// levels: random geometries, strides, dilations, padding, ranges with and without a zero point.
#[test]
fn int8_convolutions_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let kernels = int8_kernels();
    assert!(kernels.len() > 1 || int8::Kernel::detect().is_none(), "{kernels:?}: the detected kernel is tested");
    let mut done = 0;
    while done < 80 {
        let (c_in, c_out) = (rng.random_range(1..=11), rng.random_range(1..=20));
        let kernel = [rng.random_range(1..=3), rng.random_range(1..=3)];
        let dilation = [rng.random_range(1..=2), rng.random_range(1..=2)];
        let (n, h, w) = (rng.random_range(1..=2), rng.random_range(1..=12), rng.random_range(1..=45));
        let Some(window) = window(&mut rng, h, w, kernel, dilation) else { continue };
        let (min, max) = [(0.0, 255.0), (-128.0, 127.0), (-100.0, 155.0)][done % 3];
        let quantize = UnaryKind::Quantize { scale: rng.random_range(0.002..0.01), min, max };
        let (x_shape, out) = (vec![n, c_in, h, w], vec![n, c_out, window.out_h, window.out_w]);
        let (x_len, len) = (n * c_in * h * w, out.iter().product::<usize>());
        let k = c_in * kernel[0] * kernel[1];
        let values: Vec<i8> = (0..c_out * k).map(|_| rng.random_range(-127..=127)).collect();
        let scales: Vec<f32> = (0..c_out).map(|_| rng.random_range(0.001..0.02)).collect();
        let weights = WeightData::I8(crate::backend::plan::Int8 { values, scales, inner: k });
        let residual = rng.random_bool(0.5);
        let mut values = vec![
            Value { shape: x_shape.clone(), kind: ValueKind::Input },
            Value { shape: out.clone(), kind: ValueKind::Input },
            Value { shape: x_shape, kind: ValueKind::Computed },
            Value { shape: vec![c_out, c_in, kernel[0], kernel[1]], kind: ValueKind::Weight(weights) },
            Value {
                shape: vec![c_out],
                kind: ValueKind::Weight(WeightData::F32(noise(c_out, done as u64, [-1.0, 1.0]))),
            },
            Value { shape: out.clone(), kind: ValueKind::Computed },
        ];
        let op = Op::Conv { n, c_in, c_out, window, dilation, groups: 1 };
        let mut steps = vec![
            Step { node: "q".into(), op: Op::Unary { kind: quantize, len: x_len }, inputs: vec![0], output: 2 },
            Step { node: "conv".into(), op: op.clone(), inputs: vec![2, 3, 4], output: 5 },
        ];
        let mut last = 5;
        if residual {
            let dense = crate::backend::plan::row_major_strides(&out);
            let add =
                Op::Binary { kind: BinaryKind::Add, shape: out.clone(), a_strides: dense.clone(), b_strides: dense };
            values.push(Value { shape: out.clone(), kind: ValueKind::Computed });
            values.push(Value { shape: out.clone(), kind: ValueKind::Computed });
            steps.push(Step { node: "add".into(), op: add, inputs: vec![5, 1], output: 6 });
            steps.push(Step {
                node: "relu".into(),
                op: Op::Unary { kind: UnaryKind::Relu, len },
                inputs: vec![6],
                output: 7,
            });
            last = 7;
        }
        let inputs = vec![("x".into(), 0), ("r".into(), 1)];
        let plan = Plan { values, inputs, outputs: vec![("out".into(), last)], steps };
        let data = vec![noise(x_len, done as u64, [-1.5, 1.5]), noise(len, done as u64 + 7, [-1.0, 1.0])];
        let expected = reference::run(&plan, &[&data[0], &data[1]]);
        let mut program = Program::compile(&plan, Isa::detect(), Some(int8::Kernel::Portable), 0, &[]).unwrap();
        assert_eq!(program.steps.len(), 1, "{op:?}: quantize, conv, add and relu are one step");
        assert!(matches!(program.steps[0].extra, Extra::Int8Conv { .. }), "{op:?}");
        for &kernel in &kernels {
            program.int8 = kernel;
            let got = run_compiled(&program, &data);
            let (diff, scale) = difference(&got[0], &expected[0]);
            assert!(diff <= 1e-5 * scale.max(1.0), "{op:?} ({kernel:?}): max |Δ| {diff} at scale {scale}");
        }
        done += 1;
    }
}

/// A geometry whose quantised input would be unbounded (huge padding with a huge stride) is
/// left to the float path, and an ordinary one is taken.
#[test]
fn int8_convolutions_refuse_unbounded_buffers() {
    let int8 = crate::backend::plan::Int8 { values: vec![1; 4], scales: vec![0.1], inner: 1 };
    let conv = |stride: usize, pad: usize| {
        let window = Window { h: 2, w: 2, kernel: [1, 1], stride: [stride; 2], pad: [pad; 4], out_h: 3, out_w: 3 };
        Op::Conv { n: 1, c_in: 2, c_out: 2, window, dilation: [1, 1], groups: 1 }
    };
    let levels = [0.01, -128.0, 127.0];
    assert!(int8::Conv8::new(&conv(1 << 20, 1 << 20), &int8, levels).is_none());
    assert!(int8::Conv8::new(&conv(1, 1), &int8, levels).is_some());
}

/// A NaN in an int8 convolution's input makes its output NaN (quantising would hide it), in
/// the vectorised columns and in the tail alike.
#[test]
fn a_nan_reaches_the_output_of_an_int8_convolution() {
    let (h, w) = (2, 40);
    let window = Window { h, w, kernel: [1, 1], stride: [1, 1], pad: [0; 4], out_h: h, out_w: w };
    let int8 = crate::backend::plan::Int8 { values: vec![1, -2, 3, 4], scales: vec![0.1], inner: 1 };
    let values = vec![
        Value { shape: vec![1, 2, h, w], kind: ValueKind::Input },
        Value { shape: vec![1, 2, h, w], kind: ValueKind::Computed },
        Value { shape: vec![2, 2, 1, 1], kind: ValueKind::Weight(WeightData::I8(int8)) },
        Value { shape: vec![1, 2, h, w], kind: ValueKind::Computed },
    ];
    let quantize = UnaryKind::Quantize { scale: 0.01, min: -128.0, max: 127.0 };
    let conv = Op::Conv { n: 1, c_in: 2, c_out: 2, window, dilation: [1, 1], groups: 1 };
    let steps = vec![
        Step { node: "q".into(), op: Op::Unary { kind: quantize, len: 2 * h * w }, inputs: vec![0], output: 1 },
        Step { node: "conv".into(), op: conv, inputs: vec![1, 2], output: 3 },
    ];
    let plan = Plan { values, inputs: vec![("x".into(), 0)], outputs: vec![("out".into(), 3)], steps };
    let x = vec![0.5; 2 * h * w];
    let (program, clean) = run_native(&plan, Isa::detect(), std::slice::from_ref(&x));
    assert!(matches!(program.steps[0].extra, Extra::Int8Conv { .. }));
    assert!(clean[0].iter().all(|v| v.is_finite()));
    let mut program = Program::compile(&plan, Isa::detect(), Some(int8::Kernel::Portable), 0, &[]).unwrap();
    for kernel in int8_kernels() {
        program.int8 = kernel;
        for at in [5, w + 37, h * w + 20] {
            let mut x = x.clone();
            x[at] = f32::NAN;
            let got = run_compiled(&program, &[x]);
            assert!(got[0].iter().all(|v| v.is_nan()), "{kernel:?}: a NaN at {at}");
        }
    }
}

#[test]
fn matrix_products_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for i in 0..60u64 {
        let (batch, m, n, k) = (
            rng.random_range(1..=3),
            rng.random_range(1..=40),
            [1, 2, 17, 33, 66][i as usize % 5],
            rng.random_range(1..=70),
        );
        let (a_bs, b_bs) = (if rng.random_bool(0.3) { 0 } else { m * k }, if rng.random_bool(0.3) { 0 } else { k * n });
        let a_shape = vec![if a_bs == 0 { 1 } else { batch }, m, k];
        let b_shape = vec![if b_bs == 0 { 1 } else { batch }, k, n];
        let op = Op::MatMul { batch, m, n, k, a_batch_stride: a_bs, b_batch_stride: b_bs };
        let plan = one_step(op.clone(), &[a_shape, b_shape], &[], vec![batch, m, n], i);
        agree(&plan, &format!("{op:?}"), i);
    }
}

/// A random shape of rank 1 to 4 and, for an operand broadcast onto it, strides with 0 on some
/// axes (and that operand's dense shape).
fn broadcast(rng: &mut ChaCha8Rng, shape: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let own: Vec<usize> = shape.iter().map(|&d| if rng.random_bool(0.3) { 1 } else { d }).collect();
    let dense = crate::backend::plan::row_major_strides(&own);
    let strides = own.iter().zip(&dense).map(|(&d, &s)| if d == 1 { 0 } else { s }).collect();
    (own, strides)
}

#[test]
fn element_wise_and_data_movement_ops_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let kinds = [BinaryKind::Add, BinaryKind::Sub, BinaryKind::Mul, BinaryKind::Div, BinaryKind::Max, BinaryKind::Min];
    for i in 0..200u64 {
        let rank = rng.random_range(1..=4);
        let shape: Vec<usize> = (0..rank).map(|_| rng.random_range(1..=7)).collect();
        let len: usize = shape.iter().product();
        let (plan, what) = match i % 10 {
            0 | 1 => {
                let ((sa, a), (sb, b)) = (broadcast(&mut rng, &shape), broadcast(&mut rng, &shape));
                let op = Op::Binary {
                    kind: kinds[i as usize % kinds.len()],
                    shape: shape.clone(),
                    a_strides: a,
                    b_strides: b,
                };
                (one_step(op.clone(), &[sa, sb], &[], shape.clone(), i), format!("{op:?}"))
            }
            2 => {
                let kind = [
                    UnaryKind::Relu,
                    UnaryKind::Tanh,
                    UnaryKind::Sigmoid,
                    UnaryKind::Exp,
                    UnaryKind::Neg,
                    UnaryKind::Abs,
                ][rng.random_range(0..6)];
                (
                    one_step(Op::Unary { kind, len }, std::slice::from_ref(&shape), &[], shape.clone(), i),
                    format!("{kind:?}"),
                )
            }
            3 => {
                let (own, strides) = broadcast(&mut rng, &shape);
                let op = Op::Broadcast { shape: shape.clone(), strides };
                (one_step(op.clone(), &[own], &[], shape.clone(), i), format!("{op:?}"))
            }
            4 => {
                let mut perm: Vec<usize> = (0..rank).collect();
                for a in (1..rank).rev() {
                    perm.swap(a, rng.random_range(0..=a));
                }
                let out = perm.iter().map(|&p| shape[p]).collect();
                let op = Op::Transpose { in_shape: shape.clone(), perm };
                (one_step(op.clone(), std::slice::from_ref(&shape), &[], out, i), format!("{op:?}"))
            }
            5 => {
                let strides = crate::backend::plan::row_major_strides(&shape);
                let (mut starts, mut steps, mut out) = (vec![], vec![], vec![]);
                for &d in &shape {
                    let step: isize = [1, 2, -1, -2][rng.random_range(0..4)];
                    let start = rng.random_range(0..d);
                    let room =
                        if step > 0 { (d - start).div_ceil(step as usize) } else { start / (-step) as usize + 1 };
                    starts.push(start);
                    steps.push(step);
                    out.push(rng.random_range(1..=room));
                }
                let op = Op::Slice { shape: out.clone(), starts, steps, in_strides: strides };
                (one_step(op.clone(), std::slice::from_ref(&shape), &[], out, i), format!("{op:?}"))
            }
            6 => {
                let (outer, axis_len, inner) =
                    (rng.random_range(1..=4), rng.random_range(1..=6), rng.random_range(1..=5));
                let indices: Vec<usize> = (0..rng.random_range(1..=5)).map(|_| rng.random_range(0..axis_len)).collect();
                let out = vec![outer, indices.len(), inner];
                let op = Op::Gather { outer, axis_len, inner, indices };
                (one_step(op.clone(), &[vec![outer, axis_len, inner]], &[], out, i), format!("{op:?}"))
            }
            7 => {
                let outer = rng.random_range(1..=4);
                let widths: Vec<usize> = (0..rng.random_range(1..=3)).map(|_| rng.random_range(1..=9)).collect();
                let parts: Vec<Vec<usize>> = widths.iter().map(|&w| vec![outer, w]).collect();
                let out = vec![outer, widths.iter().sum()];
                let op = Op::Concat { outer, widths };
                (one_step(op.clone(), &parts, &[], out, i), format!("{op:?}"))
            }
            8 => {
                let before: Vec<usize> = shape.iter().map(|_| rng.random_range(0..=2)).collect();
                let after: Vec<usize> = shape.iter().map(|_| rng.random_range(0..=2)).collect();
                let out = (0..rank).map(|a| before[a] + shape[a] + after[a]).collect();
                let op = Op::Pad { in_shape: shape.clone(), before, after, value: 0.25 };
                (one_step(op.clone(), std::slice::from_ref(&shape), &[], out, i), format!("{op:?}"))
            }
            _ => {
                let (outer, len, inner) = (rng.random_range(1..=4), rng.random_range(1..=30), rng.random_range(1..=5));
                let x = vec![outer, len, inner];
                let op = match rng.random_range(0..6) {
                    0 => Op::Softmax { outer, len, inner },
                    1 => Op::LayerNorm { rows: outer * len, cols: inner.max(2), eps: 1e-5 },
                    k => Op::Reduce {
                        kind: [ReduceKind::Sum, ReduceKind::Mean, ReduceKind::Max, ReduceKind::L2][k - 2],
                        outer,
                        len,
                        inner,
                    },
                };
                match op {
                    Op::Reduce { .. } => (one_step(op.clone(), &[x], &[], vec![outer, inner], i), format!("{op:?}")),
                    Op::LayerNorm { rows, cols, .. } => {
                        let shape = vec![rows, cols];
                        (
                            one_step(
                                op.clone(),
                                std::slice::from_ref(&shape),
                                &[vec![cols], vec![cols]],
                                shape.clone(),
                                i,
                            ),
                            format!("{op:?}"),
                        )
                    }
                    _ => (one_step(op.clone(), std::slice::from_ref(&x), &[], x.clone(), i), format!("{op:?}")),
                }
            }
        };
        agree(&plan, &what, i);
    }
}

#[test]
fn pooling_and_resizing_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for i in 0..60u64 {
        let (planes, h, w) = (rng.random_range(1..=5), rng.random_range(1..=12), rng.random_range(1..=12));
        let kernel = [rng.random_range(1..=3), rng.random_range(1..=3)];
        if let Some(window) = window(&mut rng, h, w, kernel, [1, 1]) {
            let kind = [
                PoolKind::Max,
                PoolKind::Average { count_include_pad: true },
                PoolKind::Average { count_include_pad: false },
            ][i as usize % 3];
            let op = Op::Pool { kind, planes, window };
            agree(
                &one_step(op.clone(), &[vec![planes, h, w]], &[], vec![planes, window.out_h, window.out_w], i),
                &format!("{op:?}"),
                i,
            );
        }
        let mode = [ResizeMode::Linear, ResizeMode::Nearest][i as usize % 2];
        let coordinates = [
            ResizeCoordinates::HalfPixel,
            ResizeCoordinates::PytorchHalfPixel,
            ResizeCoordinates::AlignCorners,
            ResizeCoordinates::Asymmetric,
        ][i as usize / 2 % 4];
        let (out_h, out_w) = (rng.random_range(1..=25), rng.random_range(1..=25));
        let op = Op::Resize { mode, coordinates, planes, in_h: h, in_w: w, out_h, out_w };
        agree(&one_step(op.clone(), &[vec![planes, h, w]], &[], vec![planes, out_h, out_w], i), &format!("{op:?}"), i);
    }
    // Bilinear 2× upsamples (the decoder's) take the path without gathers.
    for (i, (coordinates, h, w)) in [
        (ResizeCoordinates::HalfPixel, 3, 2),
        (ResizeCoordinates::HalfPixel, 5, 17),
        (ResizeCoordinates::PytorchHalfPixel, 4, 32),
        (ResizeCoordinates::HalfPixel, 1, 40),
    ]
    .into_iter()
    .enumerate()
    {
        let op = Op::Resize {
            mode: ResizeMode::Linear,
            coordinates,
            planes: 3,
            in_h: h,
            in_w: w,
            out_h: 2 * h,
            out_w: 2 * w,
        };
        let plan = one_step(op.clone(), &[vec![3, h, w]], &[], vec![3, 2 * h, 2 * w], 70 + i as u64);
        let program = Program::compile(&plan, Isa::detect(), None, 0, &[]).unwrap();
        let Extra::Resize { doubled, .. } = &program.steps[0].extra else { panic!("a resize") };
        assert!(doubled.is_some(), "{op:?} doubles its width");
        agree(&plan, &format!("{op:?}"), 70 + i as u64);
    }
}

/// A step whose operand is smaller than its op reads is refused when the program is compiled,
/// naming the node, so the kernels never index past it.
#[test]
fn inconsistent_sizes_are_refused_at_compile_time() {
    let op = Op::Gather { outer: 2, axis_len: 3, inner: 4, indices: vec![0, 3] };
    let plan = one_step(op, &[vec![2, 3, 4]], &[], vec![2, 2, 4], 0);
    let err = Program::compile(&plan, Isa::detect(), None, 0, &[]).unwrap_err();
    assert!(err.contains("node `step`") && err.contains("index 3"), "{err}");
    let op = Op::Binary { kind: BinaryKind::Add, shape: vec![4, 5], a_strides: vec![5, 1], b_strides: vec![6, 1] };
    let plan = one_step(op, &[vec![4, 5], vec![4, 5]], &[], vec![4, 5], 0);
    let err = Program::compile(&plan, Isa::detect(), None, 0, &[]).unwrap_err();
    assert!(err.contains("b holds 20 values"), "{err}");
}

/// Prints where a bundled engine's frame spends its time, step by step (not a test of anything:
/// `SEGICL_PROFILE_ENGINE=prototype.plan cargo test --release -p segicl profile -- --ignored
/// --nocapture`; default segicl-ref.plan). `SEGICL_PROFILE_INT8=NAME` runs an int8 engine's
/// convolutions on the int8 kernel of that name (`portable`, `avx-vnni`, ...), `f32` in f32
/// (default: as the runtime chooses).
#[test]
#[ignore]
fn profile() {
    let engine = bundled(&std::env::var("SEGICL_PROFILE_ENGINE").unwrap_or_else(|_| "segicl-ref.plan".into()));
    let int8 = match std::env::var("SEGICL_PROFILE_INT8").as_deref() {
        Ok("f32") => None,
        Ok(name) => Some(int8_kernels().into_iter().find(|k| k.name() == name).expect("a kernel this CPU has")),
        Err(_) => int8::Kernel::detect(),
    };
    let native = NativeBackend::prepare_with(&engine.file, &engine.manifest, 1, int8).unwrap();
    let shared = &native.shared;
    let mut arena = vec![0.0; shared.arena];
    let mut scratch = vec![0.0; shared.scratch];
    let threads = Threads::new(1, shared.panel).unwrap();
    for program in [&shared.encoder, &shared.decoder] {
        let mut times = vec![std::time::Duration::ZERO; program.steps.len()];
        for _ in 0..50 {
            kernels::run(program, &mut arena, &mut scratch, &threads, Some(&mut times));
        }
        let mut rows: Vec<_> = program.steps.iter().zip(&times).collect();
        rows.sort_by_key(|(_, t)| std::cmp::Reverse(**t));
        let total: std::time::Duration = times.iter().sum();
        let constants = program.constants.len() as f64 * 4.0 / (1 << 20) as f64;
        eprintln!("total {:.3} ms per run; {constants:.2} MiB of constants", total.as_secs_f64() * 1e3 / 50.0);
        for (step, t) in rows.iter().take(15) {
            let op = format!("{:?}", step.op);
            eprintln!("{:8.3} ms  {:30} {}", t.as_secs_f64() * 1e3 / 50.0, step.node, &op[..op.len().min(110)]);
        }
    }
}

/// The branch-free tanh and exp stay within a few ulp of libm's over their whole useful range.
#[test]
fn fast_tanh_and_exp_match_libm() {
    let mut worst = (0.0f32, 0.0f32);
    for i in -400_000..=400_000 {
        let x = i as f32 * 2.5e-4;
        worst.0 = worst.0.max((kernels::tanh(x) - x.tanh()).abs());
        let y = i as f32 * 2.18e-4;
        worst.1 = worst.1.max((kernels::exp(y) - y.exp()).abs() / y.exp());
    }
    assert!(worst.0 <= 1e-6, "tanh: max |Δ| {}", worst.0);
    assert!(worst.1 <= 1e-6, "exp: max relative Δ {}", worst.1);
    assert_eq!(kernels::tanh(1e6), 1.0);
    assert_eq!(kernels::tanh(-1e6), -1.0);
    assert!(kernels::exp(-200.0) < 1e-37 && kernels::exp(0.0) == 1.0);
    assert!(kernels::tanh(f32::NAN).is_nan() && kernels::exp(f32::NAN).is_nan());
}
