//! The native CPU backend: both graphs lowered to a [`Plan`](super::plan::Plan) and compiled
//! into [`Program`]s that run on one arena per session, allocated once when the session is
//! created, with this crate's own kernels (`gemm.rs`: AVX-512 / AVX2 / NEON tile kernels, packed
//! weights; `int8.rs`: int8 convolutions, AVX-512 VNNI / AVX-VNNI / `sdot`; `kernels.rs`: everything else).
//! A frame allocates nothing.
//!
//! Weights are converted to f32 (an fp16 engine's too) and convolution weights packed for the
//! tile kernel once at open; the engine's graph sections are not used after that. In an int8
//! engine on a CPU with an int8 kernel (AVX-512 VNNI, AVX-VNNI, aarch64 `sdot`), a convolution whose
//! input is quantised and whose weights are int8 runs in int8 (`int8.rs`; its weights packed as
//! int8 at open); everything else runs in f32 on the dequantised values, as the QDQ graph says.
//! Elsewhere the int8 convolutions run in f32 too: the portable int8 kernel is slower than the
//! f32 tiles. An engine whose graphs do not lower (an op the plan
//! lacks) is refused with the node named, and `auto` then runs it with tract.
//!
//! `--threads` N runs the convolutions and matrix products on a pool of N threads per session
//! (`pool.rs`), which splits their output channels (or groups, or rows); every other step stays
//! on the calling thread. The masks do not depend on N, bit for bit.

mod check;
mod gemm;
mod int8;
mod kernels;
mod pool;
mod program;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod winograd;

use std::sync::Arc;

use super::plan;
use super::{Backend, Runner};
use crate::error::{Error, Result};
use crate::format::EngineFile;
use crate::manifest::{Graph, Manifest};
use gemm::Isa;
use pool::Threads;
use program::{Place, Program, Slot};

/// What the sessions of one engine share: both compiled graphs and where their inputs and
/// outputs live in a session's arena.
#[derive(Debug)]
struct Shared {
    encoder: Program,
    decoder: Program,
    /// Floats of a session's arena (both programs; the decoder's part after the encoder's).
    arena: usize,
    /// Floats of a session's scratch (the larger of the two programs' needs).
    scratch: usize,
    /// Threads per session, and floats of each one's B-panel scratch.
    threads: usize,
    panel: usize,
    image: Slot,
    mask: Slot,
    ctx_out: Slot,
    ctx_in: Slot,
    ctx_valid: Slot,
    logits: Slot,
}

/// Both graphs of an engine, compiled for this CPU.
pub struct NativeBackend {
    shared: Arc<Shared>,
}

impl NativeBackend {
    /// Lowers and compiles both graphs of the engine for sessions of `threads` threads, or says
    /// why it cannot (the node the plan cannot express, or sizes that do not fit).
    pub fn prepare(file: &EngineFile, manifest: &Manifest, threads: usize) -> Result<Self> {
        Self::prepare_with(file, manifest, threads, int8::Kernel::detect())
    }

    /// [`NativeBackend::prepare`] with the int8 convolutions on `int8` (none: in f32).
    fn prepare_with(
        file: &EngineFile,
        manifest: &Manifest,
        threads: usize,
        int8: Option<int8::Kernel>,
    ) -> Result<Self> {
        let isa = Isa::detect();
        let refuse = |graph: &'static str| move |what: String| Error::contract(graph, what);
        let encoder_plan = plan::lower_engine(file, manifest, Graph::Encoder, "cpu")?;
        let encoder = Program::compile(&encoder_plan, isa, int8, 0, &[]).map_err(refuse("encoder"))?;
        let mut features = Vec::new();
        for (name, slot) in encoder.outputs.iter().filter(|(name, _)| name != "ctx") {
            if !matches!(slot.place, Place::Arena(_)) {
                return Err(Error::contract("encoder", format!("output `{name}` is a constant")));
            }
            features.push((name.as_str(), *slot));
        }
        let decoder_plan = plan::lower_engine(file, manifest, Graph::Decoder, "cpu")?;
        let decoder =
            Program::compile(&decoder_plan, isa, int8, encoder.arena_end, &features).map_err(refuse("decoder"))?;
        let find = |program: &Program, outputs: bool, name: &str, graph: &'static str| {
            let list = if outputs { &program.outputs } else { &program.inputs };
            list.iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| *s)
                .ok_or_else(|| Error::contract(graph, format!("the graph has no `{name}`")))
        };
        let logits = decoder.outputs.first().map(|(_, s)| *s).ok_or_else(|| Error::contract("decoder", "no output"))?;
        let shared = Shared {
            image: find(&encoder, false, "image", "encoder")?,
            mask: find(&encoder, false, "mask", "encoder")?,
            ctx_out: find(&encoder, true, "ctx", "encoder")?,
            ctx_in: find(&decoder, false, "ctx", "decoder")?,
            ctx_valid: find(&decoder, false, "ctx_valid", "decoder")?,
            logits,
            arena: encoder.arena_end.max(decoder.arena_end),
            scratch: match threads {
                0 | 1 => encoder.scratch.max(decoder.scratch),
                _ => [&encoder, &decoder].iter().map(|p| p.scratch.max(kernels::im2col_len(p))).max().unwrap_or(0),
            },
            threads: threads.max(1),
            panel: kernels::panel_len(&encoder).max(kernels::panel_len(&decoder)),
            encoder,
            decoder,
        };
        for slot in [shared.image, shared.mask, shared.ctx_in, shared.ctx_valid] {
            if !matches!(slot.place, Place::Arena(_)) {
                return Err(Error::contract("graph", "an input is a constant"));
            }
        }
        let count = |kind: fn(&program::Extra) -> bool| {
            [&shared.encoder, &shared.decoder].iter().flat_map(|p| &p.steps).filter(|s| kind(&s.extra)).count()
        };
        let converted = count(|e| matches!(e, program::Extra::Int8Conv { .. }));
        let winograd = count(program::Extra::is_winograd);
        let int8 = match int8 {
            Some(kernel) => format!("{converted} int8 convolutions on {} kernels", kernel.name()),
            None => "no int8 kernel for this CPU: int8 convolutions in f32".into(),
        };
        log::info!(
            "cpu: native executor ({} kernels; {winograd} Winograd convolutions; {int8}; {} thread(s)), \
             {} + {} steps, {:.1} MiB of arena per session",
            isa.name(),
            shared.threads,
            shared.encoder.steps.len(),
            shared.decoder.steps.len(),
            (shared.arena * 4) as f64 / (1 << 20) as f64
        );
        Ok(NativeBackend { shared: Arc::new(shared) })
    }
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn runner(&self) -> Result<Box<dyn Runner>> {
        let shared = self.shared.clone();
        let threads = Threads::new(shared.threads, shared.panel)
            .map_err(|e| error(format!("cannot start {} threads: {e}", shared.threads)))?;
        Ok(Box::new(NativeRunner {
            arena: vec![0.0; shared.arena],
            scratch: vec![0.0; shared.scratch],
            threads,
            encoded: false,
            shared,
        }))
    }
}

/// One session's memory and threads: the arena both programs run in, the kernels' scratch and
/// the pool.
struct NativeRunner {
    shared: Arc<Shared>,
    arena: Vec<f32>,
    scratch: Vec<f32>,
    threads: Threads,
    /// Whether the encoder has run, so the decoder has features to read.
    encoded: bool,
}

impl NativeRunner {
    /// Copies `data` into the arena at `slot`.
    fn write(&mut self, slot: Slot, data: &[f32], what: &str) -> Result<()> {
        let Place::Arena(at) = slot.place else { unreachable!("inputs are arena slots (checked at open)") };
        if data.len() != slot.len {
            return Err(error(format!("{what} has {} values, the graph takes {}", data.len(), slot.len)));
        }
        self.arena[at..at + slot.len].copy_from_slice(data);
        Ok(())
    }

    /// Copies the arena (or constants of `program`) at `slot` into `out`.
    fn read(&self, program: &Program, slot: Slot, out: &mut [f32], what: &str) -> Result<()> {
        let src = match slot.place {
            Place::Arena(at) => &self.arena[at..at + slot.len],
            Place::Constant(at) => &program.constants[at..at + slot.len],
        };
        if out.len() != src.len() {
            return Err(error(format!("{what} has room for {} values, the graph gives {}", out.len(), src.len())));
        }
        out.copy_from_slice(src);
        Ok(())
    }

    /// Runs `program`; a panic (a bug: the sizes were checked at open) becomes an error.
    fn run(&mut self, decoder: bool, graph: &str) -> Result<()> {
        let shared = &self.shared;
        let program = if decoder { &shared.decoder } else { &shared.encoder };
        let (arena, scratch, threads) = (&mut self.arena, &mut self.scratch, &self.threads);
        crate::guard::no_panic(|| kernels::run(program, arena, scratch, threads, None))
            .map_err(|panic| error(format!("{graph} failed: the native executor panicked: {panic}")))
    }
}

impl Runner for NativeRunner {
    fn encode(&mut self, image: &[f32], mask: &[f32], ctx: &mut [f32]) -> Result<()> {
        let shared = self.shared.clone();
        self.encoded = false;
        self.write(shared.image, image, "the image")?;
        self.write(shared.mask, mask, "the mask")?;
        self.run(false, "encoder")?;
        self.read(&shared.encoder, shared.ctx_out, ctx, "the context")?;
        self.encoded = true;
        Ok(())
    }

    fn decode(&mut self, ctx: &[f32], ctx_valid: &[f32], logits: &mut [f32]) -> Result<()> {
        if !self.encoded {
            return Err(error("decode called before encode".into()));
        }
        let shared = self.shared.clone();
        self.write(shared.ctx_in, ctx, "the context")?;
        self.write(shared.ctx_valid, ctx_valid, "the context validity")?;
        self.run(true, "decoder")?;
        self.read(&shared.decoder, shared.logits, logits, "the logits")
    }
}

/// An [`Error::Backend`] of this backend.
fn error(what: String) -> Error {
    Error::Backend { backend: "cpu", what }
}
