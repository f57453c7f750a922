//! `exp` for the softmax and SiLU loops, in a form the compiler vectorizes: libm's `expf` is a
//! call per element, and it was 4% of a 512-token prefill. Range reduction `x = n·ln2 + r`
//! (|r| ≤ ln2/2, `n` rounded with the 1.5·2^23 trick, which needs no SSE4.1 `roundps`), a
//! degree-7 Taylor polynomial for `e^r`, and `2^n` built in the exponent bits. No branches (the
//! range checks compile to selects): the loop over a slice becomes SIMD code.

/// Below this `exp` underflows f32's normal range; the result is 0 (a masked score, a
/// saturated gate).
const UNDERFLOW: f32 = -87.336_55;
/// Above this `exp` overflows; the result is +∞.
const OVERFLOW: f32 = 88.722_83;

/// `e^x` within [`MAX_REL_ERR`] of the exact value for every finite input with a normal
/// result; 0 below the normal range, +∞ above it, NaN for NaN.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n · LN2_HI is exact for |n| ≤ 128.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let c = x.clamp(UNDERFLOW, OVERFLOW);
    let n = (c * LOG2E + MAGIC) - MAGIC;
    let r = (c - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 / 5040.0 + r * (1.0 / 40320.0);
    let p = 1.0 / 720.0 + r * p;
    let p = 1.0 / 120.0 + r * p;
    let p = 1.0 / 24.0 + r * p;
    let p = 1.0 / 6.0 + r * p;
    let p = 0.5 + r * p;
    let p = 1.0 + r * p;
    let p = 1.0 + r * p;
    // n ∈ [−126, 128]: 2^n as two factors in exponent bits, each inside the normal range.
    let n = n as i32;
    let (n1, n2) = (n >> 1, n - (n >> 1));
    let two = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let y = p * two(n1) * two(n2);
    if x < UNDERFLOW {
        0.0
    } else if x > OVERFLOW {
        f32::INFINITY
    } else {
        y
    }
}

/// Largest relative error of [`exp_f32`] against `f64::exp` (tested): about 2 ulp.
pub const MAX_REL_ERR: f64 = 2.5e-7;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_its_bound_of_the_f64_exponential() {
        let mut worst = 0.0f64;
        let n = 2_000_000;
        for i in 0..=n {
            let x = UNDERFLOW + (OVERFLOW - UNDERFLOW) * (i as f32 / n as f32);
            let want = f64::from(x).exp();
            let got = f64::from(exp_f32(x));
            if want < f64::from(f32::MAX) && want > f64::from(f32::MIN_POSITIVE) {
                worst = worst.max(((got - want) / want).abs());
            }
        }
        assert!(worst <= MAX_REL_ERR, "worst relative error {worst:e}");
        // Exact where the softmax relies on it.
        assert_eq!(exp_f32(0.0), 1.0);
    }

    #[test]
    fn exp_saturates_like_libm() {
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
