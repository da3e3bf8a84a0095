//! K-quants: ggml's 256-element super-block weight types (Q2_K..Q6_K) and the Q8_K
//! activation block they are dotted with.
//!
//! Each block struct overlays ggml's bytes exactly (`#[repr(C)]`, sizes checked at
//! compile time). Per type there is one scalar reference (`dequantize`, `vec_dot_ref`)
//! and an AVX2 path; the dot products accumulate exact integer sums per super-block
//! (scaled by the 4..8-bit sub-block scales) and convert to float once per super-block,
//! so every path computes llama.cpp's integers and differs only in float summation order.
//!
//! `KernelPath::Avx512Vnni` runs the AVX2 kernels: for one row at a time, a Q4_K
//! `vpdpbusd` + `vpmaddwd` zmm variant measured about 10% slower than the `maddubs`
//! form (19 vs 21 GB/s from L2). VNNI pays off with row-interleaved layouts, where one
//! activation load feeds many rows.
//!
//! Prompt processing uses panel kernels instead (`panel`, `panel_x86`): sixteen tokens'
//! activations per vector, one weight unpack shared by all of them, `vpdpbusd` on the
//! VNNI path. Their float epilogue is one rule (`panel_scalar`, the scalar path's
//! kernel), so a prompt gives the same logits on every path.

/// A type's `vec_dot`: its AVX2 kernel (also used on the VNNI path) in its file's `avx2`
/// module, else the scalar reference. Declared before the type modules that use it.
macro_rules! dispatch {
    ($path:expr, $w:expr, $a:expr) => {{
        check_row_lengths($w.len(), $a.len());
        debug_assert!($path.is_supported());
        match $path {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that this CPU supports `path`, which implies AVX2.
            KernelPath::Avx2 | KernelPath::Avx512Vnni => unsafe { avx2::vec_dot($w, $a) },
            _ => Self::vec_dot_ref($w, $a),
        }
    }};
}

#[macro_use]
mod panel;
mod panel_scalar;
#[cfg(target_arch = "x86_64")]
mod panel_x86;
mod q2k;
mod q3k;
mod q4k;
mod q5k;
mod q6k;
mod q8k;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use panel::{Q8KPanel, GROUPS_K};
pub use q2k::BlockQ2K;
pub use q3k::BlockQ3K;
pub use q4k::BlockQ4K;
pub use q5k::BlockQ5K;
pub use q6k::BlockQ6K;
pub use q8k::BlockQ8K;

// The structs overlay little-endian file bytes (f16/f32/i16 fields).
#[cfg(target_endian = "big")]
compile_error!("K-quant blocks overlay little-endian GGUF bytes; big-endian hosts are unsupported");

/// Elements per super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// Implements byte conversion for a plain-old-data block and checks its size.
macro_rules! pod_block {
    ($t:ty, $size:expr) => {
        const _: () = assert!(std::mem::size_of::<$t>() == $size);

        impl $t {
            /// Size of one block in bytes, as in ggml.
            pub const SIZE: usize = $size;

            /// Reads one block from exactly [`Self::SIZE`] bytes (any alignment).
            /// Returns `None` when the length differs.
            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                if bytes.len() != Self::SIZE {
                    return None;
                }
                // SAFETY: the struct is `repr(C)` with only integer/float fields and no
                // padding (size asserted above), so every bit pattern is a valid value, and
                // the length was checked.
                Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
            }

            /// The block's bytes, exactly as ggml stores them.
            pub fn to_bytes(&self) -> [u8; $size] {
                // SAFETY: same layout argument as `from_bytes`: no padding, so every byte
                // of the struct is initialized.
                unsafe { std::mem::transmute_copy::<Self, [u8; $size]>(self) }
            }
        }
    };
}
pub(crate) use pod_block;

/// Q4_K/Q5_K min term of one super-block: each of the 8 mins times the activation sum of
/// its 32 elements (two Q8_K `bsums`).
#[inline(always)]
pub(crate) fn min_dot(m: &[u8; 8], bsums: &[i16; 16]) -> i32 {
    (0..8)
        .map(|j| m[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32))
        .sum()
}

/// Unpacks the 12-byte Q4_K/Q5_K scale field into 8 six-bit scales and 8 six-bit mins.
///
/// Bytes 0..4 hold scales 0..3 (low 6 bits) and the top 2 bits of scales 4..7; bytes
/// 4..8 the same for mins; bytes 8..12 the low nibbles of scales 4..7 (low half) and of
/// mins 4..7 (high half). Done four lanes at a time in u32 arithmetic.
#[inline(always)]
pub(crate) fn unpack_scale_min_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let a = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let b = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let c = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = a & 0x3f3f_3f3f;
    let m_lo = b & 0x3f3f_3f3f;
    let sc_hi = (c & 0x0f0f_0f0f) | (((a >> 6) & 0x0303_0303) << 4);
    let m_hi = ((c >> 4) & 0x0f0f_0f0f) | (((b >> 6) & 0x0303_0303) << 4);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    m[..4].copy_from_slice(&m_lo.to_le_bytes());
    m[4..].copy_from_slice(&m_hi.to_le_bytes());
    (sc, m)
}

/// Checks the row lengths every `vec_dot` needs to agree on.
#[inline(always)]
fn check_row_lengths(w: usize, a: usize) {
    assert_eq!(
        w, a,
        "weight row has {w} super-blocks but the activation row has {a}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bit-twiddled unpack agrees with the per-element definition.
    #[test]
    fn scale_min_unpack_matches_definition() {
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..1000 {
            let mut s = [0u8; 12];
            for b in &mut s {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *b = state as u8;
            }
            let (sc, m) = unpack_scale_min_k4(&s);
            for j in 0..8 {
                let (esc, em) = if j < 4 {
                    (s[j] & 63, s[j + 4] & 63)
                } else {
                    (
                        (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
                        (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                    )
                };
                assert_eq!((sc[j], m[j]), (esc, em), "sub-block {j} of {s:?}");
            }
        }
    }
}
