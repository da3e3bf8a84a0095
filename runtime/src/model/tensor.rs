//! Typed, zero-copy views of tensors inside the mapped model file.

use smq_format::{GgmlType, MappedModel, TensorEntry};

use super::ModelError;
use crate::quant::matmul::WeightMatrix;

/// Looks up a tensor, failing with a message that names it.
pub fn entry<'a>(
    mapped: &'a MappedModel,
    name: &str,
) -> Result<(&'a TensorEntry, &'a [u8]), ModelError> {
    mapped
        .tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// A `rows × cols` weight matrix (`shape == [cols, rows]` in ggml order) of any type the
/// kernels support.
pub fn matrix<'a>(
    mapped: &'a MappedModel,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<WeightMatrix<'a>, ModelError> {
    let (e, bytes) = entry(mapped, name)?;
    check_shape(e, &[cols as u64, rows as u64])?;
    check_len(e, bytes)?;
    WeightMatrix::new(e.ggml_type, rows, cols, bytes).map_err(|err| ModelError::BadTensor {
        name: name.to_string(),
        reason: err.to_string(),
    })
}

/// A matrix that may be absent (e.g. `output.weight` when tied to the embeddings).
pub fn optional_matrix<'a>(
    mapped: &'a MappedModel,
    name: &str,
    cols: usize,
    rows: usize,
) -> Result<Option<WeightMatrix<'a>>, ModelError> {
    if mapped.tensor(name).is_none() {
        return Ok(None);
    }
    matrix(mapped, name, cols, rows).map(Some)
}

/// A 1-D F32 tensor of `len` elements (norm weights), viewed in place.
pub fn vector<'a>(
    mapped: &'a MappedModel,
    name: &str,
    len: usize,
) -> Result<&'a [f32], ModelError> {
    let (e, bytes) = entry(mapped, name)?;
    check_shape(e, &[len as u64])?;
    if e.ggml_type != GgmlType::F32 {
        return Err(ModelError::BadType {
            name: name.to_string(),
            ty: e.ggml_type.name(),
            expected: GgmlType::F32.name(),
        });
    }
    check_len(e, bytes)?;
    cast_f32(bytes).ok_or_else(|| ModelError::BadTensor {
        name: name.to_string(),
        reason: "data is not 4-byte aligned".to_string(),
    })
}

fn check_shape(e: &TensorEntry, expected: &[u64]) -> Result<(), ModelError> {
    if e.shape != expected {
        return Err(ModelError::BadShape {
            name: e.name.clone(),
            got: e.shape.clone(),
            expected: expected.to_vec(),
        });
    }
    Ok(())
}

fn check_len(e: &TensorEntry, bytes: &[u8]) -> Result<(), ModelError> {
    match e.ggml_type.tensor_bytes(&e.shape) {
        Some(n) if n == bytes.len() as u64 => Ok(()),
        _ => Err(ModelError::BadTensor {
            name: e.name.clone(),
            reason: format!(
                "holds {} bytes, its shape and type need a different size",
                bytes.len()
            ),
        }),
    }
}

/// Views little-endian f32 bytes as `&[f32]` without copying; `None` if misaligned.
#[cfg(target_endian = "little")]
pub fn cast_f32(bytes: &[u8]) -> Option<&[f32]> {
    let ptr = bytes.as_ptr();
    if !bytes.len().is_multiple_of(4) || ptr.align_offset(std::mem::align_of::<f32>()) != 0 {
        return None;
    }
    // SAFETY: the pointer is aligned for f32 and the length is a whole number of f32s;
    // every bit pattern is a valid f32; the lifetime is that of `bytes`.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast::<f32>(), bytes.len() / 4) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_checks_alignment_and_length() {
        let words = [1.5f32, -2.0, 3.25];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        // A Vec<u8> has no alignment promise; find an aligned start inside a padded copy.
        let mut buf = vec![0u8; bytes.len() + 4];
        let start = buf.as_ptr().align_offset(4);
        buf[start..start + 12].copy_from_slice(&bytes);
        assert_eq!(cast_f32(&buf[start..start + 12]), Some(&words[..]));
        assert_eq!(cast_f32(&buf[start..start + 11]), None);
        assert_eq!(cast_f32(&buf[start + 1..start + 9]), None);
    }
}
