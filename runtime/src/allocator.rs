//! glibc malloc settings for inference. A prompt's activations are megabyte buffers
//! allocated and freed per linear. glibc serves allocations above its mmap threshold
//! (128 KiB at first, raised only when a freed mmapped block was larger) with fresh `mmap`s,
//! so each of those buffers came back as zeroed pages, a page fault per 4 KiB. Whether the
//! threshold had been raised depended on what the model load happened to free: a 4-bit model
//! with an f32 vocabulary head took 6% of a 512-token prefill in page faults, and prefilled
//! 30% slower than the same linears with an 8-bit head. A fixed threshold of 64 MiB (and a
//! trim threshold above it) keeps such buffers on the heap, reused without faults; blocks
//! past it (a whole-vocabulary logits matrix) are still mapped and returned.

/// Sets the thresholds once per process (glibc only; elsewhere a no-op). Called when a model
/// is loaded.
pub fn tune_for_inference() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; it is thread-safe in glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD);
        }
    });
}

/// Allocations from this size on are mapped (and unmapped when freed).
const MMAP_THRESHOLD: i32 = 64 << 20;
