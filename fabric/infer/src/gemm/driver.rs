//! Blocking and threading, shared by every path and element type.
//!
//! C is cut into tasks: a range of row panels × a range of column panels, each task writing
//! only its own blocks (so tasks run in parallel without locks). Inside a task, K is walked in
//! chunks of `kc` steps sized so one A panel chunk stays in L1 (`PANEL_BYTES_MAX`), the task's
//! B panels for that chunk stay in L2, and each block kernel call accumulates into C.

use rayon::prelude::*;

use crate::pack::{BLOCK_COLS, BLOCK_ROWS};

/// Bytes of one packed panel chunk a block kernel streams per call: small enough that the A
/// chunk stays in L1 while the kernel sweeps the task's B panels.
pub(crate) const PANEL_BYTES_MAX: usize = 32 * 1024;
/// Column panels per task: the B chunk a task reuses across its rows (16 × 32 KiB = 512 KiB,
/// a fraction of L2).
const TASK_COL_PANELS_MAX: usize = 16;
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
    pub row_panels: usize,
    pub col_panels: usize,
    /// Padded C: `row_panels * 32` rows of `ldc >= col_panels * 32` elements.
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
/// computes one block with the kernel contract of [`crate::kernels`].
pub(crate) fn run<A: Sync, B: Sync, C: Send, S>(
    job: Job<'_, A, B, C>,
    parallel: bool,
    init: impl Fn() -> S + Sync,
    block: impl Fn(&mut S, *const A, *const B, usize, *mut C, usize, usize) + Sync,
) {
    let Job {
        a,
        b,
        steps,
        step_len,
        rows: a_rows,
        row_panels,
        col_panels,
        c,
        ldc,
    } = job;
    assert!(
        ldc >= col_panels * BLOCK_COLS,
        "ldc too small for the column panels"
    );
    assert!(
        c.len() >= row_panels * BLOCK_ROWS * ldc,
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
    let threads = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let rows_per_task = row_panels.div_ceil(threads).clamp(1, TASK_ROW_PANELS_MAX);
    let row_tasks = row_panels.div_ceil(rows_per_task);
    // Fewer row tasks than threads (a short M): the columns are cut finer, so every thread
    // gets a share.
    let col_tasks = col_panels
        .div_ceil(TASK_COL_PANELS_MAX)
        .max(threads.div_ceil(row_tasks))
        .min(col_panels);
    let cols_per_task = col_panels.div_ceil(col_tasks);
    let tasks = row_tasks * col_panels.div_ceil(cols_per_task);
    let shared = SharedC(c.as_mut_ptr());

    let task = |t: usize| {
        let rows =
            (t % row_tasks) * rows_per_task..((t % row_tasks + 1) * rows_per_task).min(row_panels);
        let cols =
            (t / row_tasks) * cols_per_task..((t / row_tasks + 1) * cols_per_task).min(col_panels);
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
                    block(&mut state, pa, pb, ks, pc, ldc, real);
                }
            }
        }
    };
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}
