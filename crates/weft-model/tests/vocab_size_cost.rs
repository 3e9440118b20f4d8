//! `Tokenizer::vocab_size` is asked for by every request's validation, so it
//! must not allocate. The `tokenizers` crate's `get_vocab_size` clones the
//! whole vocabulary (4 MiB for SmolLM2's 49k tokens) to count it; weft used
//! to call it per request, which cost time and left megabytes of freed heap
//! resident. Counted here with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn vocab_size_allocates_nothing() {
    let home = std::env::var_os("HOME").expect("HOME");
    let path =
        std::path::PathBuf::from(home).join(".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tok = weft_model::Tokenizer::load(&path).unwrap();
    let before = BYTES.load(Ordering::Relaxed);
    let n = (0..10).map(|_| tok.vocab_size()).max().unwrap();
    let spent = BYTES.load(Ordering::Relaxed) - before;
    assert_eq!(n, tok.inner().get_vocab_size(true));
    assert_eq!(spent, 0, "10 calls of vocab_size allocated {spent} bytes");
}
