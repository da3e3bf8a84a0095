//! Code point classes as llama.cpp's pre-tokenizers see them, and GPT-2's byte <-> code
//! point mapping used by byte-level BPE vocabularies.

use unicode_general_category::{get_general_category, GeneralCategory as G};

/// The classes of one code point. Every code point inside a piece of text has at least one
/// bit set (unassigned ones get `UNDEFINED`), so an all-zero value means "outside the text".
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(crate) struct CpFlags(u16);

impl CpFlags {
    pub const NONE: CpFlags = CpFlags(0);
    const UNDEFINED: u16 = 1 << 0;
    const NUMBER: u16 = 1 << 1;
    const LETTER: u16 = 1 << 2;
    const SEPARATOR: u16 = 1 << 3;
    const MARK: u16 = 1 << 4;
    const PUNCTUATION: u16 = 1 << 5;
    const SYMBOL: u16 = 1 << 6;
    const CONTROL: u16 = 1 << 7;
    const WHITESPACE: u16 = 1 << 8;

    pub fn of(c: char) -> CpFlags {
        let category = match get_general_category(c) {
            G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter => Self::LETTER,
            G::DecimalNumber | G::LetterNumber | G::OtherNumber => Self::NUMBER,
            G::SpaceSeparator | G::LineSeparator | G::ParagraphSeparator => Self::SEPARATOR,
            G::NonspacingMark | G::SpacingMark | G::EnclosingMark => Self::MARK,
            G::ConnectorPunctuation
            | G::DashPunctuation
            | G::OpenPunctuation
            | G::ClosePunctuation
            | G::InitialPunctuation
            | G::FinalPunctuation
            | G::OtherPunctuation => Self::PUNCTUATION,
            G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol => Self::SYMBOL,
            G::Control | G::Format | G::PrivateUse | G::Surrogate => Self::CONTROL,
            // Unassigned, and categories a newer table may add.
            _ => Self::UNDEFINED,
        };
        // Unicode's White_Space property, the set llama.cpp uses for `\s`.
        let ws = if c.is_whitespace() {
            Self::WHITESPACE
        } else {
            0
        };
        CpFlags(category | ws)
    }

    pub fn any(self) -> bool {
        self.0 != 0
    }
    pub fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    pub fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    pub fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    pub fn is_punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
    /// Neither whitespace, letter nor number: the `[^\s\p{L}\p{N}]` class.
    pub fn is_other(self) -> bool {
        self.any() && self.0 & (Self::WHITESPACE | Self::LETTER | Self::NUMBER) == 0
    }
}

/// GPT-2's table: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100.. in byte order, so every byte becomes a visible, non-space character.
const fn byte_to_cpt_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut next = 256u16;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        if printable {
            table[b] = b as u16;
        } else {
            table[b] = next;
            next += 1;
        }
        b += 1;
    }
    table
}

const BYTE_TO_CPT: [u16; 256] = byte_to_cpt_table();

/// Code points U+0000..U+0143 back to bytes; -1 where no byte maps there.
const fn cpt_to_byte_table() -> [i16; 324] {
    let mut table = [-1i16; 324];
    let mut b = 0usize;
    while b < 256 {
        table[BYTE_TO_CPT[b] as usize] = b as i16;
        b += 1;
    }
    table
}

const CPT_TO_BYTE: [i16; 324] = cpt_to_byte_table();

/// The character GPT-2's byte-level encoding uses for `b`.
pub(crate) fn byte_to_char(b: u8) -> char {
    // Every table entry is below U+0144, a valid scalar value.
    char::from_u32(u32::from(BYTE_TO_CPT[b as usize])).unwrap_or('\u{FFFD}')
}

/// The byte a GPT-2 encoded character stands for, if it is one of the 256.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let v = *CPT_TO_BYTE.get(c as usize)?;
    u8::try_from(v).ok()
}

/// Appends `text`'s UTF-8 bytes to `out`, each as its GPT-2 character.
pub(crate) fn byte_encode_into(text: &str, out: &mut String) {
    for &b in text.as_bytes() {
        out.push(byte_to_char(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_byte_map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(char_to_byte('中'), None);
    }

    #[test]
    fn classes() {
        assert!(CpFlags::of('a').is_letter());
        assert!(CpFlags::of('é').is_letter());
        assert!(CpFlags::of('7').is_number());
        assert!(CpFlags::of('²').is_number());
        assert!(CpFlags::of('\u{a0}').is_whitespace());
        assert!(!CpFlags::of('\u{200b}').is_whitespace());
        assert!(CpFlags::of('\u{200b}').is_other());
        assert!(CpFlags::of('!').is_punctuation());
        assert!(CpFlags::of('+').is_other());
        assert!(!CpFlags::NONE.is_other());
    }
}
