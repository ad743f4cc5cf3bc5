//! A small deterministic generator for synthetic test data: the same
//! stream on every version and platform (tests must not depend on the
//! `rand` crate's stream staying the same across releases).

/// Knuth's MMIX linear congruential generator.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value, uniform in [0, 1) with 53 bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
