//! `synth`: write synthetic image/mask pairs as a folder that `eval` and `segicl-quantize --calib`
//! read, so both run without any real data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use segicl_eval::evaluation::write_synthetic;
use segicl_eval::synthetic::Task;

/// Arguments of `synth`.
#[derive(clap::Args)]
pub struct Args {
    /// Synthetic task: us-lesion, us-bright, fundus-disc or fundus-cup.
    #[arg(long)]
    task: String,
    /// Pairs to write.
    #[arg(long, default_value_t = 24)]
    count: u64,
    /// Seed of the first pair (pair i has seed FIRST + i).
    #[arg(long, default_value_t = 1000)]
    first: u64,
    /// Folder to write images/ and masks/ into (created if missing).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(task) = Task::from_name(&args.task) else {
        bail!("unknown synthetic task `{}` (us-lesion, us-bright, fundus-disc, fundus-cup)", args.task)
    };
    write_synthetic(&args.out, task, args.first..args.first + args.count)?;
    println!("wrote {} {} pairs to {}", args.count, task.name(), args.out.display());
    Ok(ExitCode::SUCCESS)
}
