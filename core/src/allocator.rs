//! The global allocator: mimalloc, asked the cheapest way each layout allows.
//!
//! `mimalloc::MiMalloc` passes every allocation through `mi_malloc_aligned`.
//! For a block over 1 KiB that is not a power of two, mimalloc's aligned path
//! over-allocates by the alignment and takes its generic route, even at
//! alignment 8: the per-request handler future (about 3 KiB) cost ~500
//! instructions to allocate, a fifth of a request's allocator time. Plain
//! `mi_malloc` already returns memory aligned to 16 bytes for any size of at
//! least 16 (C's `max_align_t` guarantee; mimalloc's size classes are
//! multiples of 16 there), so layouts that need no more take the plain
//! entry points, as std's `System` allocator does with `malloc`. Everything
//! else goes to `MiMalloc` unchanged.

use libmimalloc_sys::{mi_free, mi_malloc, mi_realloc, mi_zalloc};
use mimalloc::MiMalloc;
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// The alignment every plain `mi_malloc` block of at least this size has.
const PLAIN_ALIGN: usize = 16;

pub struct Mimalloc;

fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every layout either takes mimalloc's plain entry points, whose
// blocks are aligned to 16 bytes for sizes of at least 16 (`plain` admits
// only those), or goes to `MiMalloc`, which honours any alignment; frees go
// to `mi_free`, which takes blocks from either path.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: any size is valid for mi_malloc.
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded as received.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            // SAFETY: any size is valid for mi_zalloc.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: forwarded as received.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: every block came from mimalloc, aligned or not, and
        // mi_free takes both.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            // SAFETY: `ptr` came from mimalloc; a block that grows or shrinks
            // with mi_realloc keeps the 16-byte guarantee for its new size.
            unsafe { mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: forwarded as received.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_has_its_layouts_alignment() {
        let a = Mimalloc;
        for size in [1usize, 7, 8, 15, 16, 24, 40, 1000, 1025, 3280, 5000, 70_000] {
            for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: non-zero sizes; each block is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{size} {align}"
                    );
                    p.write_bytes(0xab, size);
                    let z = a.alloc_zeroed(layout);
                    assert!((z as usize).is_multiple_of(align));
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let grown = a.realloc(p, layout, size * 3);
                    assert!(
                        (grown as usize).is_multiple_of(align),
                        "realloc {size} {align}"
                    );
                    assert!(std::slice::from_raw_parts(grown, size)
                        .iter()
                        .all(|&b| b == 0xab));
                    a.dealloc(
                        grown,
                        Layout::from_size_align(size * 3, align).expect("layout"),
                    );
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
