//! The key/value cache of one session: per layer, the keys and values of every past
//! position, stored as fp16 like llama.cpp's default cache (half the memory of f32, and
//! the same rounding as the reference implementation).

use half::f16;

use crate::model::{Hparams, ModelError};

/// Keys and values of positions `0..len()` for every layer, row-major by position.
pub struct KvCache {
    n_ctx: usize,
    len: usize,
    kv_dim: usize,
    kv_dim_v: usize,
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
}

impl KvCache {
    /// A cache for `n_ctx` positions; `n_ctx` must be at least 1 and at most the model's
    /// trained context length.
    pub fn new(hp: &Hparams, n_ctx: usize) -> Result<KvCache, ModelError> {
        if n_ctx == 0 || n_ctx > hp.n_ctx_train {
            return Err(ModelError::InvalidRequest(format!(
                "context size {n_ctx} must be between 1 and the model's {}",
                hp.n_ctx_train
            )));
        }
        let k_len = n_ctx.checked_mul(hp.kv_dim());
        let v_len = n_ctx.checked_mul(hp.kv_dim_v());
        let (Some(k_len), Some(v_len)) = (k_len, v_len) else {
            return Err(ModelError::InvalidRequest(format!(
                "context size {n_ctx} is too large"
            )));
        };
        Ok(KvCache {
            n_ctx,
            len: 0,
            kv_dim: hp.kv_dim(),
            kv_dim_v: hp.kv_dim_v(),
            keys: (0..hp.n_layer).map(|_| vec![f16::ZERO; k_len]).collect(),
            values: (0..hp.n_layer).map(|_| vec![f16::ZERO; v_len]).collect(),
        })
    }

    /// Positions the cache can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Positions filled so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (the memory is reused).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Drops positions from `len` on, e.g. to rewind to a shared prompt prefix.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Fails unless `n` more positions fit.
    pub fn check_room(&self, n: usize) -> Result<(), ModelError> {
        let needed = self.len.saturating_add(n);
        if needed > self.n_ctx {
            return Err(ModelError::ContextFull {
                needed,
                n_ctx: self.n_ctx,
            });
        }
        Ok(())
    }

    /// Writes the keys and values of `k.len() / kv_dim` consecutive tokens starting at
    /// position `len()` into `layer`. Call [`KvCache::advance`] once all layers are done.
    pub fn store(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let start = self.len * self.kv_dim;
        for (d, &s) in self.keys[layer][start..start + k.len()].iter_mut().zip(k) {
            *d = f16::from_f32(s);
        }
        let start = self.len * self.kv_dim_v;
        for (d, &s) in self.values[layer][start..start + v.len()].iter_mut().zip(v) {
            *d = f16::from_f32(s);
        }
    }

    /// Marks `n` stored positions as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.n_ctx);
    }

    /// Keys of `layer`, `kv_dim` values per position (including positions being written).
    pub fn keys(&self, layer: usize) -> &[f16] {
        &self.keys[layer]
    }

    pub fn values(&self, layer: usize) -> &[f16] {
        &self.values[layer]
    }
}
