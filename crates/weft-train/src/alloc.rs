//! The allocator settings training runs under.
//!
//! A training step allocates and frees the same large buffers every step
//! (activations, logits, attention probabilities: hundreds of KiB to tens of
//! MiB each). glibc's defaults hand such blocks back to the kernel when they
//! are freed (`mmap` above the threshold; trimming the heap top above
//! `M_TRIM_THRESHOLD`), so the next step takes a page fault for every 4 KiB
//! it touches again. On the Countdown models' shape that was 730 000 faults
//! in 12 steps and about 16% of the CPU time (`perf stat -e page-faults`).
//! PyTorch keeps such memory in its own caching allocator; here glibc is
//! told to keep it ([`retain_freed_memory`]).

/// Raise glibc's `mmap` threshold to its largest settable value (32 MiB)
/// and its trim threshold to 1 GiB, so freed training buffers stay in the
/// process for the next step instead of going back to the kernel. The
/// resident size then stays near the peak of one step. Idempotent; a no-op
/// off glibc. See `mallopt(3)`.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::Once;
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes allocator parameters; it is
            // thread-safe (it takes the arenas' locks).
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
                libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            }
        });
    }
}
