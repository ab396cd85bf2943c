//! The models a node has loaded, by name, registered id and dtype: loading MiniLM takes a
//! fraction of a second (and int8 calibrates), so each is loaded once per process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, ensure};
use infer::Engine;
use infer::bert::Dtype;
use infer::embedder::Embedder;
use infer::store::Store;

use crate::meta::infer::model::ComputeDtype;

pub fn dtype_of(d: ComputeDtype) -> Dtype {
    match d {
        ComputeDtype::F32 => Dtype::F32,
        ComputeDtype::Bf16 => Dtype::Bf16,
        ComputeDtype::Int8 => Dtype::Int8,
    }
}

type Key = (String, String, ComputeDtype);

/// Loaded models over one GEMM engine.
pub struct Embedders {
    pub store: Store,
    pub engine: Engine,
    cache: Mutex<HashMap<Key, Arc<Embedder>>>,
}

impl Embedders {
    pub fn new(store: Store) -> anyhow::Result<Embedders> {
        Ok(Embedders {
            store,
            engine: Engine::detect().context("no GEMM path on this CPU")?,
            cache: Mutex::default(),
        })
    }

    /// Model `name` as registered with id `id` (its f32 id), in `dtype`. Blocking: call it
    /// off the async threads.
    pub fn get(&self, name: &str, id: &str, dtype: ComputeDtype) -> anyhow::Result<Arc<Embedder>> {
        let key = (name.to_owned(), id.to_owned(), dtype);
        if let Some(e) = self.cache.lock().expect("embedders").get(&key) {
            return Ok(Arc::clone(e));
        }
        let model = self
            .store
            .open(name)
            .with_context(|| format!("model {name} on this node"))?;
        ensure!(
            model.id(Dtype::F32) == id,
            "model {name} on this node is {}, not the registered {id}",
            model.id(Dtype::F32)
        );
        let embedder = Arc::new(Embedder::open(&model, &self.engine, dtype_of(dtype))?);
        self.cache
            .lock()
            .expect("embedders")
            .insert(key, Arc::clone(&embedder));
        Ok(embedder)
    }
}
