//! Opening an SMQ file: map it read-only, check every invariant of SPEC.md §8, and hand out
//! tensor bytes straight from the map (zero copies).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::codec::decode_section;
use crate::error::{Error, Result};
use crate::header::{Header, Section, DATA_ALIGNMENT, FORMAT_MINOR, HEADER_LEN};
use crate::manifest::{Manifest, Metadata, TensorEntry};
use crate::validate::{validate_manifest, validate_metadata};
use crate::writer::hash_bytes;

/// Maps a file read-only. SMQ files are immutable by contract (written once to a temp file
/// and renamed; cache entries are read-only), which is what makes the mapping sound.
pub fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and the files smq maps are never modified in place;
    // a file truncated underneath by another program would fault, which no reader of
    // mapped memory can prevent.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    // Pages read in through this map then come in 2 MiB folios mapped as huge pages:
    // streaming the weights of a model read from disk misses the TLB far less (a file
    // already in the page cache keeps the folios it has). Only a hint.
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    Ok(map)
}

/// A read-only memory map of a model file plus its manifest: what the runtime consumes,
/// whether it came from an SMQ file or directly from a GGUF.
pub struct MappedModel {
    pub manifest: Manifest,
    pub map: Mmap,
    /// Absolute file offset that every `TensorEntry::offset` is relative to.
    pub data_offset: u64,
}

impl MappedModel {
    /// The tensor's bytes. Entries come from a validated manifest; an entry that does not
    /// fit the map yields an empty slice, which every consumer rejects by size.
    pub fn tensor_data(&self, entry: &TensorEntry) -> &[u8] {
        self.data_offset
            .checked_add(entry.offset)
            .and_then(|start| Some((start, start.checked_add(entry.size)?)))
            .and_then(|(s, e)| self.map.get(s as usize..e as usize))
            .unwrap_or(&[])
    }

    pub fn tensor(&self, name: &str) -> Option<(&TensorEntry, &[u8])> {
        let entry = self.manifest.tensors.iter().find(|t| t.name == name)?;
        Some((entry, self.tensor_data(entry)))
    }
}

/// An opened, validated SMQ file. Everything but the tensor hashes is checked on open;
/// [`SmqFile::verify`] checks those.
pub struct SmqFile {
    header: Header,
    model: MappedModel,
}

impl SmqFile {
    pub fn open(path: &Path) -> Result<SmqFile> {
        let map = map_file(path)?;
        let header = Header::decode(&map)?;
        check_sections(&header, &map)?;
        let manifest_bytes = section_bytes(&map, header.manifest);
        if blake3::hash(manifest_bytes).as_bytes() != &header.manifest_blake3 {
            return Err(Error::HashMismatch {
                what: "manifest".into(),
            });
        }
        let mut manifest: Manifest = decode_section(
            manifest_bytes,
            header.manifest_raw_len,
            "manifest",
            header.minor > FORMAT_MINOR,
        )?;
        if let Some(t) = manifest.tokenizer.as_mut() {
            t.shrink_to_fit();
        }
        validate_manifest(&manifest, header.data.len)?;
        Ok(SmqFile {
            model: MappedModel {
                manifest,
                map,
                data_offset: header.data.offset,
            },
            header,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn manifest(&self) -> &Manifest {
        &self.model.manifest
    }

    /// Decodes the metadata section (every source key/value), checking its hash first.
    pub fn metadata(&self) -> Result<Metadata> {
        let bytes = section_bytes(&self.model.map, self.header.metadata);
        if blake3::hash(bytes).as_bytes() != &self.header.metadata_blake3 {
            return Err(Error::HashMismatch {
                what: "metadata section".into(),
            });
        }
        let metadata: Metadata = decode_section(
            bytes,
            self.header.metadata_raw_len,
            "metadata section",
            self.header.minor > FORMAT_MINOR,
        )?;
        validate_metadata(&metadata)?;
        Ok(metadata)
    }

    pub fn tensor_data(&self, entry: &TensorEntry) -> &[u8] {
        self.model.tensor_data(entry)
    }

    /// Checks every hash in the file: the metadata section and each tensor (in parallel),
    /// and that the padding between tensors is zero (no byte escapes a check).
    /// The error names the first corrupt tensor in directory order.
    pub fn verify(&self) -> Result<()> {
        self.metadata()?;
        self.check_data_padding()?;
        let bad: Vec<&TensorEntry> = self
            .manifest()
            .tensors
            .par_iter()
            .filter(|t| hash_bytes(self.tensor_data(t)) != t.blake3)
            .collect();
        match bad.first() {
            None => Ok(()),
            Some(t) => Err(Error::TensorHashMismatch {
                name: t.name.clone(),
            }),
        }
    }

    /// Names of every tensor whose bytes do not match their hash.
    pub fn corrupt_tensors(&self) -> Vec<String> {
        self.manifest()
            .tensors
            .par_iter()
            .filter(|t| hash_bytes(self.tensor_data(t)) != t.blake3)
            .map(|t| t.name.clone())
            .collect()
    }

    /// The bytes of the data section not covered by a tensor must be zero.
    pub fn check_data_padding(&self) -> Result<()> {
        let data = section_bytes(&self.model.map, self.header.data);
        let mut ranges: Vec<(u64, u64)> = self
            .manifest()
            .tensors
            .iter()
            .map(|t| (t.offset, t.offset + t.size))
            .collect();
        ranges.sort_unstable();
        let mut pos = 0u64;
        for (start, end) in ranges.into_iter().chain([(data.len() as u64, 0)]) {
            if data[pos as usize..start as usize].iter().any(|&b| b != 0) {
                return Err(Error::invalid(format!(
                    "non-zero padding in the data section before offset {start}"
                )));
            }
            pos = pos.max(end);
        }
        Ok(())
    }

    pub fn into_mapped(self) -> MappedModel {
        self.model
    }
}

/// Section bounds: data page-aligned after the header, then the manifest and the metadata
/// back to back, ending exactly at the end of the file (catches truncation and appended
/// bytes, and leaves no byte outside a hash or a check).
fn check_sections(h: &Header, map: &[u8]) -> Result<()> {
    let actual_len = map.len() as u64;
    if h.file_len != actual_len {
        return Err(Error::LengthMismatch {
            expected: h.file_len,
            actual: actual_len,
        });
    }
    if !h.data.offset.is_multiple_of(DATA_ALIGNMENT) || h.data.offset < HEADER_LEN as u64 {
        return Err(Error::invalid(format!(
            "data section offset {} is not page-aligned after the header",
            h.data.offset
        )));
    }
    let sections = [
        ("data", h.data),
        ("manifest", h.manifest),
        ("metadata", h.metadata),
    ];
    for (name, s) in &sections {
        match s.end() {
            Some(end) if end <= actual_len => {}
            _ => {
                return Err(Error::invalid(format!(
                    "{name} section ({}+{}) lies outside the file",
                    s.offset, s.len
                )))
            }
        }
    }
    for w in sections.windows(2) {
        if w[1].1.offset != w[0].1.offset + w[0].1.len {
            return Err(Error::invalid(format!(
                "the {} section does not follow the {} section directly",
                w[1].0, w[0].0
            )));
        }
    }
    if h.metadata.offset + h.metadata.len != actual_len {
        return Err(Error::invalid("bytes follow the metadata section"));
    }
    if map[HEADER_LEN..h.data.offset as usize]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(Error::invalid(
            "non-zero bytes between the header and the data section",
        ));
    }
    Ok(())
}

/// The bytes of a section already checked by [`check_sections`].
fn section_bytes(map: &[u8], s: Section) -> &[u8] {
    &map[s.offset as usize..(s.offset + s.len) as usize]
}
