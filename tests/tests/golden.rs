//! The prototype engine's masks on fixed synthetic frames, as CRC-32s recorded on x86-64
//! (`tests/golden/prototype-masks.txt`): the same bytes on every architecture (CI runs this
//! test natively and under qemu-aarch64) and from both CPU backends (the native executor, with
//! its AVX-512, AVX2 or portable kernels, and tract). `SEGICL_UPDATE_GOLDEN=1` rewrites the file
//! (from tract).

use segicl::{BackendChoice, Engine, EngineOptions};
use segicl_eval::synthetic::Task;
use segicl_tests::{prototype_path, sample, segment, set_shots};

#[test]
fn masks_match_the_recorded_ones() {
    for backend in [BackendChoice::Tract, BackendChoice::Cpu] {
        let engine = Engine::open(prototype_path(), &EngineOptions { backend, threads: 1 }).unwrap();
        check(&engine);
    }
}

fn check(engine: &Engine) {
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
    if std::env::var_os("SEGICL_UPDATE_GOLDEN").is_some() && engine.backend_name() == "tract" {
        std::fs::write(&path, &lines).unwrap();
    }
    let recorded = std::fs::read_to_string(&path).unwrap_or_default();
    let backend = engine.backend_name();
    assert_eq!(lines, recorded, "{backend}: masks differ from {} on {}", path.display(), std::env::consts::ARCH);
}
