//! Counter-based random numbers: every random draw is a pure function of (seed, purpose,
//! counters). Nothing stateful is shared, so a resumed run draws exactly what an uninterrupted
//! one would, eval never shifts training, and threads never race for a generator.

/// Streams: each purpose gets its own, so drawing from one never shifts another.
pub const STREAM_INIT: u64 = 1;
pub const STREAM_TRAIN_BATCH: u64 = 2;
pub const STREAM_EVAL_BATCH: u64 = 3;
pub const STREAM_DROPOUT: u64 = 4;
pub const STREAM_SAMPLE: u64 = 5;

/// SplitMix64's finaliser: a strong 64-bit mixing function.
#[inline]
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes a counter into a key.
#[inline]
pub fn mix(key: u64, x: u64) -> u64 {
    splitmix(key ^ splitmix(x.wrapping_add(0x632B_E59B_D9B4_E019)))
}

/// A key from a seed, a stream and any number of counters.
pub fn key(seed: u64, stream: u64, counters: &[u64]) -> u64 {
    counters.iter().fold(mix(splitmix(seed), stream), |k, &c| mix(k, c))
}

/// Uniform in [0, 1) with 24 bits.
#[inline]
pub fn uniform_f32(bits: u64) -> f32 {
    (bits >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Uniform in [0, 1) with 53 bits.
#[inline]
pub fn uniform_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform integer in [0, n) (Lemire's multiply-high; bias below 2^-32 for n < 2^32).
#[inline]
pub fn below(bits: u64, n: u64) -> u64 {
    ((bits as u128 * n as u128) >> 64) as u64
}

/// A standard normal draw (Box-Muller) for counter `i` under `key`.
pub fn normal(key: u64, i: u64) -> f32 {
    let u1 = uniform_f64(mix(key, 2 * i)).max(1e-300);
    let u2 = uniform_f64(mix(key, 2 * i + 1));
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// A small sequential generator for sampling, built on the same mixer.
#[derive(Clone, Debug)]
pub struct Rng {
    key: u64,
    counter: u64,
}

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng { key: key(seed, stream, &[]), counter: 0 }
    }
    pub fn next_u64(&mut self) -> u64 {
        self.counter += 1;
        mix(self.key, self.counter)
    }
    pub fn next_f32(&mut self) -> f32 {
        uniform_f32(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_moments() {
        let k = key(1337, STREAM_INIT, &[0]);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|i| normal(k, i) as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut seen = [0usize; 7];
        for i in 0..7000 {
            let x = below(mix(42, i), 7) as usize;
            seen[x] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800 && c < 1200), "{seen:?}");
    }

    #[test]
    fn streams_are_independent() {
        assert_ne!(key(1, STREAM_TRAIN_BATCH, &[0]), key(1, STREAM_EVAL_BATCH, &[0]));
        assert_eq!(key(1, STREAM_TRAIN_BATCH, &[5, 2]), key(1, STREAM_TRAIN_BATCH, &[5, 2]));
    }
}
