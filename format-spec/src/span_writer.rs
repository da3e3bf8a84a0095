//! Writing a file's contents in spans aligned to 2 MiB file offsets, each gathered from
//! its slices and zero gaps into one system call.
//!
//! Why: Linux keeps a file written this way in 2 MiB page-cache folios, which a later
//! read-only map of the file (the runtime's) gets as huge-page mappings, so a decode that
//! streams a few hundred MB of weights per token misses the TLB far less. The kernel
//! sizes each folio from the file offset's alignment and the bytes left in the write
//! call, and it shrinks its step for the rest of a call once copying from the source
//! faults. So every call here covers whole aligned blocks, however the tensors and the
//! padding between them fall, and the source pages of a call are mapped before it.

use std::fs::File;
use std::io::{IoSlice, Write};

/// The page-cache folio size the spans are aligned to: x86-64's huge page (PMD) size,
/// also the largest folio Linux uses for file data there.
pub const FOLIO_ALIGN: u64 = 2 << 20;

/// Bytes per write call (a multiple of [`FOLIO_ALIGN`]): large enough to amortize the
/// call, small enough to report progress and request write-back often.
pub const SPAN: u64 = 4 * FOLIO_ALIGN;

/// Most slices one call gathers (Linux's `IOV_MAX` is 1024). A span of many tiny
/// tensors that needs more is written in several calls, which only costs its folios.
const MAX_SLICES: usize = 512;

/// Zeros for the gaps between parts.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Bytes to place at a file offset. Parts are given in offset order without overlap;
/// every byte between them (and after the last, up to the end) is zero.
#[derive(Clone, Copy, Debug)]
pub struct Part<'a> {
    pub offset: u64,
    pub bytes: &'a [u8],
}

/// Writes `parts` (and zeros between them) from the file's current position, which must
/// be offset 0, up to `end`. After each span, `after_span(written)` is told how many
/// bytes are in the file; returning `false` stops the write early (the caller reports
/// why).
pub fn write_spans(
    file: &mut File,
    parts: &[Part<'_>],
    end: u64,
    mut after_span: impl FnMut(u64) -> bool,
) -> std::io::Result<()> {
    let mut source = Segments::new(parts, end)?;
    let mut pos = 0u64;
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(MAX_SLICES);
    while pos < end {
        let span_end = ((pos / SPAN + 1) * SPAN).min(end);
        slices.clear();
        let mut at = pos;
        while at < span_end && slices.len() < MAX_SLICES {
            let piece = source.take(span_end - at);
            if let Some(bytes) = piece.data {
                prefault(bytes);
            }
            at += piece.slice.len() as u64;
            slices.push(IoSlice::new(piece.slice));
        }
        write_all_vectored(file, &mut slices)?;
        pos = at;
        if !after_span(pos) {
            return Ok(());
        }
    }
    Ok(())
}

/// One piece of the file's contents: a slice to write, and the source bytes behind it
/// when they are data (not zeros) and may need mapping in.
struct Piece<'a> {
    slice: &'a [u8],
    data: Option<&'a [u8]>,
}

/// The file's contents in order: the parts and the zero gaps around them.
struct Segments<'a> {
    parts: &'a [Part<'a>],
    end: u64,
    /// File offset of the next byte to hand out.
    pos: u64,
    /// Index of the first part not yet wholly handed out.
    next: usize,
}

impl<'a> Segments<'a> {
    fn new(parts: &'a [Part<'a>], end: u64) -> std::io::Result<Self> {
        let mut prev_end = 0u64;
        for p in parts {
            let part_end = p.offset.checked_add(p.bytes.len() as u64);
            if p.offset < prev_end || part_end.is_none_or(|e| e > end) {
                return Err(std::io::Error::other(
                    "file parts overlap or extend past the end",
                ));
            }
            prev_end = part_end.unwrap_or(end);
        }
        Ok(Segments {
            parts,
            end,
            pos: 0,
            next: 0,
        })
    }

    /// The next at most `max` bytes (`max` > 0, and the end not yet reached): the rest of
    /// the current part, or zeros up to the next part (at most `ZEROS.len()`).
    fn take(&mut self, max: u64) -> Piece<'a> {
        while self
            .parts
            .get(self.next)
            .is_some_and(|p| p.bytes.is_empty())
        {
            self.next += 1;
        }
        let piece = match self.parts.get(self.next) {
            Some(p) if p.offset <= self.pos => {
                let from = (self.pos - p.offset) as usize;
                let len = (p.bytes.len() - from).min(max as usize);
                let bytes = &p.bytes[from..from + len];
                if from + len == p.bytes.len() {
                    self.next += 1;
                }
                Piece {
                    slice: bytes,
                    data: Some(bytes),
                }
            }
            next => {
                let gap_end = next.map_or(self.end, |p| p.offset);
                let len = (gap_end - self.pos).min(max).min(ZEROS.len() as u64);
                Piece {
                    slice: &ZEROS[..len as usize],
                    data: None,
                }
            }
        };
        self.pos += piece.slice.len() as u64;
        piece
    }
}

/// `write_all` for gathered slices: repeats the vectored write until every slice is out.
fn write_all_vectored(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Maps in the pages of `bytes` (a file map or heap memory) without copying them, so a
/// write from them does not fault halfway. Only a hint: any failure leaves the write to
/// fault as it would have.
fn prefault(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        if bytes.is_empty() {
            return;
        }
        let start = bytes.as_ptr() as usize & !(PAGE - 1);
        let len = bytes.as_ptr() as usize + bytes.len() - start;
        // SAFETY: advice on pages that hold `bytes`, all mapped and readable; populating
        // them for reading changes no content. (The rounded-down start stays within the
        // same page as `bytes`' first byte, so within the same mapping.)
        unsafe {
            libc::madvise(start as *mut libc::c_void, len, libc::MADV_POPULATE_READ);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(parts: &[Part<'_>], end: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let mut reports = Vec::new();
        write_spans(&mut file, parts, end, |n| {
            reports.push(n);
            true
        })
        .unwrap();
        drop(file);
        // Reports rise to the end, and no call crosses a span boundary.
        assert_eq!(reports.last().copied(), Some(end).filter(|&e| e > 0));
        assert!(reports
            .windows(2)
            .all(|w| w[0] < w[1] && w[1] - 1 < (w[0] / SPAN + 1) * SPAN));
        std::fs::read(&path).unwrap()
    }

    fn expected(parts: &[Part<'_>], end: u64) -> Vec<u8> {
        let mut out = vec![0u8; end as usize];
        for p in parts {
            out[p.offset as usize..][..p.bytes.len()].copy_from_slice(p.bytes);
        }
        out
    }

    #[test]
    fn parts_and_gaps_land_at_their_offsets() {
        let big: Vec<u8> = (0..(SPAN as usize * 2 + 12345))
            .map(|i| (i % 251) as u8 | 1)
            .collect();
        let small: Vec<Vec<u8>> = (0..700).map(|i| vec![(i % 200) as u8 + 1; 37]).collect();
        let mut parts = vec![Part {
            offset: 4096,
            bytes: &big,
        }];
        // Many tiny parts inside one span: more than one call's worth of slices.
        let mut at = 4096 + big.len() as u64 + 3;
        for s in &small {
            parts.push(Part {
                offset: at,
                bytes: s,
            });
            at += 64;
        }
        parts.push(Part {
            offset: at + 100_000, // a gap wider than the zero buffer
            bytes: &[],
        });
        parts.push(Part {
            offset: at + 200_000,
            bytes: &big[..5000],
        });
        let end = at + 200_000 + 5000 + 77;
        assert_eq!(written(&parts, end), expected(&parts, end));
        assert_eq!(written(&[], 10), vec![0; 10]);
        assert!(written(&[], 0).is_empty());
    }

    #[test]
    fn overlapping_or_overlong_parts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = File::create(dir.path().join("f")).unwrap();
        let a = [1u8; 10];
        let overlap = [
            Part {
                offset: 0,
                bytes: &a,
            },
            Part {
                offset: 5,
                bytes: &a,
            },
        ];
        assert!(write_spans(&mut file, &overlap, 100, |_| true).is_err());
        let past = [Part {
            offset: 95,
            bytes: &a,
        }];
        assert!(write_spans(&mut file, &past, 100, |_| true).is_err());
    }

    #[test]
    fn stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let data = vec![7u8; (SPAN * 3) as usize];
        let parts = [Part {
            offset: 0,
            bytes: &data,
        }];
        let mut calls = 0;
        write_spans(&mut file, &parts, data.len() as u64, |_| {
            calls += 1;
            false
        })
        .unwrap();
        assert_eq!(calls, 1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SPAN);
    }
}
