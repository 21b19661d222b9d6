//! The per-task gate: with two or three shots set, each shot is segmented from the others (leave
//! one out; a single shot is segmented from itself) and refined by every candidate box rule and
//! margin; the best candidate is kept if it beats the first pass on the shots by [`MIN_GAIN`], and
//! refinement is off for the task otherwise.

use super::boxes::BoxRule;

/// One way to refine: a box rule and a margin.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Candidate {
    /// Which foreground the box surrounds.
    pub rule: BoxRule,
    /// Margin on each side, as a fraction of the box's width and height.
    pub margin: f32,
}

/// The margins the gate tries with each rule (next to the session's own).
pub const MARGINS: [f32; 4] = [0.0, 0.05, 0.1, 0.2];

/// Mean Dice on the shots by which the best candidate must beat the first pass: two or three
/// shots are a noisy estimate, and a refinement that only ties costs a second model per frame.
pub const MIN_GAIN: f64 = 0.01;

/// The candidates the gate tries: `default` first, then every rule with every margin of
/// [`MARGINS`] not already listed.
pub fn candidates(default: Candidate) -> Vec<Candidate> {
    let mut all = vec![default];
    for rule in BoxRule::ALL {
        for margin in MARGINS {
            let c = Candidate { rule, margin };
            if !all.contains(&c) {
                all.push(c);
            }
        }
    }
    all
}

/// What the gate found on the shots and what it decided.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GateReport {
    /// Shots scored, each from the others (one shot: from itself); 0 when the gate is off, in
    /// which case the session's own rule and margin are used.
    pub shots: usize,
    /// Mean Dice of the first pass on the shots.
    pub pass1: f64,
    /// Mean Dice on the shots of each candidate, refined.
    pub candidates: Vec<(Candidate, f64)>,
    /// The candidate refining this task's frames; `None`: refinement is off for this task.
    pub chosen: Option<Candidate>,
}

/// The candidate with the best mean Dice (the first listed on a tie) if it beats the first pass's
/// by at least [`MIN_GAIN`]; `None` otherwise.
pub fn choose(pass1: f64, scored: &[(Candidate, f64)]) -> Option<Candidate> {
    let mut best: Option<(Candidate, f64)> = None;
    for &(c, dice) in scored {
        if best.is_none_or(|(_, b)| dice > b) {
            best = Some((c, dice));
        }
    }
    best.filter(|&(_, dice)| dice >= pass1 + MIN_GAIN).map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LARGEST: Candidate = Candidate { rule: BoxRule::LargestBlob, margin: 0.05 };
    const ALL: Candidate = Candidate { rule: BoxRule::AllBlobs, margin: 0.2 };

    #[test]
    fn the_best_candidate_above_the_first_pass_is_kept() {
        assert_eq!(choose(0.70, &[(LARGEST, 0.80), (ALL, 0.85)]), Some(ALL));
        // A tie goes to the first listed (the session's own rule comes first).
        assert_eq!(choose(0.70, &[(LARGEST, 0.80), (ALL, 0.80)]), Some(LARGEST));
    }

    #[test]
    fn refinement_is_off_when_no_candidate_beats_the_first_pass() {
        assert_eq!(choose(0.80, &[(LARGEST, 0.79), (ALL, 0.80)]), None);
        assert_eq!(choose(0.80, &[(LARGEST, 0.805)]), None, "a gain under MIN_GAIN is not enough");
        assert_eq!(choose(0.5, &[]), None);
    }

    #[test]
    fn candidates_start_with_the_default_and_have_no_duplicates() {
        let c = candidates(LARGEST);
        assert_eq!(c[0], LARGEST);
        assert_eq!(c.len(), BoxRule::ALL.len() * MARGINS.len());
        let odd = Candidate { rule: BoxRule::AllBlobs, margin: 0.3 };
        assert_eq!(candidates(odd).len(), BoxRule::ALL.len() * MARGINS.len() + 1);
    }
}
