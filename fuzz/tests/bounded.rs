//! The fuzzer, bounded for CI: a fixed number of seeded cases of every class over the bundled
//! engines, isolated in child processes, and not one defect (panic, signal, hang, or a mask from
//! non-finite logits). `segicl-fuzz --seconds N` runs it for longer.

use std::process::Command;

#[test]
fn bounded_fuzzing_of_the_bundled_engines_finds_no_defect() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_segicl-fuzz"))
        .args(["--cases", "480", "--seed", "2026", "--jobs", "2", "--json", "--out"])
        .arg(out.path())
        .output()
        .expect("segicl-fuzz runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let rows = json["rows"].as_array().unwrap();
    let count = |class: &str, outcome: &str| -> u64 {
        rows.iter()
            .filter(|r| r["class"] == class && (outcome.is_empty() || r["outcome"] == outcome))
            .map(|r| r["cases"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(json["cases"], 480);
    for class in ["container", "manifest", "shots", "onnx"] {
        assert_eq!(count(class, ""), 120, "{class}: {stdout}");
    }
    // The damage reaches every stage: refused by the container and manifest checks, by the graph
    // loader, at run time, and some damaged engines still segment.
    assert!(count("container", "refused at open") > 0 && count("manifest", "refused at open") > 0, "{stdout}");
    assert!(count("onnx", "refused at open") > 0 && count("onnx", "segmented") > 0, "{stdout}");
    let defects: Vec<_> = rows.iter().filter(|r| r["defect"] == true).collect();
    assert!(
        defects.is_empty() && run.status.success(),
        "defects: {defects:?}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
}
