//! The randomness of a draw, as a pure function of (seed, draw index, token id).
//!
//! A draw is a Gumbel-max: the token with the largest `logit / temperature + g` where
//! `g = -ln(-ln(u))` and `u` is a uniform in (0, 1) hashed from the request's seed, the index of
//! the draw in its request, and the token id. That is an exact sample from the softmax, needs no
//! normalization and no order over the vocabulary, and is the same whatever batch the request
//! runs in and whichever backend runs it: kernels/sampling.cu computes the same bits (its
//! `gumbel` mirrors [`gumbel`] operation for operation, in f64).

/// The splitmix64 finalizer: a bijective mix of 64 bits (Steele, Lea and Flood 2014).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one draw: every token's noise in that draw derives from it.
pub fn draw_key(seed: u64, draw_index: u64) -> u64 {
    mix64(mix64(seed ^ 0x5851_F42D_4C95_7F2D).wrapping_add(draw_index.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// The uniform of token `id` in the draw keyed `key`: 24 random bits, `(k + 0.5) / 2^24`, so never
/// 0 or 1.
pub fn uniform(key: u64, id: u32) -> f64 {
    let h = mix64(key ^ (id as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
    ((h >> 40) as f64 + 0.5) * (1.0 / 16_777_216.0)
}

/// Standard Gumbel noise for token `id` in the draw keyed `key`, rounded to f32.
pub fn gumbel(key: u64, id: u32) -> f32 {
    (-(-uniform(key, id).ln()).ln()) as f32
}

/// The largest noise [`gumbel`] can return (u = 1 - 2^-25): a token whose scaled logit is more
/// than this below the best candidate's `logit + noise` cannot win, so its noise need not be
/// computed.
pub const GUMBEL_MAX: f32 = 17.33;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_finalizer_matches_its_reference() {
        // splitmix64.c: state 1234567 advanced by the golden gamma, then the finalizer.
        assert_eq!(mix64(1234567u64.wrapping_add(0x9E37_79B9_7F4A_7C15)), 6457827717110365317);
    }

    #[test]
    fn noise_is_bounded_and_standard_gumbel() {
        let key = draw_key(7, 3);
        let n = 200_000u32;
        let g: Vec<f64> = (0..n).map(|i| gumbel(key, i) as f64).collect();
        assert!(g.iter().all(|&v| v.is_finite() && v <= GUMBEL_MAX as f64));
        // Standard Gumbel: mean = Euler-Mascheroni, variance = pi^2 / 6.
        let mean = g.iter().sum::<f64>() / n as f64;
        let var = g.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
        assert!((mean - 0.5772).abs() < 0.01, "{mean}");
        assert!((var - std::f64::consts::PI.powi(2) / 6.0).abs() < 0.03, "{var}");
        let extreme = -(-(1.0 - 0.5 / 16_777_216.0f64).ln()).ln();
        assert!(extreme as f32 <= GUMBEL_MAX);
    }

    #[test]
    fn keys_differ_by_seed_and_index() {
        assert_ne!(draw_key(1, 0), draw_key(2, 0));
        assert_ne!(draw_key(1, 0), draw_key(1, 1));
        assert_eq!(draw_key(1, 5), draw_key(1, 5));
    }
}
