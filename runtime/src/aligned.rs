//! f32 buffers that start on a cache line.
//!
//! Threads write disjoint row ranges of a matmul's output; ranges of whole 16-row
//! groups are whole 64-byte lines only if the buffer itself starts on a line (large
//! `Vec`s from the allocator start 16 bytes past a page boundary). Otherwise every
//! range boundary is a line two cores write at once.

use std::ops::{Deref, DerefMut};

/// One cache line of floats.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A zero-initialised, fixed-length f32 buffer aligned to 64 bytes.
#[derive(Clone, Default)]
pub struct AlignedF32 {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedF32 {
    pub fn zeros(len: usize) -> AlignedF32 {
        AlignedF32 {
            lines: vec![Line::default(); len.div_ceil(16)],
            len,
        }
    }
}

impl Deref for AlignedF32 {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `lines` holds at least `len` contiguous f32 (`Line` is 16 f32 with
        // no padding), initialised, and borrowed for the returned lifetime.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.len) }
    }
}

impl DerefMut for AlignedF32 {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_and_has_its_length() {
        for len in [0, 1, 15, 16, 17, 100_000] {
            let mut b = AlignedF32::zeros(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % 64, 0);
            assert!(b.iter().all(|&x| x == 0.0));
            if len > 0 {
                b[len - 1] = 1.0;
                assert_eq!(b[len - 1], 1.0);
            }
        }
    }
}
