//! The ggml tensor type table: one row per type, the only place that knows how many
//! bytes a block of each type takes. Everything that sizes tensor bytes goes through it.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A ggml tensor type, identified by its numeric id as written in GGUF files.
///
/// Serialized as that id (a u32), never as a Rust variant index, so the manifest stores
/// the same number GGUF does; an unknown id fails to deserialize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    IQ2XXS = 16,
    IQ2XS = 17,
    IQ3XXS = 18,
    IQ1S = 19,
    IQ4NL = 20,
    IQ3S = 21,
    IQ2S = 22,
    IQ4XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
}

/// One row of the type table.
#[derive(Clone, Copy, Debug)]
pub struct TypeInfo {
    pub ty: GgmlType,
    /// Name as ggml spells it (`q4_K`, `f16`, ...).
    pub name: &'static str,
    /// Elements per block (1 for plain scalar types).
    pub block_size: u64,
    /// Bytes per block.
    pub type_size: u64,
    /// Whether smq's runtime has kernels for it (others are stored and exported only).
    pub executable: bool,
}

const fn row(
    ty: GgmlType,
    name: &'static str,
    block_size: u64,
    type_size: u64,
    executable: bool,
) -> TypeInfo {
    TypeInfo {
        ty,
        name,
        block_size,
        type_size,
        executable,
    }
}

/// The table, ordered by id. Sizes are ggml's `sizeof(block_*)`.
pub const TYPE_TABLE: &[TypeInfo] = &[
    row(GgmlType::F32, "f32", 1, 4, true),
    row(GgmlType::F16, "f16", 1, 2, true),
    row(GgmlType::Q4_0, "q4_0", 32, 18, true),
    row(GgmlType::Q4_1, "q4_1", 32, 20, true),
    row(GgmlType::Q5_0, "q5_0", 32, 22, true),
    row(GgmlType::Q5_1, "q5_1", 32, 24, true),
    row(GgmlType::Q8_0, "q8_0", 32, 34, true),
    row(GgmlType::Q8_1, "q8_1", 32, 36, false),
    row(GgmlType::Q2K, "q2_K", 256, 84, true),
    row(GgmlType::Q3K, "q3_K", 256, 110, true),
    row(GgmlType::Q4K, "q4_K", 256, 144, true),
    row(GgmlType::Q5K, "q5_K", 256, 176, true),
    row(GgmlType::Q6K, "q6_K", 256, 210, true),
    row(GgmlType::Q8K, "q8_K", 256, 292, false),
    row(GgmlType::IQ2XXS, "iq2_xxs", 256, 66, false),
    row(GgmlType::IQ2XS, "iq2_xs", 256, 74, false),
    row(GgmlType::IQ3XXS, "iq3_xxs", 256, 98, false),
    row(GgmlType::IQ1S, "iq1_s", 256, 50, false),
    row(GgmlType::IQ4NL, "iq4_nl", 32, 18, false),
    row(GgmlType::IQ3S, "iq3_s", 256, 110, false),
    row(GgmlType::IQ2S, "iq2_s", 256, 82, false),
    row(GgmlType::IQ4XS, "iq4_xs", 256, 136, false),
    row(GgmlType::I8, "i8", 1, 1, false),
    row(GgmlType::I16, "i16", 1, 2, false),
    row(GgmlType::I32, "i32", 1, 4, false),
    row(GgmlType::I64, "i64", 1, 8, false),
    row(GgmlType::F64, "f64", 1, 8, false),
    row(GgmlType::IQ1M, "iq1_m", 256, 56, false),
    row(GgmlType::BF16, "bf16", 1, 2, true),
    row(GgmlType::TQ1_0, "tq1_0", 256, 54, false),
    row(GgmlType::TQ2_0, "tq2_0", 256, 66, false),
    row(GgmlType::MXFP4, "mxfp4", 32, 17, false),
];

impl GgmlType {
    /// Looks up a type by its GGUF id; `None` for ids that are unknown or retired.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TYPE_TABLE.iter().find(|r| r.ty as u32 == id).map(|r| r.ty)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn info(self) -> &'static TypeInfo {
        TYPE_TABLE
            .iter()
            .find(|r| r.ty == self)
            .expect("every GgmlType has a table row")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn block_size(self) -> u64 {
        self.info().block_size
    }

    pub fn type_size(self) -> u64 {
        self.info().type_size
    }

    /// Bytes taken by a tensor of this type and shape, or `None` when the element count
    /// overflows, the shape is empty of dimensions, or the first dimension (the row) is
    /// not a whole number of blocks.
    pub fn tensor_bytes(self, shape: &[u64]) -> Option<u64> {
        let (&row_len, rest) = shape.split_first()?;
        let info = self.info();
        if !row_len.is_multiple_of(info.block_size) {
            return None;
        }
        let row_bytes = (row_len / info.block_size).checked_mul(info.type_size)?;
        rest.iter()
            .try_fold(row_bytes, |acc, &d| acc.checked_mul(d))
    }
}

impl Serialize for GgmlType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.id())
    }
}

impl<'de> Deserialize<'de> for GgmlType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = u32::deserialize(deserializer)?;
        GgmlType::from_id(id)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown ggml type id {id}")))
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for r in TYPE_TABLE {
            assert_eq!(GgmlType::from_id(r.ty.id()), Some(r.ty));
        }
        for retired in [4u32, 5, 31, 32, 33, 36, 37, 38, 1000] {
            assert_eq!(GgmlType::from_id(retired), None);
        }
    }

    #[test]
    fn tensor_bytes_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4K.tensor_bytes(&[512, 3]), Some(2 * 144 * 3));
        assert_eq!(GgmlType::Q4K.tensor_bytes(&[100]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[u64::MAX, 2]), None);
        assert_eq!(GgmlType::F32.tensor_bytes(&[]), None);
        assert_eq!(GgmlType::F16.tensor_bytes(&[7, 0]), Some(0));
    }
}
