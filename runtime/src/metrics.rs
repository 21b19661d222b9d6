//! Overlap scores between a predicted and a reference mask (pixels ≥ 128 are foreground).

/// Dice and IoU of one prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overlap {
    /// 2|A∩B| / (|A| + |B|); 1 when both are empty.
    pub dice: f64,
    /// |A∩B| / |A∪B|; 1 when both are empty.
    pub iou: f64,
}

/// Dice and IoU of `pred` against `truth` (same length).
pub fn overlap(pred: &[u8], truth: &[u8]) -> Overlap {
    assert_eq!(pred.len(), truth.len(), "masks of different sizes");
    let (mut inter, mut a, mut b) = (0u64, 0u64, 0u64);
    for (&p, &t) in pred.iter().zip(truth) {
        let (p, t) = (p >= 128, t >= 128);
        inter += (p && t) as u64;
        a += p as u64;
        b += t as u64;
    }
    if a + b == 0 {
        return Overlap { dice: 1.0, iou: 1.0 };
    }
    Overlap { dice: 2.0 * inter as f64 / (a + b) as f64, iou: inter as f64 / (a + b - inter) as f64 }
}

/// Mean and (population) standard deviation.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_and_iou_by_hand() {
        let o = overlap(&[255, 255, 0, 0], &[255, 0, 255, 0]);
        assert_eq!(o, Overlap { dice: 0.5, iou: 1.0 / 3.0 });
        assert_eq!(overlap(&[0, 0], &[0, 0]).dice, 1.0);
        assert_eq!(overlap(&[255], &[0]).dice, 0.0);
        assert_eq!(mean_std(&[1.0, 3.0]), (2.0, 1.0));
    }
}
