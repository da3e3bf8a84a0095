//! The key/value cache of one session: per layer, the keys and values of every past
//! position, stored as fp16 like llama.cpp's default cache (half the memory of f32, and
//! the same rounding as the reference implementation).
//!
//! Values are row-major by position (attention sums whole value rows). Keys are stored
//! in tiles of [`KEY_TILE`] positions per KV head, dimension-major inside a tile
//! (`tile[d * KEY_TILE + lane]`), so the score kernels load one dimension of 16 keys
//! as one vector and score 16 positions per instruction.

use half::f16;

use crate::model::{Hparams, ModelError};
use crate::quant::float::f32_to_f16_row;

/// Positions per key tile.
pub const KEY_TILE: usize = 16;

/// Keys and values of positions `0..len()` for every layer.
pub struct KvCache {
    n_ctx: usize,
    len: usize,
    n_head_kv: usize,
    head_dim: usize,
    kv_dim_v: usize,
    /// Key tiles per KV head (`n_ctx` rounded up to whole tiles).
    n_tiles: usize,
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    /// One token's keys rounded to fp16 on their way into the tiles (kept to avoid an
    /// allocation per store).
    key_row: Vec<f16>,
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
        let n_tiles = n_ctx.div_ceil(KEY_TILE);
        let k_len = (n_tiles * KEY_TILE).checked_mul(hp.kv_dim());
        let v_len = n_ctx.checked_mul(hp.kv_dim_v());
        let (Some(k_len), Some(v_len)) = (k_len, v_len) else {
            return Err(ModelError::InvalidRequest(format!(
                "context size {n_ctx} is too large"
            )));
        };
        Ok(KvCache {
            n_ctx,
            len: 0,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
            kv_dim_v: hp.kv_dim_v(),
            n_tiles,
            key_row: vec![f16::ZERO; hp.kv_dim()],
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
        let hd = self.head_dim;
        let kv_dim = self.n_head_kv * hd;
        let keys = &mut self.keys[layer];
        let row16 = &mut self.key_row;
        for (t, row) in k.chunks_exact(kv_dim).enumerate() {
            let pos = self.len + t;
            f32_to_f16_row(row, row16);
            for (h, head) in row16.chunks_exact(hd).enumerate() {
                let tile = (h * self.n_tiles + pos / KEY_TILE) * hd * KEY_TILE;
                let lane = pos % KEY_TILE;
                for (d, &x) in head.iter().enumerate() {
                    keys[tile + d * KEY_TILE + lane] = x;
                }
            }
        }
        let start = self.len * self.kv_dim_v;
        f32_to_f16_row(v, &mut self.values[layer][start..start + v.len()]);
    }

    /// Marks `n` stored positions as filled.
    pub fn advance(&mut self, n: usize) {
        self.len = (self.len + n).min(self.n_ctx);
    }

    /// Key tile `tile` (positions `tile * KEY_TILE..`) of KV head `kv_head` in `layer`:
    /// `head_dim * KEY_TILE` values, `[d * KEY_TILE + lane]` is dimension `d` of position
    /// `tile * KEY_TILE + lane` (including positions being written; positions never
    /// written hold zeros or an earlier sequence's keys).
    pub fn key_tile(&self, layer: usize, kv_head: usize, tile: usize) -> &[f16] {
        let len = self.head_dim * KEY_TILE;
        let start = (kv_head * self.n_tiles + tile) * len;
        &self.keys[layer][start..start + len]
    }

    /// Values of `layer`, `kv_dim_v` per position, row-major by position.
    pub fn values(&self, layer: usize) -> &[f16] {
        &self.values[layer]
    }
}
