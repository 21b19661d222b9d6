//! The refiner's two graphs: prepared once per refiner ([`RefinerGraphs`]), run by each session
//! through its own [`GraphStates`]. They run on the CPU with tract, or, in a build with the
//! `tensorrt` feature, as TensorRT plans on the GPU. A build without tract or TensorRT opens no
//! refiner (the CPU types are then uninhabited, and opening says why).

use crate::backend::BackendChoice;
use crate::error::Result;
use crate::format::EngineFile;

use super::RefinerManifest;

#[cfg(feature = "tract")]
use with_tract::{GraphStates as CpuStates, RefinerGraphs as CpuGraphs};
#[cfg(not(feature = "tract"))]
use without_tract::{GraphStates as CpuStates, RefinerGraphs as CpuGraphs};

/// Both graphs, prepared on the backend that runs them.
pub(crate) enum RefinerGraphs {
    /// On the CPU, with tract.
    Cpu(CpuGraphs),
    /// On the GPU, as TensorRT plans.
    #[cfg(feature = "tensorrt")]
    TensorRt(std::sync::Arc<crate::backend::tensorrt::DevicePlans>),
}

impl RefinerGraphs {
    /// Prepares both graphs of a verified refiner file on `backend`: `tensorrt` on the GPU,
    /// `auto` there when this build has TensorRT and it opens (else on the CPU, logging why),
    /// the others on the CPU with `threads` threads. (`cuda` is refused before this.)
    pub(crate) fn prepare(
        file: &EngineFile,
        manifest: &RefinerManifest,
        backend: BackendChoice,
        threads: usize,
    ) -> Result<Self> {
        let cpu = || Ok(RefinerGraphs::Cpu(CpuGraphs::prepare(file, manifest, threads)?));
        match backend {
            BackendChoice::TensorRt => Self::tensorrt(file, manifest),
            BackendChoice::Auto if cfg!(feature = "tensorrt") => Self::tensorrt(file, manifest).or_else(|e| {
                log::info!("refiner: on the cpu, not tensorrt: {e}");
                cpu()
            }),
            _ => cpu(),
        }
    }

    #[cfg(feature = "tensorrt")]
    fn tensorrt(file: &EngineFile, manifest: &RefinerManifest) -> Result<Self> {
        let plans =
            crate::backend::tensorrt::DevicePlans::open(file, &manifest.precision, &manifest.tensors, "refiner")?;
        Ok(RefinerGraphs::TensorRt(std::sync::Arc::new(plans)))
    }

    #[cfg(not(feature = "tensorrt"))]
    fn tensorrt(_: &EngineFile, _: &RefinerManifest) -> Result<Self> {
        Err(crate::Error::Backend {
            backend: "tensorrt",
            what: "this build has no TensorRT backend: build with --features tensorrt,cuda-12 (JetPack 6) or \
                   tensorrt,cuda, or run the refiner with --backend cpu"
                .into(),
        })
    }

    /// `cpu` or `tensorrt`.
    pub(crate) fn backend_name(&self) -> &'static str {
        match self {
            RefinerGraphs::Cpu(_) => "cpu",
            #[cfg(feature = "tensorrt")]
            RefinerGraphs::TensorRt(_) => "tensorrt",
        }
    }

    /// Run states for one session.
    pub(crate) fn states(&self, manifest: &RefinerManifest) -> Result<GraphStates> {
        match self {
            RefinerGraphs::Cpu(graphs) => Ok(GraphStates::Cpu(Box::new(graphs.states(manifest)?))),
            #[cfg(feature = "tensorrt")]
            RefinerGraphs::TensorRt(plans) => {
                Ok(GraphStates::TensorRt { session: plans.session()?, embedding: vec![0.0; manifest.embedding_len()] })
            }
        }
    }
}

/// One session's states of both graphs.
pub(crate) enum GraphStates {
    /// tract's states and input tensors (boxed: the variants differ in size).
    Cpu(Box<CpuStates>),
    /// A session of the plans, and the embedding as the encoder leaves it on the host.
    #[cfg(feature = "tensorrt")]
    TensorRt { session: crate::backend::tensorrt::PlanSession, embedding: Vec<f32> },
}

impl GraphStates {
    /// Runs the encoder on `image` (C planes of N×N) and hands its embedding to `keep`.
    pub(crate) fn encode(&mut self, image: &[f32], keep: impl FnOnce(&[f32])) -> Result<()> {
        match self {
            GraphStates::Cpu(states) => states.encode(image, keep),
            #[cfg(feature = "tensorrt")]
            GraphStates::TensorRt { session, embedding } => {
                use crate::manifest::Graph;
                session.run(Graph::Encoder, &[("image", image)], &mut [("embedding", embedding)])?;
                crate::Error::check_finite(embedding, "refiner encoder", "the embedding")?;
                keep(embedding);
                Ok(())
            }
        }
    }

    /// Runs the decoder on `embedding` and the box `[x0, y0, x1, y1]` (encoder input pixels)
    /// into `logits` (M×M); non-finite logits are an error.
    pub(crate) fn decode(&mut self, embedding: &[f32], b: &[f32; 4], logits: &mut [f32]) -> Result<()> {
        match self {
            GraphStates::Cpu(states) => states.decode(embedding, b, logits),
            #[cfg(feature = "tensorrt")]
            GraphStates::TensorRt { session, .. } => {
                use crate::manifest::Graph;
                session.run(Graph::Decoder, &[("embedding", embedding), ("box", b)], &mut [("logits", logits)])?;
                crate::Error::check_finite(logits, "refiner decoder", "the logits")
            }
        }
    }
}

#[cfg(feature = "tract")]
mod with_tract {
    use std::sync::Arc;

    use tract_onnx::prelude::*;

    use super::{EngineFile, RefinerManifest, Result};
    use crate::backend::tract::{fill, input_tensor, load, run_err, run_graph, run_options, GraphSource, Plan};
    use crate::format::Tag;
    use crate::manifest::{Direction, Graph};

    /// Both graphs, optimised for this CPU.
    pub(crate) struct RefinerGraphs {
        encoder: Plan,
        decoder: Plan,
        /// Whether the decoder takes `embedding` before `box`.
        embedding_first: bool,
        /// Position of `logits` among the decoder's outputs.
        logits_output: usize,
    }

    impl RefinerGraphs {
        /// Checks both graphs of a verified refiner file against its manifest and prepares them
        /// for `threads` threads.
        pub(crate) fn prepare(file: &EngineFile, manifest: &RefinerManifest, threads: usize) -> Result<Self> {
            let run = run_options(threads);
            let graph = |graph, name, section, tag| GraphSource {
                name,
                section,
                bytes: file.section(tag).expect("verified files have both graphs"),
                inputs: manifest.tensors(graph, Direction::Input).collect(),
                outputs: manifest.tensors(graph, Direction::Output).collect(),
            };
            let (encoder, _, _) = load(&graph(Graph::Encoder, "refiner encoder", "ENCODER", Tag::ENCODER), &run)?;
            let (decoder, dec_in, dec_out) =
                load(&graph(Graph::Decoder, "refiner decoder", "DECODER", Tag::DECODER), &run)?;
            let embedding_first = dec_in[0] == "embedding";
            let logits_output = dec_out.iter().position(|n| n == "logits").expect("checked by load");
            Ok(RefinerGraphs { encoder, decoder, embedding_first, logits_output })
        }

        /// Run states and input tensors for one session.
        pub(crate) fn states(&self, manifest: &RefinerManifest) -> Result<GraphStates> {
            let (n, c) = (manifest.input_size, manifest.colour.channels());
            let embedding = manifest.spec(Graph::Decoder, Direction::Input, "embedding").expect("validated");
            let backend_err = |e: TractError| crate::Error::Backend { backend: "tract", what: e.to_string() };
            Ok(GraphStates {
                encoder: self.encoder.spawn().map_err(backend_err)?,
                decoder: self.decoder.spawn().map_err(backend_err)?,
                image: input_tensor(&[1, c, n, n])?,
                embedding: input_tensor(&embedding.shape)?,
                boxes: input_tensor(&[1, 4])?,
                embedding_first: self.embedding_first,
                logits_output: self.logits_output,
            })
        }
    }

    /// One session's states of both graphs, with their input tensors (reused from run to run).
    pub(crate) struct GraphStates {
        encoder: TypedSimpleState,
        decoder: TypedSimpleState,
        image: Arc<Tensor>,
        embedding: Arc<Tensor>,
        boxes: Arc<Tensor>,
        embedding_first: bool,
        logits_output: usize,
    }

    impl GraphStates {
        /// Runs the encoder on `image` (C planes of N×N) and hands its embedding to `keep`.
        pub(crate) fn encode(&mut self, image: &[f32], keep: impl FnOnce(&[f32])) -> Result<()> {
            let image = fill(&mut self.image, image)?;
            let outputs = run_graph(&mut self.encoder, tvec![image], "refiner encoder")?;
            let embedding = outputs[0]
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>())
                .map_err(|e| run_err("refiner encoder", e))?;
            keep(embedding);
            Ok(())
        }

        /// Runs the decoder on `embedding` and the box `[x0, y0, x1, y1]` (encoder input pixels)
        /// into `logits` (M×M); non-finite logits are an error.
        pub(crate) fn decode(&mut self, embedding: &[f32], b: &[f32; 4], logits: &mut [f32]) -> Result<()> {
            let embedding = fill(&mut self.embedding, embedding)?;
            let boxes = fill(&mut self.boxes, b)?;
            let inputs = if self.embedding_first { tvec![embedding, boxes] } else { tvec![boxes, embedding] };
            let outputs = run_graph(&mut self.decoder, inputs, "refiner decoder")?;
            let out = outputs[self.logits_output]
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>())
                .map_err(|e| run_err("refiner decoder", e))?;
            crate::Error::check_finite(out, "refiner decoder", "the logits")?;
            logits.copy_from_slice(out);
            Ok(())
        }
    }
}

#[cfg(not(feature = "tract"))]
mod without_tract {
    use super::{EngineFile, RefinerManifest, Result};

    /// No refiner opens in a build without tract.
    pub(crate) enum RefinerGraphs {}

    impl RefinerGraphs {
        /// Refuses: refiners run on tract, which this build leaves out.
        pub(crate) fn prepare(_: &EngineFile, _: &RefinerManifest, _: usize) -> Result<Self> {
            Err(crate::Error::Backend {
                backend: "tract",
                what: "refiners run on tract, which this build leaves out: build segicl with --features tract".into(),
            })
        }

        pub(crate) fn states(&self, _: &RefinerManifest) -> Result<GraphStates> {
            match *self {}
        }
    }

    /// Never built: see [`RefinerGraphs`].
    pub(crate) enum GraphStates {}

    impl GraphStates {
        pub(crate) fn encode(&mut self, _: &[f32], _: impl FnOnce(&[f32])) -> Result<()> {
            match *self {}
        }

        pub(crate) fn decode(&mut self, _: &[f32], _: &[f32; 4], _: &mut [f32]) -> Result<()> {
            match *self {}
        }
    }
}
