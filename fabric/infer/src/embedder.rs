//! Text in, vectors out: a stored model's tokenizer and encoder together, in one dtype, with
//! the id its vectors carry.

use crate::Error;
use crate::bert::{BertConfig, CALIBRATION_TEXTS, Dtype, Encoder, TextTokenizer};
use crate::gemm::Engine;
use crate::model::tensors::WeightsFile;
use crate::store::{CONFIG, StoreError, StoredModel, TOKENIZER, WEIGHTS};

/// A model ready to embed text.
#[derive(Debug)]
pub struct Embedder {
    name: String,
    id: String,
    tokenizer: TextTokenizer,
    encoder: Encoder,
}

impl Embedder {
    /// Loads `model` for `dtype`. Int8 first runs the f32 encoder over the engine's
    /// calibration set to balance its layers (about a fifth of a second for MiniLM).
    pub fn open(
        model: &StoredModel,
        engine: &Engine,
        dtype: Dtype,
    ) -> Result<Embedder, StoreError> {
        let config_path = model.path(CONFIG);
        let text = std::fs::read_to_string(&config_path).map_err(super::store::io(&config_path))?;
        let config = BertConfig::parse(&text).map_err(|message| StoreError::Invalid {
            file: config_path.display().to_string(),
            message,
        })?;
        let tokenizer = TextTokenizer::from_file(&model.path(TOKENIZER), model.record.max_tokens)?;
        let weights = WeightsFile::read(&model.path(WEIGHTS))?;
        let calibration = if dtype == Dtype::Int8 {
            let f32 = Encoder::load(config.clone(), &weights, Dtype::F32, None)?;
            let texts: Vec<&str> = CALIBRATION_TEXTS
                .lines()
                .filter(|l| !l.is_empty())
                .collect();
            let ids = tokenizer.encode(&texts)?;
            let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
            Some(f32.calibrate(engine, &seqs)?)
        } else {
            None
        };
        let encoder = Encoder::load(config, &weights, dtype, calibration.as_ref())?;
        Ok(Embedder {
            name: model.record.name.clone(),
            id: model.id(dtype),
            tokenizer,
            encoder,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The id every vector of this embedder carries (see [`crate::store`]).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dtype(&self) -> Dtype {
        self.encoder.dtype()
    }

    /// Values per vector.
    pub fn dims(&self) -> usize {
        self.encoder.config().hidden_size
    }

    /// Longest input in tokens; longer texts are cut.
    pub fn max_tokens(&self) -> usize {
        self.tokenizer.max_tokens()
    }

    /// Token ids of each text (special tokens included, cut at [`Embedder::max_tokens`]).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, Error> {
        self.tokenizer.encode(texts)
    }

    /// Vectors of tokenized texts, `ids.len() × dims` values.
    pub fn embed_ids(&self, engine: &Engine, ids: &[Vec<u32>]) -> Result<Vec<f32>, Error> {
        let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        self.encoder.embed(engine, &seqs)
    }

    /// Vectors of `texts`, `texts.len() × dims` values.
    pub fn embed(&self, engine: &Engine, texts: &[&str]) -> Result<Vec<f32>, Error> {
        let ids = self.tokenize(texts)?;
        self.embed_ids(engine, &ids)
    }
}
