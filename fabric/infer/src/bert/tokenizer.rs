//! Text to token ids with the model's own `tokenizer.json` (the `tokenizers` crate, built
//! without C code: `fancy-regex`, no Oniguruma), set to truncate at the length this runtime
//! runs and never to pad (a batch is packed, see the module docs of [`crate::bert`]).

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::Error;

/// A model's tokenizer, truncating to a chosen number of tokens (special tokens included).
pub struct TextTokenizer {
    inner: Tokenizer,
    max_tokens: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Reads `tokenizer.json`; sequences are cut at `max_tokens` and never padded, whatever
    /// the file says.
    pub fn from_file(path: &Path, max_tokens: usize) -> Result<TextTokenizer, Error> {
        let bad = |message: String| Error::Tokenizer {
            path: path.to_path_buf(),
            message,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| bad(e.to_string()))?;
        Ok(TextTokenizer { inner, max_tokens })
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// The ids of each text, with the model's special tokens.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, Error> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| {
                self.inner
                    .encode(*text, true)
                    .map(|e| e.get_ids().to_vec())
                    .map_err(|e| Error::Input {
                        index,
                        message: format!("tokenize: {e}"),
                    })
            })
            .collect()
    }
}
