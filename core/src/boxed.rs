//! Futures boxed where they are built, in blocks the shard reuses.
//!
//! `Box::pin(f)` evaluates `f` on the stack and then copies all of it into
//! the box: a future's full size (several KiB for a request's), however
//! little of it the unstarted future uses. Taking the block first and
//! writing the future into it lets the compiler build it there, so only
//! its captured arguments are written (measured with callgrind: the
//! request future's 5 KiB copy per request disappeared).

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per layout. Requests end in batches (a poll of the
/// ring completes many), so the pool must hold what a batch frees for the
/// next batch to start with: 16 missed four times in five under 64
/// connections. 64 of a request's ~5 KiB futures are ~300 KiB a shard at
/// most, which the allocator would keep in its pages as well.
const KEPT_PER_LAYOUT: usize = 64;

/// One shard's blocks for the futures it boxes per request, reused last
/// freed first. A request's future is several KiB, past the allocator's
/// small-object fast path: each `Box` of one took its slow path (~480
/// instructions with the free, measured with callgrind), where a reused
/// block costs a pop and a push, and is still warm in the cache.
///
/// Invariant: every block in `free` was allocated with the layout it is
/// listed under, is not in use, and is owned by the pool.
#[derive(Default)]
pub struct FuturePool {
    free: RefCell<Vec<(Layout, Vec<NonNull<u8>>)>>,
}

impl FuturePool {
    /// A block for an `F`, to be written with [`Slot::write`].
    pub fn slot<F>(&self) -> Slot<'_, F> {
        let layout = Layout::new::<F>();
        let reused = self
            .free
            .borrow_mut()
            .iter_mut()
            .find(|(l, _)| *l == layout)
            .and_then(|(_, blocks)| blocks.pop());
        let block = match reused {
            Some(b) => b,
            None if layout.size() == 0 => NonNull::<F>::dangling().cast(),
            None => {
                // SAFETY: the layout's size is not zero.
                let p = unsafe { alloc(layout) };
                NonNull::new(p).unwrap_or_else(|| handle_alloc_error(layout))
            }
        };
        Slot {
            pool: self,
            block: block.cast(),
        }
    }

    fn give_back(&self, block: NonNull<u8>, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        let mut free = self.free.borrow_mut();
        let at = match free.iter().position(|(l, _)| *l == layout) {
            Some(at) => at,
            None => {
                free.push((layout, Vec::new()));
                free.len() - 1
            }
        };
        let blocks = &mut free[at].1;
        if blocks.len() < KEPT_PER_LAYOUT {
            blocks.push(block);
        } else {
            // SAFETY: `block` was allocated with `layout` (the pool's
            // invariant) and nothing uses it any more.
            unsafe { dealloc(block.as_ptr(), layout) };
        }
    }
}

impl Drop for FuturePool {
    fn drop(&mut self) {
        for (layout, blocks) in self.free.get_mut().drain(..) {
            for block in blocks {
                // SAFETY: the pool's invariant.
                unsafe { dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

/// A block for an `F`, not yet written; given back if never written.
pub struct Slot<'p, F> {
    pool: &'p FuturePool,
    block: NonNull<F>,
}

impl<'p, F> Slot<'p, F> {
    /// Writes `future` into the block (built there when the compiler can).
    #[inline(always)]
    pub fn write(self, future: F) -> Pooled<'p, F> {
        let (pool, block) = (self.pool, self.block);
        std::mem::forget(self);
        // SAFETY: the block is `F`'s layout, unused, and ours.
        unsafe { block.as_ptr().write(future) };
        Pooled {
            pool,
            block,
            owns: PhantomData,
        }
    }
}

impl<F> Drop for Slot<'_, F> {
    fn drop(&mut self) {
        self.pool.give_back(self.block.cast(), Layout::new::<F>());
    }
}

/// A future pinned in a pool's block: it never moves until it is dropped
/// in place, and its block then goes back to the pool.
pub struct Pooled<'p, F> {
    pool: &'p FuturePool,
    block: NonNull<F>,
    owns: PhantomData<F>,
}

// Moving a `Pooled` moves the pointer, never the future.
impl<F> Unpin for Pooled<'_, F> {}

impl<F: Future> Future for Pooled<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the block holds a live `F` that nothing else reaches, and
        // it stays where it is until `drop` (the pool never moves a block).
        let future = unsafe { Pin::new_unchecked(&mut *self.block.as_ptr()) };
        future.poll(cx)
    }
}

impl<F> Drop for Pooled<'_, F> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live `F`, dropped once, here.
        unsafe { std::ptr::drop_in_place(self.block.as_ptr()) };
        self.pool.give_back(self.block.cast(), Layout::new::<F>());
    }
}

/// `Box::pin($future)`, with the block taken from a [`FuturePool`] before
/// `$future` is evaluated, so that the future is built in place.
macro_rules! pin_pooled {
    ($pool:expr, $future:expr) => {{
        let slot = $pool.slot();
        slot.write($future)
    }};
}
pub(crate) use pin_pooled;

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A future that counts its drops and is ready at once.
    struct Counted(Rc<std::cell::Cell<u32>>, [u8; 4096]);

    impl Future for Counted {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
            Poll::Ready(u32::from(self.1[4095]))
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    /// Blocks are reused, each future is dropped once (run or not), and
    /// the pool keeps no more than its bound.
    #[test]
    fn blocks_are_reused_and_each_future_dropped_once() {
        let pool = FuturePool::default();
        let drops = Rc::new(std::cell::Cell::new(0));
        let first = {
            let f = pin_pooled!(pool, Counted(drops.clone(), [7; 4096]));
            let at = f.block.as_ptr() as usize;
            assert_eq!(futures_lite::future::block_on(f), 7);
            at
        };
        let f = pin_pooled!(pool, Counted(drops.clone(), [1; 4096]));
        assert_eq!(
            f.block.as_ptr() as usize,
            first,
            "the freed block is reused"
        );
        drop(f);
        assert_eq!(drops.get(), 2);
        let many: Vec<_> = (0..KEPT_PER_LAYOUT + 24)
            .map(|_| pin_pooled!(pool, Counted(drops.clone(), [0; 4096])))
            .collect();
        drop(many);
        assert_eq!(drops.get(), 2 + KEPT_PER_LAYOUT as u32 + 24);
        let kept: usize = pool.free.borrow().iter().map(|(_, b)| b.len()).sum();
        assert_eq!(kept, KEPT_PER_LAYOUT);
        // A slot never written goes back unused.
        let slot = pool.slot::<Counted>();
        drop(slot);
        assert_eq!(drops.get(), 2 + KEPT_PER_LAYOUT as u32 + 24);
        // Another layout has blocks of its own.
        let small = pin_pooled!(pool, async { 3u8 });
        assert_eq!(futures_lite::future::block_on(small), 3);
        assert_eq!(pool.free.borrow().len(), 2);
    }
}
