//! [`Metered`]: a volume as the NBD server sees it, counting what passes through: operations,
//! bytes, errors and latency per operation, and the operations under way (its queue depth).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use volume::volume::VolFuture;
use volume::{BlockVolume, Extent, VolumeError, ZeroFlags};

use crate::metrics::{IoOp, VolumeLabels, VolumeMetrics, VolumeOpLabels};

/// `inner`, counted into `metrics` under its name.
pub struct Metered {
    inner: Arc<dyn BlockVolume>,
    metrics: VolumeMetrics,
    name: String,
}

impl Metered {
    pub fn new(inner: Arc<dyn BlockVolume>, metrics: VolumeMetrics) -> Metered {
        let name = inner.name().to_owned();
        metrics.declare(&name);
        Metered {
            inner,
            metrics,
            name,
        }
    }

    /// Counts `fut` as one `op` of `bytes` bytes (known up front, or from the result).
    fn count<T: Send + 'static>(
        &self,
        op: IoOp,
        bytes: u64,
        fut: impl Future<Output = Result<T, VolumeError>> + Send + 'static,
    ) -> VolFuture<T> {
        let labels = VolumeOpLabels {
            volume: self.name.clone(),
            op,
        };
        let m = self.metrics.clone();
        let volume = VolumeLabels {
            volume: self.name.clone(),
        };
        m.in_flight.get_or_create(&volume).inc();
        Box::pin(async move {
            let started = Instant::now();
            let result = fut.await;
            m.latency
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            m.ops.get_or_create(&labels).inc();
            match &result {
                Ok(_) => {
                    m.bytes.get_or_create(&labels).inc_by(bytes);
                }
                Err(_) => {
                    m.errors.get_or_create(&labels).inc();
                }
            }
            m.in_flight.get_or_create(&volume).dec();
            result
        })
    }
}

impl BlockVolume for Metered {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn max_io_bytes(&self) -> u32 {
        self.inner.max_io_bytes()
    }

    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes> {
        self.count(IoOp::Read, u64::from(len), self.inner.read(offset, len))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolFuture<()> {
        let len = data.len() as u64;
        self.count(IoOp::Write, len, self.inner.write(offset, data, fua))
    }

    fn flush(&self) -> VolFuture<()> {
        self.count(IoOp::Flush, 0, self.inner.flush())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> VolFuture<()> {
        self.count(IoOp::Trim, len, self.inner.trim(offset, len, fua))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> VolFuture<()> {
        self.count(
            IoOp::WriteZeroes,
            len,
            self.inner.write_zeroes(offset, len, flags),
        )
    }

    fn block_status(&self, offset: u64, len: u64) -> VolFuture<Vec<Extent>> {
        // Metadata, not IO: passed through uncounted.
        self.inner.block_status(offset, len)
    }
}
