//! A node's copy of the cluster's models: a model store (`infer::store`) in
//! `DATA_DIR/models`, filled by an upload on the leader and by fetches everywhere else.
//!
//! Files arrive in a scratch directory next to the store, each checked against the size and
//! SHA-256 the model's record names; the directory is renamed into place only once all are
//! there, and the store then opens it (checking the digests again) and must find the
//! registered id. A model half fetched is never opened.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

use crate::meta::infer::model::{InferModel, ModelFile};
use infer::bert::Dtype;
use infer::store::{CONFIG, POOLING, RECORD, Store, TOKENIZER, WEIGHTS};

/// The files of a stored model, as uploaded and fetched.
pub const MODEL_FILES: [&str; 5] = [RECORD, CONFIG, POOLING, TOKENIZER, WEIGHTS];
/// Bytes per chunk of a file upload or fetch.
pub const CHUNK_BYTES: usize = 1 << 20;

/// The model store of the node whose data directory is `dir`.
pub fn store_in(dir: &Path) -> Store {
    Store::new(dir.join("models"))
}

/// Model `name` of `store` as the cluster registers it: its f32 id, its dimension, and the
/// size and digest of each file.
pub fn describe(store: &Store, name: &str) -> anyhow::Result<InferModel> {
    let model = store.open(name).with_context(|| format!("model {name}"))?;
    let config = std::fs::read_to_string(model.path(CONFIG))?;
    let config =
        infer::bert::BertConfig::parse(&config).map_err(|e| anyhow::anyhow!("{CONFIG}: {e}"))?;
    let mut files = Vec::new();
    for path in MODEL_FILES {
        let file = model.path(path);
        let bytes = std::fs::metadata(&file)
            .with_context(|| format!("{}", file.display()))?
            .len();
        let mut h = Sha256::new();
        std::io::copy(&mut std::fs::File::open(&file)?, &mut h)?;
        files.push(ModelFile {
            path: path.to_owned(),
            sha256: crate::hex::encode(&h.finalize()),
            bytes,
        });
    }
    Ok(InferModel {
        name: name.to_owned(),
        id: model.id(Dtype::F32),
        dim: config.hidden_size as u32,
        files,
        added_ms: 0,
    })
}

/// Whether `store` holds `model` as registered (same id).
pub fn holds(store: &Store, model: &InferModel) -> bool {
    store
        .open(&model.name)
        .is_ok_and(|m| m.id(Dtype::F32) == model.id)
}

/// A model's files arriving, one after another, into a scratch directory.
pub struct Incoming {
    store: Store,
    model: InferModel,
    scratch: PathBuf,
    /// The file being written: its index in `model.files`, handle, digest so far and bytes.
    current: Option<(usize, std::fs::File, Sha256, u64)>,
    /// Files complete so far.
    done: usize,
}

impl Incoming {
    /// Starts receiving `model` into `store`.
    pub fn begin(store: &Store, model: InferModel) -> anyhow::Result<Incoming> {
        for want in MODEL_FILES {
            ensure!(
                model.files.iter().any(|f| f.path == want),
                "model {}: no {want} among its files",
                model.name
            );
        }
        ensure!(
            model.files.len() == MODEL_FILES.len(),
            "model {}: {} files, want exactly {:?}",
            model.name,
            model.files.len(),
            MODEL_FILES
        );
        std::fs::create_dir_all(store.root())?;
        let scratch = store.root().join(format!(
            ".incoming-{}-{}",
            model.name,
            crate::meta::client::new_request_id()
        ));
        std::fs::create_dir(&scratch).with_context(|| format!("{}", scratch.display()))?;
        Ok(Incoming {
            store: store.clone(),
            model,
            scratch,
            current: None,
            done: 0,
        })
    }

    /// Appends `data` to file `path`: the file being written, or the next one in order.
    pub fn write(&mut self, path: &str, data: &[u8]) -> anyhow::Result<()> {
        let same = self
            .current
            .as_ref()
            .is_some_and(|(i, ..)| self.model.files[*i].path == path);
        if !same {
            self.close_current()?;
            let i = self.done;
            let Some(want) = self.model.files.get(i) else {
                bail!("model {}: more files than listed ({path})", self.model.name);
            };
            ensure!(
                want.path == path,
                "model {}: file {path} arrived where {} was due",
                self.model.name,
                want.path
            );
            let file = std::fs::File::create(self.scratch.join(path))?;
            self.current = Some((i, file, Sha256::new(), 0));
        }
        let (i, file, h, bytes) = self.current.as_mut().expect("opened above");
        *bytes += data.len() as u64;
        ensure!(
            *bytes <= self.model.files[*i].bytes,
            "model {}: {path} is longer than its {} bytes",
            self.model.name,
            self.model.files[*i].bytes
        );
        h.update(data);
        file.write_all(data)?;
        Ok(())
    }

    fn close_current(&mut self) -> anyhow::Result<()> {
        let Some((i, file, h, bytes)) = self.current.take() else {
            return Ok(());
        };
        let want = &self.model.files[i];
        let found = crate::hex::encode(&h.finalize());
        ensure!(
            bytes == want.bytes && found == want.sha256,
            "model {}: {} has {bytes} bytes of SHA-256 {found}, not {} bytes of {}",
            self.model.name,
            want.path,
            want.bytes,
            want.sha256
        );
        file.sync_all()?;
        self.done += 1;
        Ok(())
    }

    /// Checks the last file, renames the model into place and opens it: its id and dimension
    /// must be the registered ones.
    pub fn finish(mut self) -> anyhow::Result<InferModel> {
        self.close_current()?;
        ensure!(
            self.done == self.model.files.len(),
            "model {}: {} of {} files arrived",
            self.model.name,
            self.done,
            self.model.files.len()
        );
        let place = self.store.root().join(&self.model.name);
        if place.exists() {
            let old = self.store.root().join(format!(
                ".replaced-{}-{}",
                self.model.name,
                crate::meta::client::new_request_id()
            ));
            std::fs::rename(&place, &old)?;
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(&self.scratch, &place)?;
        let found = describe(&self.store, &self.model.name)?;
        ensure!(
            found.id == self.model.id && found.dim == self.model.dim,
            "model {}: the files make id {} of dimension {}, not {} of {}",
            self.model.name,
            found.id,
            found.dim,
            self.model.id,
            self.model.dim
        );
        Ok(InferModel {
            added_ms: self.model.added_ms,
            ..found
        })
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Renamed into place by `finish`, or abandoned: either way nothing stays here.
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The path of `file` of stored model `name`, if `name` is stored and `file` is one of a
/// model's files (nothing else of the store is served).
pub fn served_file(store: &Store, name: &str, file: &str) -> Option<PathBuf> {
    if !MODEL_FILES.contains(&file) {
        return None;
    }
    store.open(name).ok().map(|m| m.path(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_model(root: &Path) -> InferModel {
        let files: Vec<ModelFile> = MODEL_FILES
            .iter()
            .map(|p| {
                let data = format!("contents of {p}");
                std::fs::write(root.join(p), &data).unwrap();
                ModelFile {
                    path: (*p).to_owned(),
                    sha256: crate::hex::encode(&Sha256::digest(data.as_bytes())),
                    bytes: data.len() as u64,
                }
            })
            .collect();
        InferModel {
            name: "m".into(),
            id: "0".repeat(64),
            dim: 3,
            files,
            added_ms: 0,
        }
    }

    #[test]
    fn damaged_reordered_or_missing_files_leave_nothing_behind() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let store = Store::new(dst.path());
        let model = fake_model(src.path());
        let send = |m: &InferModel, order: &[usize], flip: Option<usize>| -> anyhow::Result<()> {
            let mut incoming = Incoming::begin(&store, m.clone())?;
            for &i in order {
                let mut data = std::fs::read(src.path().join(&m.files[i].path))?;
                if flip == Some(i) {
                    data[0] ^= 1;
                }
                incoming.write(&m.files[i].path, &data)?;
            }
            incoming.finish().map(|_| ())
        };
        let e = send(&model, &[0, 1, 2, 3, 4], Some(2)).unwrap_err();
        assert!(e.to_string().contains("SHA-256"), "{e}");
        let e = send(&model, &[1, 0, 2, 3, 4], None).unwrap_err();
        assert!(e.to_string().contains("arrived where"), "{e}");
        let e = send(&model, &[0, 1, 2], None).unwrap_err();
        assert!(e.to_string().contains("3 of 5 files"), "{e}");
        // Whole and in order, these files still make no model the store opens.
        let e = send(&model, &[0, 1, 2, 3, 4], None).unwrap_err();
        assert!(e.to_string().contains("model m"), "{e}");
        let left: Vec<_> = std::fs::read_dir(dst.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".incoming"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(served_file(&store, "m", "../x").is_none());
    }
}
