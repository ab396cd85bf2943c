//! What the writer tasks that put frames on sockets (NBD replies, replica requests and
//! replies) share: each gathers what is ready into one buffer and flushes it with one write.
//!
//! With few worker threads a writer woken by the first queued frame tends to run at once,
//! before the request tasks that would queue the next ones, so without care every frame costs
//! its own `sendto`. A writer whose queue is empty therefore lets the ready tasks run once
//! before it flushes: at depth 32 that cut the syscalls per IO (BENCHMARKS.md).

use tokio::sync::mpsc;

/// The next frame of a writer's queue if one is ready now or once the tasks that are ready to
/// run have run; `None` means: flush.
pub(crate) async fn next_ready<T>(rx: &mut mpsc::Receiver<T>) -> Option<T> {
    if let Ok(item) = rx.try_recv() {
        return Some(item);
    }
    tokio::task::yield_now().await;
    rx.try_recv().ok()
}
