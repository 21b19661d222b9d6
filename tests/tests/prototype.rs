//! The prototype engine segments its synthetic task family in context, and follows the shots
//! when the task switches on the same frame.

use segicl::metrics::{mean_std, overlap};
use segicl_eval::synthetic::{self, SceneKind, Task};
use segicl_tests::{prototype, segment, set_shots, synthetic_dice};

/// Shots and queries are disjoint seeds, and none is a default-shot seed of the engine.
const SHOTS: [u64; 3] = [11, 12, 13];
const QUERIES: std::ops::Range<u64> = 200..216;

#[test]
fn three_shot_dice_on_every_synthetic_task() {
    let engine = prototype();
    let mut report = Vec::new();
    for task in Task::ALL {
        let dice = synthetic_dice(&engine, task, &SHOTS, QUERIES);
        let (mean, _) = mean_std(&dice);
        report.push(format!("{} {mean:.3}", task.name()));
        assert!(mean >= 0.8, "{}: 3-shot mean Dice {mean:.3} < 0.8 ({dice:?})", task.name());
    }
    eprintln!("3-shot mean Dice: {}", report.join(", "));
}

#[test]
fn task_switch_follows_the_shots() {
    let engine = prototype();
    let mut s = engine.session().unwrap();
    for (kind, a, b) in [
        (SceneKind::Ultrasound, Task::UsLesion, Task::UsBright),
        (SceneKind::Fundus, Task::FundusDisc, Task::FundusCup),
    ] {
        let mut own_dice = [Vec::new(), Vec::new()];
        for seed in 300..306 {
            let scene = synthetic::scene(kind, seed);
            for (k, (task, other)) in [(a, b), (b, a)].into_iter().enumerate() {
                set_shots(&mut s, task, &SHOTS);
                let pred = segment(&mut s, &scene.image);
                let own = overlap(&pred.data, scene.mask(task)).dice;
                let theirs = overlap(&pred.data, scene.mask(other)).dice;
                assert!(
                    theirs < own - 0.2,
                    "seed {seed}: shots of {} give Dice {own:.3} on it but {theirs:.3} on {}",
                    task.name(),
                    other.name()
                );
                own_dice[k].push(own);
            }
        }
        for (task, dice) in [a, b].into_iter().zip(own_dice) {
            let (mean, _) = mean_std(&dice);
            assert!(mean >= 0.8, "{}: mean Dice {mean:.3} on frames holding both structures ({dice:?})", task.name());
        }
    }
}
