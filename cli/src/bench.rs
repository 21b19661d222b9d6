//! `bench`: latency of each stage of a frame with cached shots, and of the uncached path
//! (every shot re-encoded for every frame) as the baseline in the same run; with --refine, the
//! refinement pass's stages and the gate.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use segicl::backend::DeviceTimings;
use segicl::{MaskMut, OwnedImage, PixelFormat};
use segicl_eval::synthetic::Task;

use crate::{Global, RefineArgs};
use segicl_eval::evaluation::synthetic_samples;

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Shots in the context (1 to 3).
    #[arg(long, default_value_t = 3)]
    shots: usize,
    /// Timed frames per path.
    #[arg(long, default_value_t = 100)]
    frames: usize,
    /// Untimed frames first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Synthetic task whose frames and shots are used.
    #[arg(long, default_value = "us-lesion")]
    task: String,
    /// Also time the refinement pass (every frame refined, whatever the gate says) and the gate.
    #[command(flatten)]
    refine: RefineArgs,
    /// Timed refined frames (with --refine; the refiner's encoder costs about a second a frame
    /// on one CPU core).
    #[arg(long, default_value_t = 10, requires = "refine")]
    refine_frames: usize,
    /// Frames of this size (WIDTHxHEIGHT, e.g. 1920x1080) instead of the synthetic task's own
    /// (320×256): its frames scaled by nearest neighbour, to time pre- and post-processing at a
    /// camera's resolution. The shots keep their size.
    #[arg(long, value_parser = parse_size)]
    frame_size: Option<(usize, usize)>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// `WIDTHxHEIGHT` → (width, height), each 1 to 16384.
fn parse_size(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("`{text}` is not WIDTHxHEIGHT (e.g. 1920x1080, each 1 to 16384)");
    let (w, h) = text.split_once(['x', '×']).ok_or_else(bad)?;
    let (w, h): (usize, usize) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if !(1..=16384).contains(&w) || !(1..=16384).contains(&h) {
        return Err(bad());
    }
    Ok((w, h))
}

/// `image` scaled to `width`×`height` by nearest neighbour.
fn scaled(image: &OwnedImage, (width, height): (usize, usize)) -> OwnedImage {
    let bpp = image.format.bytes_per_pixel();
    let mut out = OwnedImage::zeros(width, height, image.format);
    for (y, row) in out.data.chunks_exact_mut(width * bpp).enumerate() {
        let src = &image.data[(y * image.height / height) * image.width * bpp..][..image.width * bpp];
        for (x, px) in row.chunks_exact_mut(bpp).enumerate() {
            let sx = x * image.width / width;
            px.copy_from_slice(&src[sx * bpp..(sx + 1) * bpp]);
        }
    }
    out
}

/// Percentiles and mean of a set of durations, in milliseconds.
struct Stats {
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Stats { p50: pick(0.5), p90: pick(0.9), p99: pick(0.99), mean: ms.iter().sum::<f64>() / ms.len() as f64 }
}

/// Times the refinement pass: the gate once per shot change, then `count` frames refined (the
/// gate's decision overridden), each stage, and a frame whose embedding is memoised.
fn refine_rows(
    engine: &segicl::Engine,
    refiner: &segicl::Refiner,
    options: segicl::RefineOptions,
    shots: &[segicl_eval::evaluation::Labelled],
    frames: &[segicl_eval::evaluation::Labelled],
    count: usize,
) -> anyhow::Result<Vec<(&'static str, Stats)>> {
    let mut session = engine.session()?;
    session.set_refiner(Some((refiner, options)))?;
    let mut gate = Vec::new();
    for (slot, shot) in shots.iter().enumerate() {
        session.set_shot(slot, &shot.image.view(), &shot.mask.view())?;
    }
    let started = Instant::now();
    session.tune_refiner()?;
    gate.push(started.elapsed());
    session.set_refiner(Some((refiner, segicl::RefineOptions { gate: false, ..options })))?;
    let (w, h) = (frames[0].image.width, frames[0].image.height);
    let mut mask = OwnedImage::zeros(w, h, PixelFormat::Gray8);
    let mut stages: [Vec<Duration>; 7] = Default::default();
    for i in 0..count + 1 {
        let frame = &frames[i % frames.len()].image;
        let started = Instant::now();
        session.segment(&frame.view(), &mut MaskMut::packed(&mut mask.data, w, h)?)?;
        let total = started.elapsed();
        let r = session.refine_timings().unwrap_or_default();
        if i == 0 || session.last_refine_box().is_none() {
            continue; // warm-up, or nothing to refine
        }
        let row = [r.boxing, r.preprocess, r.encoder, r.decoder, r.postprocess, session.timings().refine, total];
        for (stage, t) in stages.iter_mut().zip(row) {
            stage.push(t);
        }
    }
    if stages[6].is_empty() {
        bail!("pass 1 found nothing to refine on the bench frames");
    }
    let mut memoised = Vec::new();
    let frame = &frames[0].image;
    for _ in 0..5 {
        let started = Instant::now();
        session.segment(&frame.view(), &mut MaskMut::packed(&mut mask.data, w, h)?)?;
        memoised.push(started.elapsed());
    }
    let names = [
        "refine: box",
        "refine: preprocess",
        "refine: image encoder",
        "refine: prompt/mask decoder",
        "refine: postprocess",
        "refine: all stages",
        "frame refined (pass 1 + refine)",
    ];
    let mut rows: Vec<_> = names.into_iter().zip(stages.iter().map(|s| stats(s))).collect();
    rows.push(("frame refined, embedding memoised", stats(&memoised)));
    rows.push(("refine gate (once per change of shots)", stats(&gate)));
    Ok(rows)
}

/// Peak resident set size of this process in MiB (Linux), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    let Some(task) = Task::from_name(&args.task) else { bail!("unknown synthetic task `{}`", args.task) };
    if !(1..=3).contains(&args.shots) || args.frames == 0 {
        bail!("--shots must be 1 to 3 and --frames at least 1");
    }
    // The samples first: their making's temporaries are gone before the engine opens, so the
    // peak RSS is the runtime's, not the sample generator's.
    let shots = synthetic_samples(task, 1, args.shots);
    let mut frames = synthetic_samples(task, 500, 8);
    if let Some(size) = args.frame_size {
        for frame in &mut frames {
            frame.image = scaled(&frame.image, size);
        }
    }
    let opening = Instant::now();
    let engine = global.open()?;
    let open_ms = opening.elapsed().as_secs_f64() * 1e3;
    let mut session = engine.session()?;
    let (w, h) = (frames[0].image.width, frames[0].image.height);
    let mut mask = OwnedImage::zeros(w, h, PixelFormat::Gray8);

    let mut set_shot = Vec::new();
    let mut uncached = Vec::new();
    for i in 0..args.warmup + args.frames {
        let started = Instant::now();
        for slot in 0..3 {
            session.clear_shot(slot)?;
        }
        for (slot, shot) in shots.iter().enumerate() {
            let t = Instant::now();
            session.set_shot(slot, &shot.image.view(), &shot.mask.view())?;
            if i >= args.warmup {
                set_shot.push(t.elapsed());
            }
        }
        let frame = &frames[i % frames.len()].image;
        session.segment(&frame.view(), &mut MaskMut::packed(&mut mask.data, w, h)?)?;
        if i >= args.warmup {
            uncached.push(started.elapsed());
        }
    }

    let (mut pre, mut enc, mut dec, mut post, mut frame_total) = (vec![], vec![], vec![], vec![], vec![]);
    let mut device: Vec<DeviceTimings> = vec![];
    for i in 0..args.warmup + args.frames {
        let frame = &frames[i % frames.len()].image;
        let started = Instant::now();
        session.segment(&frame.view(), &mut MaskMut::packed(&mut mask.data, w, h)?)?;
        let total = started.elapsed();
        if i >= args.warmup {
            let t = session.timings();
            pre.push(t.preprocess);
            enc.push(t.encoder);
            dec.push(t.decoder);
            post.push(t.postprocess);
            frame_total.push(total);
            device.extend(session.device_timings());
        }
    }

    let mut rows = vec![
        ("preprocess", stats(&pre)),
        ("encoder", stats(&enc)),
        ("decoder", stats(&dec)),
        ("postprocess", stats(&post)),
        ("frame (cached context)", stats(&frame_total)),
        ("set-shot (one shot)", stats(&set_shot)),
        ("frame (uncached: shots re-encoded)", stats(&uncached)),
    ];
    if !device.is_empty() {
        // Device-side times from the backend's events (CUDA), for the same cached frames.
        let stage = |time: fn(&DeviceTimings) -> Duration| stats(&device.iter().map(time).collect::<Vec<_>>());
        rows.extend([
            ("device: upload (image, context)", stage(|d| d.upload)),
            ("device: encoder", stage(|d| d.encoder)),
            ("device: decoder", stage(|d| d.decoder)),
            ("device: download (tokens, logits)", stage(|d| d.download)),
            ("device: frame", stage(DeviceTimings::total)),
        ]);
    }
    let cached_fps = 1e3 / rows[4].1.mean;
    if let Some((refiner, options)) = args.refine.open(global, 4)? {
        rows.extend(refine_rows(&engine, &refiner, options, &shots, &frames, args.refine_frames)?);
    }
    let uncached_fps = 1e3 / rows[6].1.mean;
    let ratio = rows[6].1.p50 / rows[4].1.p50;
    // Before the bench's own lowering of the graphs below, which the runtime does not keep.
    let rss = peak_rss_mib();
    let gflop = frame_gflop(engine.path());
    if args.json {
        let stages: Vec<_> = rows
            .iter()
            .map(|(name, s)| serde_json::json!({"stage": name, "p50_ms": s.p50, "p90_ms": s.p90, "p99_ms": s.p99, "mean_ms": s.mean}))
            .collect();
        let out = serde_json::json!({
            "engine": engine.path(), "model": engine.manifest().name, "backend": engine.backend_name(),
            "threads": global.options.threads, "shots": args.shots, "frames": args.frames,
            "frame_size": [w, h], "stages": stages, "frames_per_s": cached_fps,
            "uncached_frames_per_s": uncached_fps, "uncached_over_cached_p50": ratio, "peak_rss_mib": rss,
            "open_ms": open_ms, "graph_gflop_per_frame": gflop,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} ({}), backend {}, {} thread(s), {} shot(s), {} frames of {w}×{h} ({})",
        engine.path().display(),
        engine.manifest().name,
        engine.backend_name(),
        global.options.threads,
        args.shots,
        args.frames,
        task.name()
    );
    println!("{:<40} {:>8} {:>8} {:>8} {:>8}", "stage", "p50 ms", "p90 ms", "p99 ms", "mean ms");
    for (name, s) in &rows {
        println!("{name:<40} {:>8.3} {:>8.3} {:>8.3} {:>8.3}", s.p50, s.p90, s.p99, s.mean);
    }
    println!(
        "frames/s cached {cached_fps:.1}, uncached {uncached_fps:.1}; uncached/cached frame time (p50) {ratio:.2}×"
    );
    match rss {
        Some(mib) => println!("peak RSS {mib:.1} MiB"),
        None => println!("peak RSS unknown (no /proc/self/status)"),
    }
    println!("engine open {open_ms:.1} ms");
    if let Some(gflop) = gflop {
        let graphs_ms = rows[1].1.p50 + rows[2].1.p50;
        println!(
            "graphs: {:.0} MFLOP per frame (convolutions, matrix products): {:.1} GFLOP/s at the p50s",
            gflop * 1e3,
            gflop / graphs_ms * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// GFLOP of one cached frame's encoder and decoder passes (their convolutions and matrix
/// products), counted on the lowered graphs; `None` when the engine's graphs do not lower.
fn frame_gflop(path: &std::path::Path) -> Option<f64> {
    use segicl::backend::plan::{flops, lower_engine};
    use segicl::manifest::Graph;
    let meta = segicl::EngineMetadata::open(path).ok()?;
    let graph = |g| lower_engine(&meta.file, &meta.manifest, g, "cpu").ok().map(|p| flops(&p));
    Some((graph(Graph::Encoder)? + graph(Graph::Decoder)?) as f64 / 1e9)
}
