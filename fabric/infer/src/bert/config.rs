//! The shape of a BERT encoder, read from the model's `config.json` (the fields the forward
//! pass needs; the rest, such as dropout rates, mean nothing at inference).

use serde::Deserialize;

/// The hyper-parameters of a BERT encoder.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    /// Only `gelu` (the exact, erf form) is supported.
    pub hidden_act: String,
}

impl BertConfig {
    /// Parses `config.json` and checks it describes an encoder this runtime can run.
    pub fn parse(json: &str) -> Result<BertConfig, String> {
        let config: BertConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act {:?} is not supported (only \"gelu\")",
                self.hidden_act
            ));
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0 || *v > 1 << 20) {
            return Err(format!("{name} must be between 1 and {}", 1 << 20));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps < 1.0) {
            return Err(format!(
                "layer_norm_eps {} is not in (0, 1)",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"hidden_act": "gelu", "hidden_size": 384, "intermediate_size": 1536,
        "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "num_attention_heads": 12,
        "num_hidden_layers": 6, "type_vocab_size": 2, "vocab_size": 30522,
        "hidden_dropout_prob": 0.1}"#;

    #[test]
    fn reads_minilm_and_refuses_what_it_cannot_run() {
        let c = BertConfig::parse(MINILM).unwrap();
        assert_eq!(
            (c.hidden_size, c.head_dim(), c.num_hidden_layers),
            (384, 32, 6)
        );
        let relu = MINILM.replace("\"gelu\"", "\"relu\"");
        assert!(BertConfig::parse(&relu).unwrap_err().contains("hidden_act"));
        let heads = MINILM.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7");
        assert!(BertConfig::parse(&heads).unwrap_err().contains("multiple"));
        let zero = MINILM.replace("\"num_hidden_layers\": 6", "\"num_hidden_layers\": 0");
        assert!(
            BertConfig::parse(&zero)
                .unwrap_err()
                .contains("num_hidden_layers")
        );
        assert!(BertConfig::parse("{}").is_err());
    }
}
