//! A Zipf sampler: rank `k` in `1..=n` is drawn with probability proportional to `1 / k^s`.
//!
//! Rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion to generate variates
//! from monotone discrete distributions", 1996), as in Apache Commons RNG: O(1) memory and time
//! per draw for any `n`, any exponent `s > 0`, seeded through the caller's `fastrand::Rng`.

pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    /// The squeeze constant of the algorithm (not the exponent).
    squeeze: f64,
}

impl Zipf {
    /// `n >= 1` ranks, exponent `s > 0` (1.0 is the classic Zipf law; larger is more skewed).
    pub fn new(n: u64, exponent: f64) -> Zipf {
        assert!(n >= 1, "Zipf needs at least one rank");
        assert!(
            exponent > 0.0 && exponent.is_finite(),
            "Zipf exponent must be > 0"
        );
        let mut z = Zipf {
            n: n as f64,
            exponent,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            squeeze: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(z.n + 0.5);
        z.squeeze = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in `1..=n`; rank 1 is the most frequent.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.squeeze || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// `h(x) = 1 / x^s`.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// An antiderivative of `h`: `(x^(1-s) - 1) / (1 - s)`, `ln x` when `s = 1`.
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, continuous at 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1) / x`, continuous at 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Observed frequencies of the first ranks and of a tail bucket match `1/k^s / H(n, s)`.
    fn check_shape(n: u64, s: f64) {
        let draws = 400_000u64;
        let zipf = Zipf::new(n, s);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..draws {
            let k = zipf.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} out of 1..={n}");
            counts[k as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        let expected = |k: u64| draws as f64 * (k as f64).powf(-s) / norm;
        for k in 1..=5 {
            let (got, want) = (counts[k as usize] as f64, expected(k));
            // Within 5 standard deviations of a binomial count.
            let sigma = want.sqrt().max(1.0);
            assert!(
                (got - want).abs() < 5.0 * sigma,
                "n={n} s={s} rank {k}: got {got}, want {want:.0}"
            );
        }
        // The upper half of the ranks, as one bucket.
        let tail_got: u64 = counts[(n / 2 + 1) as usize..].iter().sum();
        let tail_want: f64 = (n / 2 + 1..=n).map(expected).sum();
        let sigma = tail_want.sqrt().max(1.0);
        assert!(
            (tail_got as f64 - tail_want).abs() < 5.0 * sigma,
            "n={n} s={s} tail: got {tail_got}, want {tail_want:.0}"
        );
        // Monotone on average: rank 1 beats rank 2 beats rank 10.
        assert!(counts[1] > counts[2] && counts[2] > counts[10]);
    }

    #[test]
    fn frequencies_follow_the_zipf_law() {
        check_shape(1000, 1.0);
        check_shape(1000, 0.5);
        check_shape(100_000, 1.2);
        check_shape(50, 2.0);
    }

    #[test]
    fn same_seed_same_draws_and_one_rank_works() {
        let zipf = Zipf::new(1_000_000, 0.99);
        let mut a = fastrand::Rng::with_seed(1);
        let mut b = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            assert_eq!(zipf.sample(&mut a), zipf.sample(&mut b));
        }
        let one = Zipf::new(1, 1.0);
        assert_eq!(one.sample(&mut a), 1);
    }
}
