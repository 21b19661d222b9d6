//! `inspect`: what an engine (or refiner) file holds, without preparing any backend.

use std::process::ExitCode;

use segicl::backend::tensorrt::plans;
use segicl::format::{EngineFile, Layout};
use segicl::refine::RefinerMetadata;
use segicl::EngineMetadata;

use crate::{Global, RefinerArg};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    refiner: RefinerArg,
}

/// The section table as JSON rows.
fn sections_json(layout: &Layout) -> Vec<serde_json::Value> {
    layout
        .sections
        .iter()
        .map(|s| {
            serde_json::json!({
                "tag": s.tag.name(), "offset": s.offset, "length": s.length,
                "crc32": format!("{:08x}", s.crc32), "required": s.flags & segicl::format::FLAG_REQUIRED != 0,
            })
        })
        .collect()
}

/// The file, its sections, manifest, card and baked TensorRT plans as one JSON object.
fn print_json(
    file: &EngineFile,
    kind: &str,
    manifest: &impl serde::Serialize,
    card: Option<&str>,
    tensorrt_plans: &[serde_json::Value],
) -> anyhow::Result<ExitCode> {
    let layout = file.layout();
    let out = serde_json::json!({
        "path": file.path(), "size": file.len(), "kind": kind,
        "format": format!("{}.{}", layout.major, layout.minor),
        "sections": sections_json(layout), "manifest": manifest, "card": card,
        "tensorrt_plans": tensorrt_plans,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// The first two lines: the file, what it is and its format; the model.
fn print_header(file: &EngineFile, what: &str, name: &str, version: &str) {
    let layout = file.layout();
    println!("{}: {what} {}.{}, {} bytes", file.path().display(), layout.major, layout.minor, file.len());
    println!("model      {name} {version}");
}

/// The section table as text.
fn print_sections(layout: &Layout) {
    println!("sections");
    for s in &layout.sections {
        println!(
            "  {:<9} offset {:>9}  length {:>9}  crc32 {:08x}{}",
            s.tag.name(),
            s.offset,
            s.length,
            s.crc32,
            if s.flags & segicl::format::FLAG_REQUIRED != 0 { "  required" } else { "" }
        );
    }
}

/// The tensor table as text.
fn print_tensors(tensors: &[segicl::manifest::TensorSpec]) {
    println!("tensors");
    for t in tensors {
        println!(
            "  {:<8} {:<7} {:<10} {:?} {:?}",
            format!("{:?}", t.graph),
            format!("{:?}", t.direction),
            t.name,
            t.dtype,
            t.shape
        );
    }
}

/// What a refiner file holds.
fn refiner(path: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let meta = RefinerMetadata::open(path)?;
    let (layout, m) = (meta.file.layout(), &meta.manifest);
    if json {
        return print_json(&meta.file, "refiner", m, meta.card(), &[]);
    }
    print_header(&meta.file, "refiner, format", &m.name, &m.version);
    println!(
        "input      {}² ({:?}), colour={:?} normalisation={:?}; logits {}²",
        m.input_size,
        m.resize,
        m.colour,
        m.normalisation,
        m.output_size()
    );
    println!(
        "box        (x0, y0, x1, y1) in input pixels, default margin {} of its size; threshold {}",
        m.box_margin, m.threshold
    );
    println!("precision  encoder {:?}, decoder {:?}", m.precision.encoder, m.precision.decoder);
    print_tensors(&m.tensors);
    print_sections(layout);
    if let Some(card) = meta.card() {
        println!("card  {}", card.lines().next().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(global: &Global, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(path) = args.refiner.path() {
        return refiner(&path, args.json);
    }
    let meta = EngineMetadata::open(&global.engine)?;
    let layout = meta.file.layout();
    let m = &meta.manifest;
    let baked = plans::baked(&meta.file);
    if args.json {
        let rows: Vec<_> = baked
            .iter()
            .map(|b| {
                serde_json::json!({
                    "graph": plans::graph_name(b.graph), "bytes": b.len,
                    "key": b.key.as_ref().ok(), "problem": b.problem(),
                })
            })
            .collect();
        return print_json(&meta.file, "engine", m, meta.card(), &rows);
    }
    print_header(&meta.file, "engine format", &m.name, &m.version);
    println!(
        "input      R={} C={} colour={:?} normalisation={:?}",
        m.resolution, m.channels, m.colour, m.normalisation
    );
    println!("context    S={} shots × T={} tokens × D={}", m.max_shots, m.tokens_per_shot, m.token_width);
    println!(
        "precision  encoder {:?}, decoder {:?}; threshold {}",
        m.precision.encoder, m.precision.decoder, m.threshold
    );
    if let Some(c) = &m.calibration {
        let float = if c.float_nodes.is_empty() { "nothing".to_string() } else { c.float_nodes.join(", ") };
        let method = format!("{:?}", c.method).to_lowercase();
        println!("calibration {method} on {} pairs; in float: {float}", c.pairs);
    }
    print_tensors(&m.tensors);
    print_sections(layout);
    for b in &baked {
        let what = match (&b.key, b.problem()) {
            (Ok(key), None) => key.summary(),
            (_, Some(problem)) => format!("unusable: {problem}"),
            (Err(why), None) => why.clone(),
        };
        println!("tensorrt plan  {} ({} KiB): {what}", plans::graph_name(b.graph), b.len >> 10);
    }
    let tasks: Vec<String> = meta.shots.tasks.iter().map(|(n, s)| format!("{n} ({})", s.len())).collect();
    println!("default shots  {}", if tasks.is_empty() { "none".into() } else { tasks.join(", ") });
    if let Some(card) = meta.card() {
        println!("card  {}", card.lines().next().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}
