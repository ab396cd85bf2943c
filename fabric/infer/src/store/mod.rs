//! The model store: each imported model is a directory `ROOT/NAME/` holding its files and a
//! `model.toml` that records, for each file, its SHA-256. Opening a model checks every file
//! against its record, so a damaged or swapped file is refused by name before it is used.
//!
//! A model's *id* names exactly what produces its vectors: the SHA-256 over the engine's
//! version, the digests of the weights, tokenizer and config, the pooling, the normalisation,
//! the token limit and the dtype (and, for int8, the calibration set). Every vector the model
//! writes carries it, so vectors made by different weights or numerics are never mixed up.

pub mod import;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bert::{CALIBRATION_TEXTS, Dtype};

/// Bumped whenever the engine's numerics change what a model outputs.
pub const ENGINE_VERSION: u32 = 2;

/// The files of a stored model.
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";
pub const CONFIG: &str = "config.json";
pub const POOLING: &str = "pooling.json";
/// The model's record.
pub const RECORD: &str = "model.toml";

/// What the store refuses, each naming what it refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model name {0:?}: use 1 to 64 of a-z, 0-9, '.', '_', '-', not starting with '.'")]
    BadName(String),
    #[error("no model {name:?} in {root}")]
    NoSuchModel { name: String, root: PathBuf },
    #[error("a model {name:?} is already in {root}; remove its directory to import it again")]
    AlreadyImported { name: String, root: PathBuf },
    #[error(
        "{file}: SHA-256 is {found}, expected {expected}: the file is damaged or not the one recorded"
    )]
    Damaged {
        file: String,
        expected: String,
        found: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{0}")]
    Engine(#[from] crate::Error),
}

/// How the model turns token vectors into one vector, and what its files hash to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    /// Always `bert` for now.
    pub architecture: String,
    /// Always `mean` for now (over the tokens, special ones included).
    pub pooling: String,
    /// Vectors are scaled to unit length.
    pub normalize: bool,
    /// Longest input in tokens (special tokens included); longer texts are cut.
    pub max_tokens: usize,
    /// File name → SHA-256 (hex).
    pub files: BTreeMap<String, String>,
    /// Where the files came from.
    pub source: Source,
}

/// Where an imported model's files came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `wheel` or `dir`.
    pub kind: String,
    /// The wheel's or directory's file name (no path).
    pub name: String,
    /// The wheel's SHA-256, for a wheel.
    pub sha256: Option<String>,
}

/// A model store rooted at a directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A model opened from the store, its files checked.
#[derive(Clone, Debug)]
pub struct StoredModel {
    dir: PathBuf,
    pub record: Record,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 (hex) of everything `r` yields.
pub(crate) fn sha256_of(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens model `name`, checking every file against its record.
    pub fn open(&self, name: &str) -> Result<StoredModel, StoreError> {
        check_name(name)?;
        let dir = self.root.join(name);
        let record_path = dir.join(RECORD);
        if !record_path.exists() {
            return Err(StoreError::NoSuchModel {
                name: name.to_string(),
                root: self.root.clone(),
            });
        }
        let text = std::fs::read_to_string(&record_path).map_err(io(&record_path))?;
        let record: Record = toml::from_str(&text).map_err(|e| StoreError::Invalid {
            file: record_path.display().to_string(),
            message: e.to_string(),
        })?;
        for file in [WEIGHTS, TOKENIZER, CONFIG, POOLING] {
            let Some(expected) = record.files.get(file) else {
                return Err(StoreError::Invalid {
                    file: record_path.display().to_string(),
                    message: format!("no digest recorded for {file}"),
                });
            };
            let path = dir.join(file);
            let f = std::fs::File::open(&path).map_err(io(&path))?;
            let found = sha256_of(f).map_err(io(&path))?;
            if &found != expected {
                return Err(StoreError::Damaged {
                    file: path.display().to_string(),
                    expected: expected.clone(),
                    found,
                });
            }
        }
        Ok(StoredModel { dir, record })
    }

    /// The names of the models in the store.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&name).is_ok() && entry.path().join(RECORD).exists() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

impl StoredModel {
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The id of this model's vectors in `dtype` (see the module docs).
    pub fn id(&self, dtype: Dtype) -> String {
        let r = &self.record;
        let mut h = Sha256::new();
        h.update(format!("fabric-embedding\nengine={ENGINE_VERSION}\n"));
        for (file, digest) in &r.files {
            h.update(format!("{file}={digest}\n"));
        }
        h.update(format!(
            "architecture={}\npooling={}\nnormalize={}\nmax_tokens={}\ndtype={dtype}\n",
            r.architecture, r.pooling, r.normalize, r.max_tokens
        ));
        if dtype == Dtype::Int8 {
            h.update(format!(
                "calibration={}\n",
                hex(&Sha256::digest(CALIBRATION_TEXTS))
            ));
        }
        hex(&h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for ok in ["minilm", "all-minilm-l6-v2", "m.1_x"] {
            check_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "Upper", "a/b", "../x", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
