//! The engine file refuses every kind of damage with a clear error and never panics.

use std::path::Path;

use segicl::format::{EngineWriter, Layout, Tag, ALIGNMENT, ENTRY_LEN, HEADER_LEN};
use segicl::{Engine, EngineMetadata, EngineOptions, Error};
use segicl_tests::prototype_path;

/// A small engine (tiny payloads) so that a full sweep stays fast.
fn small_engine() -> Vec<u8> {
    EngineWriter::new()
        .section(Tag::MANIFEST, br#"{"not":"checked at this level"}"#.to_vec())
        .section(Tag::ENCODER, (0..3000u32).map(|i| i as u8).collect())
        .section(Tag::DECODER, vec![7; 100])
        .section(Tag::CARD, b"card".to_vec())
        .to_bytes()
}

fn verify(bytes: &[u8]) -> segicl::Result<Layout> {
    Layout::verify(bytes, Path::new("test.plan"))
}

#[test]
fn round_trip_of_the_prototype_engine() {
    let parts = segicl_models::prototype::engine_parts().unwrap();
    let bytes = parts.to_bytes().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.plan");
    std::fs::write(&path, &bytes).unwrap();
    let meta = EngineMetadata::open(&path).unwrap();
    assert_eq!(meta.file.section(Tag::ENCODER).unwrap(), &parts.encoder[..]);
    assert_eq!(meta.file.section(Tag::DECODER).unwrap(), &parts.decoder[..]);
    assert_eq!(meta.card(), parts.card.as_deref());
    assert_eq!(meta.shots, parts.shots);
    assert_eq!(meta.manifest.default_shot_tasks, ["us-lesion", "us-bright", "fundus-disc", "fundus-cup"]);
    for s in &meta.file.layout().sections {
        assert_eq!(s.offset % ALIGNMENT as u64, 0, "{} aligned", s.tag.name());
    }
}

#[test]
fn committed_prototype_engine_is_what_the_builder_makes() {
    let built = segicl_models::prototype::engine_parts().unwrap().to_bytes().unwrap();
    let committed = std::fs::read(prototype_path()).unwrap();
    assert!(
        built == committed,
        "models/prototype.plan is stale: run `cargo run -p segicl-models --bin make-prototype`"
    );
}

#[test]
fn every_bit_of_header_and_table_is_covered() {
    let good = small_engine();
    verify(&good).unwrap();
    let table_end = HEADER_LEN + 4 * ENTRY_LEN;
    for bit in 0..table_end * 8 {
        let mut bad = good.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(verify(&bad).is_err(), "flip of bit {bit} (byte {}) accepted", bit / 8);
    }
}

#[test]
fn every_bit_of_payloads_and_padding_is_covered() {
    let good = small_engine();
    // Every byte after the table (payloads and the zero padding between them), one bit each,
    // rotating through the 8 bit positions.
    for byte in HEADER_LEN + 4 * ENTRY_LEN..good.len() {
        let mut bad = good.clone();
        bad[byte] ^= 1 << (byte % 8);
        let err = verify(&bad).expect_err(&format!("flip in byte {byte} accepted"));
        assert!(matches!(err, Error::Corrupt { .. }), "byte {byte}: {err}");
    }
}

#[test]
fn sampled_bits_of_the_real_engine_are_refused_at_open() {
    let good = std::fs::read(prototype_path()).unwrap();
    let layout = verify(&good).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.plan");
    for s in &layout.sections {
        for k in 0..4u64 {
            let byte = (s.offset + s.length * k / 4) as usize;
            let mut bad = good.clone();
            bad[byte] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let err = Engine::open(&path, &EngineOptions::default()).unwrap_err().to_string();
            assert!(err.contains(&s.tag.name()) && err.contains("checksum"), "{err}");
        }
    }
}

#[test]
fn truncation_anywhere_is_refused() {
    let good = std::fs::read(prototype_path()).unwrap();
    let mut cuts: Vec<usize> = (0..good.len()).step_by(4096).collect();
    cuts.extend([1, 7, 8, 63, 64, HEADER_LEN + 10, good.len() - 1]);
    for cut in cuts {
        let err = verify(&good[..cut]).expect_err(&format!("truncation at {cut} accepted"));
        assert!(matches!(err, Error::Corrupt { .. } | Error::NotAnEngine { .. }), "cut {cut}: {err}");
    }
    let mut longer = good.clone();
    longer.extend([0; 10]);
    assert!(verify(&longer).unwrap_err().to_string().contains("truncated or padded"));
}

/// One row per kind of bad file: what it is, and words its error must contain.
#[test]
fn bad_files_get_their_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = small_engine();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    let future = with(&|b| {
        b[8] = 2;
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    });
    let table: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("model.onnx", vec![0x08, 0x07, 0x12, 0x00], &["bare ONNX", "segicl-edge pack"]),
        ("model.plan", b"ftrt\x00\x00\x00\x00rest".to_vec(), &["TensorRT", "segicl-edge pack"]),
        ("empty.plan", vec![], &["empty"]),
        ("junk.plan", b"hello world, not an engine".to_vec(), &["bad magic"]),
        ("short.plan", good[..40].to_vec(), &["shorter than"]),
        ("future.plan", future, &["format 2.0", "upgrade"]),
    ];
    for (name, bytes, words) in table {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let err = EngineMetadata::open(&path).unwrap_err().to_string();
        for w in words {
            assert!(err.contains(w), "{name}: `{err}` lacks `{w}`");
        }
        assert!(err.contains(name), "{name}: `{err}` does not name the file");
    }
    let missing = EngineMetadata::open(&dir.path().join("nope.plan")).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("nope.plan"));
}

#[test]
fn manifest_and_graph_mismatches_name_the_tensor() {
    let mut parts = segicl_models::prototype::engine_parts().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.plan");
    // The manifest claims 4 features but the graphs produce 5.
    for t in parts.manifest.tensors.iter_mut().filter(|t| t.name == "feat_0") {
        t.shape[1] = 4;
    }
    std::fs::write(&path, parts.to_bytes().unwrap()).unwrap();
    let err = Engine::open(&path, &EngineOptions::default()).unwrap_err().to_string();
    assert!(err.contains("feat_0"), "{err}");
    // Encoder and decoder swapped.
    let mut parts = segicl_models::prototype::engine_parts().unwrap();
    std::mem::swap(&mut parts.encoder, &mut parts.decoder);
    std::fs::write(&path, parts.to_bytes().unwrap()).unwrap();
    let err = Engine::open(&path, &EngineOptions::default()).unwrap_err().to_string();
    assert!(err.starts_with("encoder:") && err.contains("feat_0"), "{err}");
}
