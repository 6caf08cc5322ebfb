//! The KV cache: one growable store per sequence.
//!
//! A sequence holds cells (a position with its keys and values in every layer) in the
//! order they were decoded. Keys and values are F16, as in llama.cpp's default cache, in
//! per-layer vectors of `cells × kv_dim` that grow by amortised doubling, so decoding a
//! token appends one row per layer and never copies the whole cache. Attention masks by
//! position (a cell is visible to a token when its position is not greater), so cells
//! need no particular order, and removing or copying ranges of positions is a filter.

use half::f16;

/// The cache of one sequence.
#[derive(Clone, Default)]
pub struct SeqCache {
    /// Position of each cell.
    pub pos: Vec<u32>,
    /// Keys per layer, `cells × kv_dim`.
    pub k: Vec<Vec<f16>>,
    /// Values per layer, `cells × kv_dim`.
    pub v: Vec<Vec<f16>>,
}

impl SeqCache {
    /// An empty cache for `n_layer` layers.
    pub fn new(n_layer: usize) -> SeqCache {
        SeqCache { pos: Vec::new(), k: vec![Vec::new(); n_layer], v: vec![Vec::new(); n_layer] }
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.pos.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// The largest position held, or -1.
    pub fn pos_max(&self) -> i32 {
        self.pos.iter().max().map_or(-1, |&p| p as i32)
    }

    /// Keeps the cells for which `keep(pos)` holds.
    pub fn retain(&mut self, kv_dim: usize, keep: impl Fn(u32) -> bool) {
        let keep_mask: Vec<bool> = self.pos.iter().map(|&p| keep(p)).collect();
        if keep_mask.iter().all(|&k| k) {
            return;
        }
        for store in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut w = 0;
            for (c, &k) in keep_mask.iter().enumerate() {
                if k {
                    if w != c {
                        store.copy_within(c * kv_dim..(c + 1) * kv_dim, w * kv_dim);
                    }
                    w += 1;
                }
            }
            store.truncate(w * kv_dim);
        }
        let mut i = 0;
        self.pos.retain(|_| {
            let k = keep_mask[i];
            i += 1;
            k
        });
    }

    /// Appends the cells of `src` for which `take(pos)` holds.
    pub fn append_from(&mut self, src: &SeqCache, kv_dim: usize, take: impl Fn(u32) -> bool) {
        for (c, &p) in src.pos.iter().enumerate() {
            if !take(p) {
                continue;
            }
            self.pos.push(p);
            for (dst, s) in self.k.iter_mut().zip(&src.k).chain(self.v.iter_mut().zip(&src.v)) {
                dst.extend_from_slice(&s[c * kv_dim..(c + 1) * kv_dim]);
            }
        }
    }

    /// Empties the cache, keeping its allocations.
    pub fn clear(&mut self) {
        self.pos.clear();
        for s in self.k.iter_mut().chain(self.v.iter_mut()) {
            s.clear();
        }
    }
}

/// `[p0, p1)` with llama.cpp's conventions: a negative `p0` is 0, a negative `p1` is
/// infinity.
pub fn range(p0: i32, p1: i32) -> impl Fn(u32) -> bool {
    let lo = p0.max(0) as u32;
    let hi = if p1 < 0 { u32::MAX } else { p1 as u32 };
    move |p| p >= lo && p < hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(pos: &[u32]) -> SeqCache {
        let mut c = SeqCache::new(2);
        for &p in pos {
            c.pos.push(p);
            for l in 0..2 {
                c.k[l].extend([f16::from_f32(p as f32), f16::from_f32(l as f32)]);
                c.v[l].extend([f16::from_f32(-(p as f32)), f16::from_f32(l as f32)]);
            }
        }
        c
    }

    #[test]
    fn retain_keeps_rows_aligned() {
        let mut c = cache(&[0, 1, 2, 3, 4]);
        c.retain(2, |p| !range(1, 3)(p));
        assert_eq!(c.pos, [0, 3, 4]);
        assert_eq!(c.k[1][2].to_f32(), 3.0);
        assert_eq!(c.v[0][4].to_f32(), -4.0);
        assert_eq!(c.pos_max(), 4);
        c.retain(2, |p| !range(-1, -1)(p));
        assert!(c.is_empty());
        assert_eq!(c.pos_max(), -1);
    }

    #[test]
    fn append_copies_ranges() {
        let src = cache(&[0, 1, 2]);
        let mut dst = SeqCache::new(2);
        dst.append_from(&src, 2, range(0, 2));
        assert_eq!(dst.pos, [0, 1]);
        assert_eq!(dst.k[0], src.k[0][..4]);
    }
}
