//! A volume's IO limits at its gateway. A volume has one writer, so its gateway sees all of
//! its IO and is where a limit is exact (a node sees only the IO of the replicas it holds).
//! A request over the limit waits before it goes to the replicas: slowed, never failed.
//! The limits follow the volume's record, so `fabricctl volume qos set` applies without a
//! reattach.

use std::sync::Arc;

use bytes::Bytes;
use proto::meta as pb;
use volume::sched::class::Class;
use volume::sched::disk::DiskScheduler;
use volume::sched::mclock::{Rate, Spec};
use volume::volume::VolFuture;
use volume::{BlockVolume, Extent, ZeroFlags};

/// Requests that may pass the gate at once: the gate limits a rate, not a depth.
const PASSING_MAX: usize = 4096;

/// The limiter of one volume.
pub(crate) struct QosGate {
    sched: Arc<DiskScheduler>,
}

impl QosGate {
    pub(crate) fn new(qos: Option<&pb::VolumeQos>) -> Arc<QosGate> {
        let gate = Arc::new(QosGate {
            sched: DiskScheduler::new(PASSING_MAX),
        });
        gate.set(qos);
        gate
    }

    /// Takes the limits of `qos` (none if absent) from the next request on.
    pub(crate) fn set(&self, qos: Option<&pb::VolumeQos>) {
        let q = qos.copied().unwrap_or_default();
        let spec = Spec {
            limit: Rate {
                iops: q.iops_limit,
                bytes_per_sec: q.bps_limit,
            },
            ..Spec::default()
        };
        // No reservation here, so the spec is always usable.
        self.sched
            .set_volume_spec(0, spec)
            .expect("a spec without a reservation");
    }

    /// Waits until the limits let a request of `len` bytes go.
    async fn pass(&self, len: u64) {
        drop(self.sched.turn(Class::Client, 0, len).await);
    }
}

/// `inner` behind its volume's limits.
pub(crate) struct Limited {
    inner: Arc<dyn BlockVolume>,
    gate: Arc<QosGate>,
}

impl Limited {
    pub(crate) fn new(inner: Arc<dyn BlockVolume>, gate: Arc<QosGate>) -> Limited {
        Limited { inner, gate }
    }

    fn after<T: Send + 'static>(&self, len: u64, io: VolFuture<T>) -> VolFuture<T> {
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            gate.pass(len).await;
            io.await
        })
    }
}

impl BlockVolume for Limited {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn max_io_bytes(&self) -> u32 {
        self.inner.max_io_bytes()
    }

    fn read(&self, offset: u64, len: u32) -> VolFuture<Bytes> {
        self.after(u64::from(len), self.inner.read(offset, len))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> VolFuture<()> {
        let len = data.len() as u64;
        self.after(len, self.inner.write(offset, data, fua))
    }

    fn flush(&self) -> VolFuture<()> {
        // Makes earlier IO durable; those passed the gate already.
        self.inner.flush()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> VolFuture<()> {
        // One IO, no data moved.
        self.after(0, self.inner.trim(offset, len, fua))
    }

    fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> VolFuture<()> {
        self.after(0, self.inner.write_zeroes(offset, len, flags))
    }

    fn block_status(&self, offset: u64, len: u64) -> VolFuture<Vec<Extent>> {
        self.inner.block_status(offset, len)
    }
}
