//! Incremental detokenization: a multi-byte character can span several tokens (byte
//! fallback, byte-level BPE), so text is released only once its bytes are complete.

use super::Tokenizer;

/// Pushes token ids, returns the text they complete. Control tokens print nothing.
#[derive(Default, Debug, Clone)]
pub struct TextStream {
    pending: Vec<u8>,
}

impl TextStream {
    pub fn new() -> TextStream {
        TextStream::default()
    }

    /// Adds one token; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending
            .extend_from_slice(&tok.token_bytes(id).unwrap_or_default());
        self.take_complete()
    }

    /// Ends the stream: whatever is left, with incomplete characters as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut consumed = 0;
        loop {
            let rest = &self.pending[consumed..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    consumed = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix was just validated.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    consumed += valid;
                    match e.error_len() {
                        // An incomplete sequence at the end: wait for more bytes.
                        None => break,
                        // Bytes that can never become a character.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            consumed += bad;
                        }
                    }
                }
            }
        }
        self.pending.drain(..consumed);
        out
    }
}
