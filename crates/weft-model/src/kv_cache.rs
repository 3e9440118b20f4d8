//! The physical KV memory: per layer, K and V rows for every slot of every
//! block, stored as f16 (as llama.cpp does by default). Which blocks a
//! sequence owns is decided elsewhere (`weft-kv`); the forward pass only reads
//! and writes slots through each sequence's block table.

use half::f16;

use crate::config::ModelConfig;

pub struct KvCache {
    pub block_size: usize,
    pub n_blocks: usize,
    kv_dim: usize,
    layers: Vec<LayerKv>,
}

pub(crate) struct LayerKv {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

/// `n` zeros, allocated zeroed (`calloc`), so that a page becomes resident
/// only when a slot on it is first written: a large KV budget costs memory
/// as it fills, not up front. `vec![f16::ZERO; n]` would write every page,
/// because the standard library only takes that path for primitive types.
fn zeroed_f16(n: usize) -> Vec<f16> {
    let mut v = std::mem::ManuallyDrop::new(vec![0u16; n]);
    // SAFETY: `f16` is `repr(transparent)` over `u16` (same size and
    // alignment, and every bit pattern is valid), so the allocation's layout
    // is the same and the zero bits are `f16::ZERO`.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f16>(), v.len(), v.capacity()) }
}

impl KvCache {
    /// A cache of `n_blocks` blocks of `block_size` token slots each.
    pub fn new(cfg: &ModelConfig, block_size: usize, n_blocks: usize) -> KvCache {
        let kv_dim = cfg.kv_dim();
        let per_layer = n_blocks * block_size * kv_dim;
        KvCache {
            block_size,
            n_blocks,
            kv_dim,
            layers: (0..cfg.n_layers)
                .map(|_| LayerKv {
                    k: zeroed_f16(per_layer),
                    v: zeroed_f16(per_layer),
                })
                .collect(),
        }
    }

    /// Writes every page of the cache once, so that all of it is resident
    /// from now on (it is allocated zeroed, and pages otherwise become
    /// resident as slots are first written). The values stay zero.
    pub fn reserve(&mut self) {
        // One write per 4 KiB page is enough; `fill` is as fast and simpler.
        for l in &mut self.layers {
            l.k.fill(f16::ZERO);
            l.v.fill(f16::ZERO);
        }
    }

    /// Bytes one block takes across all layers (K and V).
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize) -> usize {
        cfg.n_layers * 2 * block_size * cfg.kv_dim() * std::mem::size_of::<f16>()
    }

    /// As many blocks as fit in `mib` MiB (at least one).
    pub fn with_budget_mib(cfg: &ModelConfig, block_size: usize, mib: usize) -> KvCache {
        let n = (mib * 1024 * 1024 / Self::bytes_per_block(cfg, block_size)).max(1);
        Self::new(cfg, block_size, n)
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub(crate) fn layer(&self, l: usize) -> &LayerKv {
        &self.layers[l]
    }

    pub(crate) fn layer_mut(&mut self, l: usize) -> &mut LayerKv {
        &mut self.layers[l]
    }

    /// Copies the first `n_slots` slots of block `src` into block `dst` in
    /// every layer (copy-on-write of a shared partial block).
    pub fn copy_block(&mut self, src: u32, dst: u32, n_slots: usize) {
        let row = self.block_size * self.kv_dim;
        let len = n_slots.min(self.block_size) * self.kv_dim;
        let (s, d) = (src as usize * row, dst as usize * row);
        for layer in &mut self.layers {
            layer.k.copy_within(s..s + len, d);
            layer.v.copy_within(s..s + len, d);
        }
    }
}
