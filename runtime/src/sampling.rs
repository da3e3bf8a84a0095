//! Choosing the next token from logits: greedy, or a seeded draw after repetition
//! penalty, top-k, top-p, min-p and temperature (applied in that order, as llama.cpp's
//! default chain does).

/// Sampling settings. `temperature <= 0` means greedy.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 disables.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerParams {
    /// Always the most likely token.
    pub fn greedy() -> SamplerParams {
        SamplerParams {
            temperature: 0.0,
            ..SamplerParams::default()
        }
    }

    /// Rejects settings outside their meaningful ranges.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |v: f32| v.is_finite();
        if !finite(self.temperature) {
            return Err(format!("temperature {} is not finite", self.temperature));
        }
        if !(finite(self.top_p) && (0.0..=1.0).contains(&self.top_p)) {
            return Err(format!("top-p {} is not in [0, 1]", self.top_p));
        }
        if !(finite(self.min_p) && (0.0..=1.0).contains(&self.min_p)) {
            return Err(format!("min-p {} is not in [0, 1]", self.min_p));
        }
        if !(finite(self.repeat_penalty) && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat penalty {} must be positive",
                self.repeat_penalty
            ));
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same stream on every
/// platform for a given seed.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A sampler: settings plus its random state.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplerParams,
    rng: Rng,
    /// Candidate buffer reused across calls: (token, logit or probability).
    cand: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Sampler {
        let rng = Rng::new(params.seed);
        Sampler {
            params,
            rng,
            cand: Vec::new(),
        }
    }

    /// Picks the next token from `logits` given the tokens seen so far (`history`, used by
    /// the repetition penalty). `logits` is modified by the penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            apply_repeat_penalty(logits, history, p.repeat_last_n, p.repeat_penalty);
        }
        if p.temperature <= 0.0 {
            return crate::ops::argmax(logits) as u32;
        }
        let cand = &mut self.cand;
        cand.clear();
        cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l)),
        );
        if cand.is_empty() {
            return 0;
        }
        // Sorted by logit, best first (ties: lower id first, for determinism).
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_logit);
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(by_logit);

        to_probs(cand);
        if p.top_p < 1.0 {
            let mut cum = 0.0f32;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                cum += c.1;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let threshold = cand[0].1 * p.min_p;
            let keep = cand.iter().take_while(|c| c.1 >= threshold).count();
            cand.truncate(keep.max(1));
        }
        // Temperature on the survivors: p^(1/T) renormalized equals softmax(logit / T).
        let inv_t = 1.0 / p.temperature;
        for c in cand.iter_mut() {
            c.1 = c.1.ln() * inv_t;
        }
        to_probs(cand);

        let r = self.rng.next_f64() as f32;
        let mut cum = 0.0f32;
        for c in cand.iter() {
            cum += c.1;
            if r < cum {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// Softmax of the candidates' values: logits (or log-probabilities) in, probabilities out.
fn to_probs(cand: &mut [(u32, f32)]) {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for c in cand.iter_mut() {
        c.1 = (c.1 - max).exp();
        sum += c.1;
    }
    for c in cand.iter_mut() {
        c.1 /= sum;
    }
}

/// llama.cpp's repetition penalty: each distinct token among the last `last_n` of
/// `history` has a positive logit divided by `penalty`, a negative one multiplied.
pub fn apply_repeat_penalty(logits: &mut [f32], history: &[u32], last_n: usize, penalty: f32) {
    let start = history.len().saturating_sub(last_n);
    let mut seen: Vec<u32> = history[start..].to_vec();
    seen.sort_unstable();
    seen.dedup();
    for id in seen {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.5, -1.0, 0.0, 2.9]
    }

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplerParams::greedy());
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let params = SamplerParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..SamplerParams::default()
        };
        let draw = |seed| {
            let mut s = Sampler::new(SamplerParams {
                seed,
                ..params.clone()
            });
            (0..64)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        // With no truncation every token is reachable.
        let seen: std::collections::HashSet<u32> = draw(7).into_iter().collect();
        assert!(seen.len() >= 4);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplerParams {
            temperature: 5.0,
            top_k: 1,
            ..SamplerParams::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn top_p_and_min_p_restrict_candidates() {
        // Probabilities of 1, 5, 2 are high; min-p 0.5 keeps tokens within half of best.
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: 3,
            ..SamplerParams::default()
        });
        for _ in 0..200 {
            let t = s.sample(&mut logits(), &[]);
            assert!([1, 2, 5].contains(&t), "{t}");
        }
        let mut s = Sampler::new(SamplerParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.3,
            min_p: 0.0,
            seed: 3,
            ..SamplerParams::default()
        });
        for _ in 0..200 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
    }

    #[test]
    fn repeat_penalty_demotes_seen_tokens() {
        let mut l = logits();
        apply_repeat_penalty(&mut l, &[1, 1, 3], 64, 2.0);
        assert_eq!(l[1], 1.5);
        assert_eq!(l[3], -2.0);
        assert_eq!(l[2], 2.5);
        let mut s = Sampler::new(SamplerParams {
            repeat_penalty: 2.0,
            ..SamplerParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1]), 5);
        // Tokens older than the window are not penalized.
        let mut s = Sampler::new(SamplerParams {
            repeat_penalty: 2.0,
            repeat_last_n: 1,
            ..SamplerParams::greedy()
        });
        assert_eq!(s.sample(&mut logits(), &[1, 4]), 1);
    }

    #[test]
    fn validate_rejects_bad_values() {
        assert!(SamplerParams::default().validate().is_ok());
        let bad = SamplerParams {
            top_p: 1.5,
            ..SamplerParams::default()
        };
        assert!(bad.validate().is_err());
        let bad = SamplerParams {
            repeat_penalty: 0.0,
            ..SamplerParams::default()
        };
        assert!(bad.validate().is_err());
    }
}
