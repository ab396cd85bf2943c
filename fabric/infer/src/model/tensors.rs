//! Reading named tensors out of a safetensors file, with the checks the model needs: present,
//! the expected dtype, the expected shape. A file that fails to parse because it is shorter
//! than its header promises is reported with the first tensor whose bytes are missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::Error;

/// Largest weights file the loader reads, bytes.
pub const WEIGHTS_FILE_BYTES_MAX: u64 = 16 << 30;

/// The whole weights file in memory, parsed.
pub struct WeightsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

/// A tensor's values, as the loader needs them.
pub enum Values {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    I8(Vec<i8>),
}

impl WeightsFile {
    pub fn read(path: &Path) -> Result<WeightsFile, Error> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > WEIGHTS_FILE_BYTES_MAX {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                message: format!(
                    "{len} bytes exceeds WEIGHTS_FILE_BYTES_MAX ({WEIGHTS_FILE_BYTES_MAX})"
                ),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let file = WeightsFile {
            path: path.to_path_buf(),
            bytes,
        };
        file.parse()?;
        Ok(file)
    }

    fn parse(&self) -> Result<SafeTensors<'_>, Error> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| match e {
            SafeTensorError::MetadataIncompleteBuffer => {
                self.truncation().unwrap_or_else(|| self.malformed(e))
            }
            e => self.malformed(e),
        })
    }

    fn malformed(&self, e: SafeTensorError) -> Error {
        Error::Weights {
            path: self.path.clone(),
            message: format!("not a valid safetensors file: {e}"),
        }
    }

    /// Names the first tensor (by offset) whose data runs past the end of the file.
    fn truncation(&self) -> Option<Error> {
        let header_len = u64::from_le_bytes(self.bytes.get(..8)?.try_into().ok()?) as usize;
        let header = self.bytes.get(8..8usize.checked_add(header_len)?)?;
        let entries: HashMap<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
        let available = self.bytes.len() - 8 - header_len;
        entries
            .iter()
            .filter_map(|(name, info)| {
                let end = info.get("data_offsets")?.get(1)?.as_u64()? as usize;
                (end > available).then_some((end, name))
            })
            .min()
            .map(|(end, name)| Error::TruncatedTensor {
                tensor: name.clone(),
                end,
                available,
            })
    }

    /// The tensor `name` with one of `dtypes` and exactly `shape` (`None` = any length there).
    pub fn get(
        &self,
        name: &str,
        dtypes: &[Dtype],
        shape: &[Option<usize>],
    ) -> Result<(Vec<usize>, Values), Error> {
        let st = self.parse()?;
        let view = st.tensor(name).map_err(|_| Error::MissingTensor {
            tensor: name.to_string(),
        })?;
        if !dtypes.contains(&view.dtype()) {
            let expected = dtypes
                .iter()
                .map(|d| format!("{d:?}"))
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(Error::WrongDtype {
                tensor: name.to_string(),
                expected,
                found: format!("{:?}", view.dtype()),
            });
        }
        let found = view.shape().to_vec();
        let fits = found.len() == shape.len()
            && found
                .iter()
                .zip(shape)
                .all(|(f, want)| want.is_none_or(|w| w == *f));
        if !fits {
            let expected = shape
                .iter()
                .zip(found.iter().chain(std::iter::repeat(&0)))
                .map(|(w, f)| w.unwrap_or(*f))
                .collect();
            return Err(Error::WrongShape {
                tensor: name.to_string(),
                expected,
                found,
            });
        }
        let data = view.data();
        let values = match view.dtype() {
            Dtype::F32 => Values::F32(
                data.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::BF16 => Values::Bf16(
                data.chunks_exact(2)
                    .map(|b| u16::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ),
            Dtype::I8 => Values::I8(data.iter().map(|b| *b as i8).collect()),
            other => unreachable!("dtype {other:?} was not asked for"),
        };
        Ok((found, values))
    }

    /// Whether the file holds a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.parse().is_ok_and(|st| st.tensor(name).is_ok())
    }

    /// An F32 tensor of exactly `shape`.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, Error> {
        let shape: Vec<Option<usize>> = shape.iter().map(|s| Some(*s)).collect();
        match self.get(name, &[Dtype::F32], &shape)?.1 {
            Values::F32(v) => Ok(v),
            _ => unreachable!("asked for F32"),
        }
    }
}
