//! The prototype engine's masks on fixed synthetic frames, as CRC-32s recorded on x86-64
//! (`tests/golden/prototype-masks.txt`): the same bytes on every architecture (CI runs this
//! test natively and under qemu-aarch64). `SEGICL_UPDATE_GOLDEN=1` rewrites the file.

use segicl::synthetic::Task;
use segicl_tests::{prototype, sample, segment, set_shots};

#[test]
fn masks_match_the_recorded_ones() {
    let engine = prototype();
    let mut s = engine.session().unwrap();
    let mut lines = String::new();
    for task in Task::ALL {
        set_shots(&mut s, task, &[21, 22, 23]);
        for seed in [400, 401] {
            let (frame, _) = sample(task, seed);
            let mask = segment(&mut s, &frame);
            lines.push_str(&format!("{} {seed} {:08x}\n", task.name(), crc32fast::hash(&mask.data)));
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/prototype-masks.txt");
    if std::env::var_os("SEGICL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &lines).unwrap();
    }
    let recorded = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(lines, recorded, "masks differ from {} on {}", path.display(), std::env::consts::ARCH);
}
