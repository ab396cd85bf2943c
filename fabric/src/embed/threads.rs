//! A node's inference threads: a team (`infer::team`) at idle CPU priority, and a lead thread
//! of the same priority that runs each batch with the team, so that every thread computing
//! for a job is one of these, and the CPU time a batch took is theirs.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::Context;
use infer::team::{Team, TeamBuilder, thread_cpu_ns};

type Work = Box<dyn FnOnce() + Send>;

/// `threads` inference threads: the lead and `threads - 1` workers.
pub struct InferThreads {
    team: Arc<Team>,
    lead: Option<mpsc::Sender<Work>>,
    handle: Option<JoinHandle<()>>,
}

impl InferThreads {
    pub fn start(threads: usize) -> anyhow::Result<InferThreads> {
        let team = Arc::new(
            TeamBuilder::new(threads)
                .name("infer")
                .on_start(lower_priority)
                .build()
                .context("start the inference threads")?,
        );
        let (lead, work) = mpsc::channel::<Work>();
        let handle = std::thread::Builder::new()
            .name("infer-0".into())
            .spawn(move || {
                lower_priority();
                for w in work {
                    w();
                }
            })
            .context("start the inference lead thread")?;
        Ok(InferThreads {
            team,
            lead: Some(lead),
            handle: Some(handle),
        })
    }

    /// Runs `f` on the lead thread with the team; its result and the CPU time, in ns, the
    /// lead and the team's workers used meanwhile.
    pub async fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> anyhow::Result<(R, u64)> {
        let (done, result) = tokio::sync::oneshot::channel();
        let team = Arc::clone(&self.team);
        let work: Work = Box::new(move || {
            let before = thread_cpu_ns() + team.workers_cpu_ns();
            let r = team.install(f);
            let used = (thread_cpu_ns() + team.workers_cpu_ns()).saturating_sub(before);
            let _ = done.send((r, used));
        });
        self.lead
            .as_ref()
            .context("the inference threads have stopped")?
            .send(work)
            .ok()
            .context("the inference lead thread has stopped")?;
        result
            .await
            .context("the inference lead thread has stopped")
    }
}

impl Drop for InferThreads {
    fn drop(&mut self) {
        // The lead ends once its queue is closed and empty.
        self.lead.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Puts the calling thread in `SCHED_IDLE` (nice 19 if that is refused): inference yields the
/// CPU to the threads that serve replicas and clients. At nice 19 a client beside an embed job
/// saw its p99 at 3.5 x idle on this 2-core host (BENCHMARKS.md).
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscalls on the calling thread (pid 0); a failure only leaves its priority.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_runs_on_the_lead_with_the_team_and_its_cpu_is_counted() {
        let threads = InferThreads::start(2).expect("threads");
        let ((name, team_threads, sum), used) = threads
            .run(|| {
                let sum = infer::team::map(64, |i| {
                    let t = std::time::Instant::now();
                    while t.elapsed() < std::time::Duration::from_millis(1) {
                        std::hint::spin_loop();
                    }
                    i
                })
                .into_iter()
                .sum::<usize>();
                let name = std::thread::current().name().map(str::to_owned);
                (name, infer::team::threads(), sum)
            })
            .await
            .expect("run");
        assert_eq!(name.as_deref(), Some("infer-0"));
        assert_eq!(team_threads, 2);
        assert_eq!(sum, 64 * 63 / 2);
        assert!(used >= 50_000_000, "64 ms of spinning counted: {used} ns");
        drop(threads);
    }
}
