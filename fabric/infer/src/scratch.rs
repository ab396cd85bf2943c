//! Buffers a forward pass reuses instead of allocating: its activations and temporaries are
//! tens of MiB per layer at a full batch, each written whole by the step that makes it, and a
//! fresh zeroed allocation of each cost a memset of every byte first (8 % of an int8 batch's
//! samples). A buffer taken here holds unspecified values (zeros or what its last user left)
//! and is given back when its user is done; the pool is per thread, as a forward pass runs
//! its allocations on one.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Buffers kept per element type and thread: a layer's input, output and temporaries, twice.
const KEPT_MAX: usize = 8;
/// Smaller buffers are not worth keeping: allocating them is cheap.
const KEPT_BYTES_MIN: usize = 64 << 10;

type Pool<T> = RefCell<Vec<Vec<T>>>;

thread_local! {
    static F32: Pool<f32> = const { RefCell::new(Vec::new()) };
    static I32: Pool<i32> = const { RefCell::new(Vec::new()) };
    static I8: Pool<i8> = const { RefCell::new(Vec::new()) };
}

/// Element types with a pool.
pub(crate) trait Scratch: Copy + Default + 'static {
    fn pool() -> &'static LocalKey<Pool<Self>>;
}

impl Scratch for f32 {
    fn pool() -> &'static LocalKey<Pool<f32>> {
        &F32
    }
}

impl Scratch for i32 {
    fn pool() -> &'static LocalKey<Pool<i32>> {
        &I32
    }
}

impl Scratch for i8 {
    fn pool() -> &'static LocalKey<Pool<i8>> {
        &I8
    }
}

/// A buffer of `len` values, unspecified (see the module's text): the shortest kept one at
/// least that long, else the longest grown (its new tail zeroed), else a new one.
pub(crate) fn take<T: Scratch>(len: usize) -> Vec<T> {
    let kept = T::pool().with_borrow_mut(|pool| {
        let fits = (0..pool.len())
            .filter(|&i| pool[i].len() >= len)
            .min_by_key(|&i| pool[i].len());
        let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
        pick.map(|i| pool.swap_remove(i))
    });
    let mut v = kept.unwrap_or_default();
    v.truncate(len);
    v.resize(len, T::default());
    v
}

/// A copy of `src` in a buffer from the pool, copied in parallel.
pub(crate) fn copy_of<T: Scratch + Send + Sync>(src: &[T]) -> Vec<T> {
    const CHUNK_BYTES: usize = 256 << 10;
    let chunk = (CHUNK_BYTES / size_of::<T>()).max(1);
    let mut v = take(src.len());
    crate::team::chunks_mut(&mut v, chunk, |i, d| {
        d.copy_from_slice(&src[i * chunk..][..d.len()])
    });
    v
}

/// Gives `v` back for a later [`take`]; the shortest kept buffer goes when the pool is full.
pub(crate) fn give<T: Scratch>(v: Vec<T>) {
    if v.len() * size_of::<T>() < KEPT_BYTES_MIN {
        return;
    }
    T::pool().with_borrow_mut(|pool| {
        pool.push(v);
        if pool.len() > KEPT_MAX
            && let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].len())
        {
            pool.swap_remove(i);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_taken_again_by_the_closest_length_and_never_changes_length() {
        let big = vec![7f32; 100_000];
        let small = vec![3f32; 20_000];
        let (big_at, small_at) = (big.as_ptr(), small.as_ptr());
        give(big);
        give(small);
        let s = take::<f32>(20_000);
        assert_eq!((s.as_ptr(), s.len()), (small_at, 20_000), "the closest fit");
        let b = take::<f32>(50_000);
        assert_eq!((b.as_ptr(), b.len()), (big_at, 50_000), "a longer one, cut");
        give(b);
        let grown = take::<f32>(60_000);
        assert_eq!(grown.len(), 60_000);
        assert!(
            grown[50_000..].iter().all(|v| *v == 0.0),
            "a grown tail is zero"
        );
        assert_eq!(take::<f32>(10).len(), 10, "a new one when none is kept");
        give(s);
        give(grown);
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit_and_drops_the_shortest() {
        for i in 0..KEPT_MAX + 4 {
            give(vec![0i8; KEPT_BYTES_MIN + i]);
        }
        I8.with_borrow(|p| {
            assert_eq!(p.len(), KEPT_MAX);
            assert!(p.iter().all(|v| v.len() >= KEPT_BYTES_MIN + 4));
        });
        give(vec![0i8; 16]);
        I8.with_borrow(|p| assert_eq!(p.len(), KEPT_MAX, "small buffers are not kept"));
    }
}
