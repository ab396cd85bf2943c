//! Running the pieces of one IO concurrently, a bounded number at a time.

use std::future::Future;
use std::pin::Pin;

use tokio::task::JoinSet;

use crate::volume::VolumeError;

use super::PIECES_IN_FLIGHT_MAX;

/// The future of one piece of an IO.
pub(super) type PieceFuture<T> =
    Pin<Box<dyn Future<Output = Result<T, VolumeError>> + Send + 'static>>;

/// Runs piece futures with at most [`PIECES_IN_FLIGHT_MAX`] at a time, each in a task of its
/// own (one piece alone runs in the caller's); results in order. After the first error no
/// further piece is started.
pub(super) async fn run_bounded<T: Send + 'static>(
    tasks: Vec<PieceFuture<T>>,
) -> Result<Vec<T>, VolumeError> {
    let n = tasks.len();
    // Most IOs lie within one extent: run that piece in the caller's task, without spawning.
    if n == 1 {
        let task = tasks.into_iter().next().expect("one piece");
        return Ok(vec![task.await?]);
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut pending = tasks.into_iter().enumerate();
    let mut running = JoinSet::new();
    let mut failed: Option<VolumeError> = None;
    loop {
        while failed.is_none() && running.len() < PIECES_IN_FLIGHT_MAX {
            let Some((i, task)) = pending.next() else {
                break;
            };
            running.spawn(async move { (i, task.await) });
        }
        match running.join_next().await {
            None => break,
            Some(Ok((i, Ok(v)))) => out[i] = Some(v),
            Some(Ok((_, Err(e)))) => {
                failed.get_or_insert(e);
            }
            Some(Err(e)) => {
                failed.get_or_insert(VolumeError::Io(format!("piece task: {e}")));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(out
        .into_iter()
        .map(|v| v.expect("every piece ran"))
        .collect())
}
