//! Blocking and threading, shared by every path and element type.
//!
//! C is cut into tasks: a range of row panels × a range of column panels, each task writing
//! only its own blocks (so tasks run in parallel without locks). Inside a task, K is walked in
//! chunks of `kc` steps sized so one A panel chunk stays in L1 (`PANEL_BYTES_MAX`), the task's
//! B panels for that chunk stay in L2, and each block kernel call adds its chunk to C (or, for
//! kernels that overwrite, writes the block's first chunk).

use std::ops::Range;

use crate::pack::{BLOCK_COLS, BLOCK_ROWS};

/// Bytes of one packed panel chunk a block kernel streams per call: small enough that the A
/// chunk stays in L1 while the kernel sweeps the task's B panels.
pub(crate) const PANEL_BYTES_MAX: usize = 32 * 1024;
/// Column panels per task: the B chunk a task reuses across its rows (16 × 32 KiB = 512 KiB,
/// a fraction of L2).
const TASK_COL_PANELS_MAX: usize = 16;
/// Below this many tasks per thread, their count is made a multiple of the threads.
const FEW_TASKS_PER_THREAD: usize = 4;
/// Row panels per task at most, so large M still yields several tasks per thread.
const TASK_ROW_PANELS_MAX: usize = 8;

/// One GEMM over packed operands, C padded to whole blocks.
pub(crate) struct Job<'a, A, B, C> {
    pub a: &'a [A],
    pub b: &'a [B],
    pub steps: usize,
    pub step_len: usize,
    /// Rows of A (and C) that hold values; the rest of the last row panel is padding.
    pub rows: usize,
    /// The kernel writes C's rows below `rows` only: C need not be padded to whole row
    /// panels (else it holds `row_panels * 32` rows).
    pub exact_rows: bool,
    pub row_panels: usize,
    pub col_panels: usize,
    /// C: `row_panels * 32` rows (`rows` with `exact_rows`) of `ldc >= col_panels * 32`
    /// elements.
    pub c: &'a mut [C],
    pub ldc: usize,
}

/// A raw pointer to C that tasks share; each task writes a disjoint set of blocks.
struct SharedC<C>(*mut C);
// SAFETY: tasks write disjoint blocks of C (see `run`), and C: Send.
unsafe impl<C: Send> Send for SharedC<C> {}
// SAFETY: as above; no two tasks ever touch the same element.
unsafe impl<C: Send> Sync for SharedC<C> {}

/// Runs `job`: for each task, `init` makes per-thread kernel state (AMX tiles) and `block`
/// computes one block with the kernel contract of [`crate::kernels`]; its last argument says
/// whether this is the block's first K chunk (which a kernel that overwrites C stores
/// rather than adds).
pub(crate) fn run<A: Sync, B: Sync, C: Send, S>(
    job: Job<'_, A, B, C>,
    parallel: bool,
    init: impl Fn() -> S + Sync,
    block: impl Fn(&mut S, *const A, *const B, usize, *mut C, usize, usize, bool) + Sync,
) {
    let Job {
        a,
        b,
        steps,
        step_len,
        rows: a_rows,
        exact_rows,
        row_panels,
        col_panels,
        c,
        ldc,
    } = job;
    assert!(
        ldc >= col_panels * BLOCK_COLS,
        "ldc too small for the column panels"
    );
    let c_rows = if exact_rows {
        a_rows
    } else {
        row_panels * BLOCK_ROWS
    };
    assert!(
        c_rows == 0 || c.len() >= (c_rows - 1) * ldc + col_panels * BLOCK_COLS,
        "C too small for the row panels"
    );
    assert_eq!(
        a.len(),
        row_panels * steps * step_len,
        "packed A has the wrong length"
    );
    assert_eq!(
        b.len(),
        col_panels * steps * step_len,
        "packed B has the wrong length"
    );
    if steps == 0 || row_panels == 0 || col_panels == 0 {
        return;
    }
    let elem_bytes = size_of::<A>().max(1);
    let kc = (PANEL_BYTES_MAX / (step_len * elem_bytes)).max(1);
    let split = Split::new(row_panels, col_panels, parallel);
    let shared = SharedC(c.as_mut_ptr());

    let task = |t: usize| {
        let (rows, cols) = split.task(t);
        let mut state = init();
        let c = &shared;
        for k0 in (0..steps).step_by(kc) {
            let ks = kc.min(steps - k0);
            for i in rows.clone() {
                let pa = a[(i * steps + k0) * step_len..].as_ptr();
                for j in cols.clone() {
                    let pb = b[(j * steps + k0) * step_len..].as_ptr();
                    // SAFETY: block (i, j) lies inside C (asserted above) and belongs to this
                    // task alone: tasks partition the row panels × column panels grid.
                    let pc = unsafe { c.0.add(i * BLOCK_ROWS * ldc + j * BLOCK_COLS) };
                    let real = a_rows.saturating_sub(i * BLOCK_ROWS).min(BLOCK_ROWS);
                    block(&mut state, pa, pb, ks, pc, ldc, real, k0 == 0);
                }
            }
        }
    };
    split.for_each(task);
}

/// How C's row panels × column panels are cut into tasks.
struct Split {
    row_panels: usize,
    col_panels: usize,
    rows_per_task: usize,
    row_tasks: usize,
    cols_per_task: usize,
    tasks: usize,
    parallel: bool,
}

impl Split {
    fn new(row_panels: usize, col_panels: usize, parallel: bool) -> Split {
        let threads = if parallel { crate::team::threads() } else { 1 };
        let rows_per_task = row_panels.div_ceil(threads).clamp(1, TASK_ROW_PANELS_MAX);
        let row_tasks = row_panels.div_ceil(rows_per_task);
        // Fewer row tasks than threads (a short M): the columns are cut finer, so every
        // thread gets a share.
        let mut col_tasks = col_panels
            .div_ceil(TASK_COL_PANELS_MAX)
            .max(threads.div_ceil(row_tasks))
            .min(col_panels)
            .max(1);
        // A few tasks are dealt out evenly: three equal tasks on two threads take as long as
        // four would, a third of the work done by one thread alone.
        while row_tasks * col_tasks < threads * FEW_TASKS_PER_THREAD
            && !(row_tasks * col_tasks).is_multiple_of(threads)
            && col_tasks < col_panels
        {
            col_tasks += 1;
        }
        let cols_per_task = col_panels.div_ceil(col_tasks).max(1);
        Split {
            row_panels,
            col_panels,
            rows_per_task,
            row_tasks,
            cols_per_task,
            tasks: row_tasks * col_panels.div_ceil(cols_per_task),
            parallel,
        }
    }

    /// The row panels and column panels of task `t`.
    fn task(&self, t: usize) -> (Range<usize>, Range<usize>) {
        let (r, c) = (t % self.row_tasks, t / self.row_tasks);
        (
            r * self.rows_per_task..((r + 1) * self.rows_per_task).min(self.row_panels),
            c * self.cols_per_task..((c + 1) * self.cols_per_task).min(self.col_panels),
        )
    }

    /// Runs every task, on the engine's threads when parallel.
    fn for_each(&self, task: impl Fn(usize) + Sync) {
        if self.parallel && self.tasks > 1 {
            crate::team::for_each(self.tasks, task);
        } else {
            (0..self.tasks).for_each(task);
        }
    }
}

/// K values per call of the in-place f32 kernel: its B chunk (32 columns × 4 bytes each)
/// stays in L1 while its row groups sweep it.
const ROWS_KC: usize = 128;

/// `c = a · b` in f32 with A read in place by `kernel` (see `kernels::avx512_rows`): `a` is
/// `m × k` row-major, `b` the packed f32 panels of `col_panels` × 32 columns, `c` holds `m`
/// rows of `ldc >= col_panels * 32`. Every element of C is written (no zeroing needed).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_f32_rows(
    m: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    col_panels: usize,
    c: &mut [f32],
    ldc: usize,
    parallel: bool,
) {
    use crate::kernels::avx512_rows::{Store, f32_rows};
    assert_eq!(a.len(), m * k, "A must be m × k");
    assert_eq!(
        b.len(),
        col_panels * k * BLOCK_COLS,
        "packed B has the wrong length"
    );
    assert!(
        ldc >= col_panels * BLOCK_COLS,
        "ldc too small for the column panels"
    );
    assert!(c.len() >= m.saturating_sub(1) * ldc + col_panels * BLOCK_COLS || m == 0);
    if m == 0 || col_panels == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let split = Split::new(m.div_ceil(BLOCK_ROWS), col_panels, parallel);
    let shared = SharedC(c.as_mut_ptr());
    // One block: rows of panel i × column panel j over K from k0.
    let block = |i: usize, j: usize, k0: usize| {
        let ks = ROWS_KC.min(k - k0);
        let store = Store::first(k0 == 0);
        let rows = (m - i * BLOCK_ROWS).min(BLOCK_ROWS);
        let pa = a[i * BLOCK_ROWS * k + k0..].as_ptr();
        let pb = b[(j * k + k0) * BLOCK_COLS..].as_ptr();
        let c = &shared;
        // SAFETY: the CPU has AVX-512F (the engine's path); A's rows i·32.. hold `rows` rows
        // of k values from k0 (asserted lengths); block (i, j) of C has `rows` rows of 32
        // values inside C and belongs to this task alone.
        unsafe {
            let pc = c.0.add(i * BLOCK_ROWS * ldc + j * BLOCK_COLS);
            f32_rows(pa, k, pb, ks, pc, ldc, rows, store);
        }
    };
    split.for_each(|t| {
        let (row_panels, cols) = split.task(t);
        if row_panels.len() <= FEW_ROW_PANELS {
            // Few rows (a short batch): the work is streaming B from memory, so each column
            // panel is read start to end, one contiguous stream, while A stays in cache.
            for j in cols {
                for k0 in (0..k).step_by(ROWS_KC) {
                    for i in row_panels.clone() {
                        block(i, j, k0);
                    }
                }
            }
        } else {
            // Many rows: a K chunk of the task's B panels is reused from cache by every row
            // panel, and a chunk of A's rows by every column panel.
            for k0 in (0..k).step_by(ROWS_KC) {
                for i in row_panels.clone() {
                    for j in cols.clone() {
                        block(i, j, k0);
                    }
                }
            }
        }
    });
}

/// Row panels up to which a task streams B panel by panel (see `run_f32_rows`).
const FEW_ROW_PANELS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_short_batch_is_cut_into_tasks_that_two_threads_share_evenly() {
        let team = Arc::new(crate::team::Team::new(2).expect("team"));
        team.install(|| {
            // One row panel (a batch of one sentence) × the model's widths in column panels.
            for col_panels in [12, 36, 48] {
                let split = Split::new(1, col_panels, true);
                assert!(
                    split.tasks.is_multiple_of(2),
                    "{col_panels}: {}",
                    split.tasks
                );
                let sizes: Vec<usize> = (0..split.tasks).map(|t| split.task(t).1.len()).collect();
                assert_eq!(sizes.iter().sum::<usize>(), col_panels);
                assert!(sizes.iter().all(|s| *s == sizes[0]), "{sizes:?}");
            }
            // Many rows: enough tasks already.
            assert!(Split::new(128, 12, true).tasks >= 8);
        });
    }
}
