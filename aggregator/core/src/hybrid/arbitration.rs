//! HYBRID mode's arbitration between the saturation analysis and the
//! model-based plan, one variant at a time. Capacity safety overrides:
//!
//! - a scale-up either side wants is taken, the larger one;
//! - a scale-down the plan proposes is taken only as far as the saturation
//!   analysis also scales down (it found the spare capacity safe to
//!   release); where it holds, the variant holds;
//! - where the plan abstains (no good profile yet, no class, an objective
//!   no replica can meet), the saturation analysis decides alone.
//!
//! All three come to the larger of the two targets; what the rule adds is
//! which side drove the result, which every decision records.

/// Which side set a variant's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Saturation,
    Optimizer,
}

/// The target of a variant whose saturation analysis asks for `saturation`
/// replicas and whose plan asks for `optimizer` (none when it abstains).
/// The saturation analysis keeps the target when the two agree.
pub fn arbitrate(saturation: u32, optimizer: Option<u32>) -> (u32, Driver) {
    match optimizer {
        Some(planned) if planned > saturation => (planned, Driver::Optimizer),
        _ => (saturation, Driver::Saturation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of the two sides' verdicts around 4 current
    /// replicas: each side scales up, holds, scales down, or (the plan
    /// only) abstains.
    #[test]
    fn every_combination_of_verdicts() {
        use Driver::{Optimizer as O, Saturation as S};
        let current = 4;
        let (up, hold, down) = (6, current, 2);
        let cases = [
            // saturation, plan, expected target, driver
            (up, None, up, S),
            (up, Some(7), 7, O),
            (up, Some(5), up, S),
            (up, Some(up), up, S),
            (up, Some(hold), up, S),
            (up, Some(down), up, S),
            (hold, None, hold, S),
            (hold, Some(up), up, O),
            (hold, Some(hold), hold, S),
            // The plan would release capacity the saturation analysis keeps.
            (hold, Some(down), hold, S),
            (down, None, down, S),
            (down, Some(up), up, O),
            (down, Some(hold), hold, O),
            // Both scale down: no further than the saturation analysis.
            (down, Some(1), down, S),
            (down, Some(3), 3, O),
            (down, Some(down), down, S),
        ];
        for (saturation, plan, target, driver) in cases {
            assert_eq!(
                arbitrate(saturation, plan),
                (target, driver),
                "saturation {saturation}, plan {plan:?}"
            );
        }
    }
}
