//! What int8 layers are balanced by: per block and dense layer, the largest magnitude each
//! input channel reached while an f32 encoder ran a calibration text set. The set
//! ([`TEXTS`]) ships with the engine, so an int8 encoder is the same on every node that
//! loads the same weights.

use super::{BertConfig, Site};

/// The calibration set: short and long sentences of everyday and technical prose, one a line.
pub const TEXTS: &str = include_str!("calibration.txt");

/// Per block, per [`Site`] (in [`Site::ALL`] order), the largest |x| of each input channel.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    blocks: Vec<[Vec<f32>; 4]>,
}

fn index(site: Site) -> usize {
    Site::ALL.iter().position(|s| *s == site).expect("a site")
}

impl Calibration {
    /// All zeros, sized for `config`.
    pub fn new(config: &BertConfig) -> Calibration {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        Calibration {
            blocks: (0..config.num_hidden_layers)
                .map(|_| [vec![0.0; h], vec![0.0; h], vec![0.0; h], vec![0.0; i]])
                .collect(),
        }
    }

    /// Whether this calibration has the shape of `config`'s encoder.
    pub fn fits(&self, config: &BertConfig) -> bool {
        let empty = Calibration::new(config);
        self.blocks.len() == empty.blocks.len()
            && self
                .blocks
                .iter()
                .zip(&empty.blocks)
                .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.len() == y.len()))
    }

    /// Takes rows of the input of `site` in `block`.
    pub fn observe(&mut self, block: usize, site: Site, x: &[f32]) {
        let reach = &mut self.blocks[block][index(site)];
        for row in x.chunks_exact(reach.len()) {
            reach
                .iter_mut()
                .zip(row)
                .for_each(|(r, v)| *r = r.max(v.abs()));
        }
    }

    /// The largest |x| of each input channel of `site` in `block`.
    pub fn reach(&self, block: usize, site: Site) -> &[f32] {
        &self.blocks[block][index(site)]
    }
}
