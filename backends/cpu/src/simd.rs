//! x86-64 SIMD kernels, compiled twice into one library and chosen at run time (see
//! [`crate::kernels::isa`]): [`avx2`] (AVX2, FMA, F16C: `vpmaddubsw` integer dot products)
//! and [`avx512`] (the same code with AVX-512 F/BW/VL/VNNI enabled, so that the Q4_0/Q8_0
//! integer dots use `vpdpbusd` and the compiler may use all 32 vector registers). This is
//! how memchr and simdutf ship one binary fast on every CPU: each function carries
//! `#[target_feature(enable = ...)]`, so a plain `cargo build` (baseline x86-64) compiles
//! them all, and [`crate::kernels`] calls one only after `is_x86_feature_detected!` saw
//! its features.
//!
//! The kernels compute the integer block sums exactly as the portable code does (and as
//! ggml does); they differ from it only in the order of the float additions.
//!
//! Every function is `unsafe`: the caller guarantees that the CPU has the module's
//! features and that each slice holds the blocks or elements the loop reads (the safe
//! wrappers in `kernels` and `kquants` assert the lengths).

#![allow(unsafe_op_in_unsafe_fn)]

/// The kernels, instantiated once per feature set. `dot_u8_i8` (unsigned bytes times
/// signed bytes, summed in fours into i32 lanes), `dot2_u8_i8` (the same of two pairs),
/// `dot_i8_i8` with `I8_BIAS` (signed bytes times signed bytes, the sums biased by
/// `I8_BIAS` times the second operand's sum),
/// `dot_f32_x8` (a dot product of two f32 rows of a multiple of 8), `fa_accumulate` and
/// `fa_accumulate_f16` (one step of an f16 attention accumulator), `dot_ggml_f16` (a dot
/// product in ggml's order), `q4k_sub_add`/`q4k_sub_scaled` (a Q4_K sub-block of 8
/// interleaved rows) and `gemm_q4_k_x8_pairs` (interleaved Q4_K groups two at a time, where
/// the level can) must be defined by the including module.
macro_rules! x86_kernels {
    ($features:literal) => {
        use std::arch::x86_64::*;

        /// Bytes ahead of a single-token weight walk that the kernels ask the cache to
        /// fetch where [`crate::kernels::prefetch_weights`] says so: one token's products
        /// are memory-bound, and on Sapphire Rapids the hardware prefetchers alone reached
        /// about half the machine's read bandwidth (Gemma's 178 MB output matrix: 12 ms a
        /// token before, 7.2 ms after; 1-8 KiB measured, 4 KiB kept).
        const PREFETCH_AHEAD: usize = 4096;

        /// `prefetcht0` for the `bytes` that lie [`PREFETCH_AHEAD`] past `p`, a line at a
        /// time. A prefetch never faults, so an address past the weight's end is harmless
        /// (and is only computed, with `wrapping_add`, never read).
        #[inline(always)]
        unsafe fn prefetch_ahead(p: *const u8, bytes: usize) {
            let mut o = 0;
            while o < bytes {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + o).cast());
                o += 64;
            }
        }

        use crate::kernels::{ActRow, Q4_0_BYTES, Q8_0_BYTES, QK};
        use crate::kquants::{
            Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES, Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES,
            Q8KRow, QK_K,
        };

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn hsum(v: __m256) -> f32 {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps::<1>(v);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }

        /// The f16 at `p` (unaligned) as f32, with F16C.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn scale(p: *const u8) -> f32 {
            let bits = u16::from_le_bytes([*p, *p.add(1)]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }

        /// The f16 scales of four consecutive blocks `stride` bytes apart.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn scales4(p: *const u8, stride: usize) -> __m128 {
            let h = |j: usize| i16::from_le_bytes([*p.add(j * stride), *p.add(j * stride + 1)]);
            _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, h(3), h(2), h(1), h(0)))
        }

        /// 16 bytes of nibbles at `qs` as 32 unsigned bytes, low nibbles first (the element
        /// order of Q4_0, Q5_0 and Q5_1 blocks).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn nibbles(qs: *const u8) -> __m256i {
            let raw = _mm_loadu_si128(qs.cast());
            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
        }

        /// The 32 bits at `p` spread to 32 bytes, 0x10 where the bit is set (the fifth
        /// bit of Q5_0/Q5_1 values, bit `i` for element `i`).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn fifth_bits(p: *const u8) -> __m256i {
            let x = i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]);
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(x),
                _mm256_set_epi64x(
                    0x0303_0303_0303_0303,
                    0x0202_0202_0202_0202,
                    0x0101_0101_0101_0101,
                    0,
                ),
            );
            let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }

        /// The 32 values of the Q5_0 block at `blk`, unsigned (0..32), in element order.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn q5_0_values(blk: *const u8) -> __m256i {
            _mm256_or_si256(nibbles(blk.add(6)), fifth_bits(blk.add(2)))
        }

        /// Sums each of four i32x8 block products to one lane per 128-bit half:
        /// `[p0 p1 p2 p3 | p0' p1' p2' p3']` (the two halves add up to the block sums).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn reduce4(p0: __m256i, p1: __m256i, p2: __m256i, p3: __m256i) -> __m256 {
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));
            _mm256_cvtepi32_ps(h)
        }

        /// Integer dot of unsigned block values `wu` with activation block `b`, starting
        /// from `start` (the offset correction: `-8·Σa` for Q4_0, `-16·Σa` for Q5_0).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn block_int(wu: __m256i, a: &ActRow<'_>, b: usize, start: i32) -> __m256i {
            let start = _mm256_zextsi128_si256(_mm_cvtsi32_si128(start));
            let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK).cast());
            dot_u8_i8(start, wu, av)
        }

        /// Q4_0 (`FIVE` false) or Q5_0 (`FIVE` true) row times `T` activation rows, four
        /// blocks at a time: the four blocks' integer sums are gathered into one vector so
        /// that converting to float and applying the scales costs one instruction each per
        /// four blocks.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn dot_q4_q5_0<const T: usize, const FIVE: bool>(
            w: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            let pf = crate::kernels::prefetching(T);
            let (bytes, mul) = if FIVE { (Q5_0_BYTES, 2) } else { (Q4_0_BYTES, 1) };
            let values = |blk: *const u8| if FIVE { q5_0_values(blk) } else { nibbles(blk.add(2)) };
            let wp = w.as_ptr();
            let mut acc = [_mm256_setzero_ps(); T];
            let mut b = 0;
            while b + 4 <= nb {
                let blk = wp.add(b * bytes);
                if pf {
                    prefetch_ahead(blk, 4 * bytes);
                }
                let dw = scales4(blk, bytes);
                let w0 = values(blk);
                let w1 = values(blk.add(bytes));
                let w2 = values(blk.add(2 * bytes));
                let w3 = values(blk.add(3 * bytes));
                for t in 0..T {
                    let r = &a[t];
                    let c = |j: usize| mul * *r.c.get_unchecked(b + j);
                    let f = reduce4(
                        block_int(w0, r, b, c(0)),
                        block_int(w1, r, b + 1, c(1)),
                        block_int(w2, r, b + 2, c(2)),
                        block_int(w3, r, b + 3, c(3)),
                    );
                    let s4 = _mm_mul_ps(dw, _mm_loadu_ps(r.d.as_ptr().add(b)));
                    acc[t] = _mm256_fmadd_ps(f, _mm256_set_m128(s4, s4), acc[t]);
                }
                b += 4;
            }
            while b < nb {
                let blk = wp.add(b * bytes);
                let dw = scale(blk);
                let wu = values(blk);
                for t in 0..T {
                    let r = &a[t];
                    let p = _mm256_cvtepi32_ps(block_int(wu, r, b, mul * *r.c.get_unchecked(b)));
                    let sc = dw * *r.d.get_unchecked(b);
                    acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc), acc[t]);
                }
                b += 1;
            }
            let mut out = [0f32; T];
            for t in 0..T {
                out[t] = hsum(acc[t]);
            }
            out
        }

        /// Q4_0 row times `T` Q8_0 activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q4_0<const T: usize>(
            w: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            dot_q4_q5_0::<T, false>(w, a, nb)
        }

        /// Q5_0 row times `T` Q8_0 activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q5_0<const T: usize>(
            w: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            dot_q4_q5_0::<T, true>(w, a, nb)
        }

        /// Q5_1 row times `T` Q8_0 activation rows: `(d·d_y)·Σ q5·q8 + m·s_y` per block.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q5_1<const T: usize>(
            w: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            let wp = w.as_ptr();
            let mut acc = [_mm256_setzero_ps(); T];
            let mut mins = [0f32; T];
            for b in 0..nb {
                let blk = wp.add(b * Q5_1_BYTES);
                let (dw, mw) = (scale(blk), scale(blk.add(2)));
                let wu = _mm256_or_si256(nibbles(blk.add(8)), fifth_bits(blk.add(4)));
                for t in 0..T {
                    let r = &a[t];
                    let p = _mm256_cvtepi32_ps(block_int(wu, r, b, 0));
                    let sc = dw * *r.d.get_unchecked(b);
                    acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc), acc[t]);
                    mins[t] += mw * *r.s.get_unchecked(b);
                }
            }
            let mut out = [0f32; T];
            for t in 0..T {
                out[t] = hsum(acc[t]) + mins[t];
            }
            out
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn q8_block(blk: *const u8, a: &ActRow<'_>, b: usize) -> __m256 {
            let wv = _mm256_loadu_si256(blk.add(2).cast());
            let av = _mm256_loadu_si256(a.qs.as_ptr().add(b * QK).cast());
            let p = dot_u8_i8(
                _mm256_setzero_si256(),
                _mm256_sign_epi8(wv, wv),
                _mm256_sign_epi8(av, wv),
            );
            _mm256_cvtepi32_ps(p)
        }

        /// Q8_0 row times `T` Q8_0 activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q8_0<const T: usize>(
            w: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            let wp = w.as_ptr();
            if T == 1 {
                let a0 = &a[0];
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut b = 0;
                let pf = crate::kernels::prefetching(T);
                while b + 4 <= nb {
                    if pf {
                        prefetch_ahead(wp.add(b * Q8_0_BYTES), 4 * Q8_0_BYTES);
                    }
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let blk = wp.add((b + j) * Q8_0_BYTES);
                        let sc = scale(blk) * *a0.d.get_unchecked(b + j);
                        *acc = _mm256_fmadd_ps(q8_block(blk, a0, b + j), _mm256_set1_ps(sc), *acc);
                    }
                    b += 4;
                }
                while b < nb {
                    let blk = wp.add(b * Q8_0_BYTES);
                    let sc = scale(blk) * *a0.d.get_unchecked(b);
                    acc[0] = _mm256_fmadd_ps(q8_block(blk, a0, b), _mm256_set1_ps(sc), acc[0]);
                    b += 1;
                }
                let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                let mut out = [0f32; T];
                out[0] = hsum(s);
                return out;
            }
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let blk = wp.add(b * Q8_0_BYTES);
                let dw = scale(blk);
                let wv = _mm256_loadu_si256(blk.add(2).cast());
                let wabs = _mm256_sign_epi8(wv, wv);
                for t in 0..T {
                    let av = _mm256_loadu_si256(a[t].qs.as_ptr().add(b * QK).cast());
                    let sa = _mm256_sign_epi8(av, wv);
                    let p = _mm256_cvtepi32_ps(dot_u8_i8(_mm256_setzero_si256(), wabs, sa));
                    let sc = dw * *a[t].d.get_unchecked(b);
                    acc[t] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc), acc[t]);
                }
            }
            let mut out = [0f32; T];
            for t in 0..T {
                out[t] = hsum(acc[t]);
            }
            out
        }

        /// A k-quant super-block unpacked into registers: 256 unsigned weight values in 8
        /// vectors of 32, the sub-block scale of each 16 as i16 pairs per vector, `off·sc`
        /// per 16 (the value offset folded into the activation sums: 4 for Q3_K, 32 for
        /// Q6_K, 0 otherwise), the mins per 16 (Q2_K, Q4_K, Q5_K) and the float scales.
        struct KRegs {
            u: [__m256i; 8],
            sp: [__m256i; 8],
            offsc: __m256i,
            mins: __m256i,
            d: f32,
            dmin: f32,
        }

        /// The scale pair of each weight vector: vector `r` covers groups of 16 `2r` and
        /// `2r + 1`, whose i16 scales `sc16` holds in lanes `2r` and `2r + 1`; the result
        /// repeats the first over the low 8 i16 lanes and the second over the high 8.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn scale_pairs(sc16: __m256i) -> [__m256i; 8] {
            let halves = [_mm256_castsi256_si128(sc16), _mm256_extracti128_si256::<1>(sc16)];
            let lane = |e: i32| _mm_set1_epi16((((2 * e + 1) << 8) | (2 * e)) as i16);
            let mut sp = [_mm256_setzero_si256(); 8];
            for (r, s) in sp.iter_mut().enumerate() {
                let (src, k) = (halves[r / 4], (r % 4) as i32);
                *s = _mm256_set_m128i(
                    _mm_shuffle_epi8(src, lane(2 * k + 1)),
                    _mm_shuffle_epi8(src, lane(2 * k)),
                );
            }
            sp
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn u32_at(p: *const u8) -> u32 {
            p.cast::<u32>().read_unaligned()
        }

        /// The low two bits of each byte of `q` shifted right by `shift`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn bits2(q: __m256i, shift: i32) -> __m256i {
            _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8(3))
        }

        /// Bit `bit` of each byte of `q`, moved to bit `to`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn bit_to(q: __m256i, bit: i32, to: i32) -> __m256i {
            let one =
                _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(bit)), _mm256_set1_epi8(1));
            _mm256_sll_epi16(one, _mm_cvtsi32_si128(to))
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack_q2_k(blk: *const u8) -> KRegs {
            let raw = _mm_loadu_si128(blk.cast());
            let m4 = _mm_set1_epi8(0x0f);
            let sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
            let mut u = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                let q = _mm256_loadu_si256(blk.add(16 + 32 * h).cast());
                for s in 0..4 {
                    u[4 * h + s] = bits2(q, 2 * s as i32);
                }
            }
            KRegs {
                u,
                sp: scale_pairs(sc16),
                offsc: _mm256_setzero_si256(),
                mins,
                d: scale(blk.add(80)),
                dmin: scale(blk.add(82)),
            }
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack_q3_k(blk: *const u8) -> KRegs {
            // ggml's Q3_K scale unpacking (6-bit scales, offset 32), four lanes at once.
            const KMASK1: u32 = 0x0303_0303;
            const KMASK2: u32 = 0x0f0f_0f0f;
            let (a0, a1, tmp) = (u32_at(blk.add(96)), u32_at(blk.add(100)), u32_at(blk.add(104)));
            let aux = [
                (a0 & KMASK2) | ((tmp & KMASK1) << 4),
                (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
                ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
                ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
            ];
            let raw = _mm_set_epi32(aux[3] as i32, aux[2] as i32, aux[1] as i32, aux[0] as i32);
            let sc16 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(raw), _mm256_set1_epi16(32));
            let hm = _mm256_loadu_si256(blk.cast());
            let mut u = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                let q = _mm256_loadu_si256(blk.add(32 + 32 * h).cast());
                for s in 0..4 {
                    let hi = bit_to(hm, (4 * h + s) as i32, 2);
                    u[4 * h + s] = _mm256_or_si256(bits2(q, 2 * s as i32), hi);
                }
            }
            KRegs {
                u,
                sp: scale_pairs(sc16),
                offsc: _mm256_slli_epi16::<2>(sc16),
                mins: _mm256_setzero_si256(),
                d: scale(blk.add(108)),
                dmin: 0.0,
            }
        }

        /// Q4_K (`FIVE` false) and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins,
        /// unpacked as ggml's AVX2 code does (four bytes at a time).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack_q45_k<const FIVE: bool>(blk: *const u8) -> KRegs {
            const KMASK1: u32 = 0x3f3f_3f3f;
            const KMASK2: u32 = 0x0f0f_0f0f;
            const KMASK3: u32 = 0x0303_0303;
            let (a0, a1, a2) = (u32_at(blk.add(4)), u32_at(blk.add(8)), u32_at(blk.add(12)));
            let s_lo = a0 & KMASK1;
            let s_hi = (a2 & KMASK2) | (((a0 >> 6) & KMASK3) << 4);
            let m_lo = a1 & KMASK1;
            let m_hi = ((a2 >> 4) & KMASK2) | (((a1 >> 6) & KMASK3) << 4);
            let sm = _mm256_cvtepu8_epi16(_mm_set_epi32(
                m_hi as i32,
                m_lo as i32,
                s_hi as i32,
                s_lo as i32,
            ));
            let (sc8, m8) = (_mm256_castsi256_si128(sm), _mm256_extracti128_si256::<1>(sm));
            let sc16 = _mm256_set_m128i(_mm_unpackhi_epi16(sc8, sc8), _mm_unpacklo_epi16(sc8, sc8));
            let mins = _mm256_set_m128i(_mm_unpackhi_epi16(m8, m8), _mm_unpacklo_epi16(m8, m8));
            let qs = blk.add(if FIVE { 48 } else { 16 });
            let m4 = _mm256_set1_epi8(0x0f);
            let hb =
                if FIVE { _mm256_loadu_si256(blk.add(16).cast()) } else { _mm256_setzero_si256() };
            let mut u = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let q = _mm256_loadu_si256(qs.add(32 * j).cast());
                let mut lo = _mm256_and_si256(q, m4);
                let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                if FIVE {
                    lo = _mm256_or_si256(lo, bit_to(hb, 2 * j as i32, 4));
                    hi = _mm256_or_si256(hi, bit_to(hb, 2 * j as i32 + 1, 4));
                }
                u[2 * j] = lo;
                u[2 * j + 1] = hi;
            }
            KRegs {
                u,
                sp: scale_pairs(sc16),
                offsc: _mm256_setzero_si256(),
                mins,
                d: scale(blk),
                dmin: scale(blk.add(2)),
            }
        }

        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unpack_q6_k(blk: *const u8) -> KRegs {
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
            let m4 = _mm256_set1_epi8(0x0f);
            let mut u = [_mm256_setzero_si256(); 8];
            for h in 0..2 {
                let l0 = _mm256_loadu_si256(blk.add(64 * h).cast());
                let l1 = _mm256_loadu_si256(blk.add(64 * h + 32).cast());
                let hh = _mm256_loadu_si256(blk.add(128 + 32 * h).cast());
                let high = |shift: i32| _mm256_slli_epi16::<4>(bits2(hh, shift));
                u[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), high(0));
                u[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), high(2));
                u[4 * h + 2] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), high(4));
                u[4 * h + 3] =
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), high(6));
            }
            KRegs {
                u,
                sp: scale_pairs(sc16),
                offsc: _mm256_slli_epi16::<5>(sc16),
                mins: _mm256_setzero_si256(),
                d: scale(blk.add(208)),
                dmin: 0.0,
            }
        }

        /// A k-quant row times `T` Q8_K activation rows: per super-block the exact
        /// integer sums `Σ_g sc[g]·(Σ u·q8 − off·bsums[g])` and `Σ_g min[g]·bsums[g]`,
        /// then `d·d_y` and `dmin·d_y` applied in f32 (ggml's AVX2 k-quant kernels).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn dot_k<const T: usize, const KIND: u8>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            let pf = crate::kernels::prefetching(T);
            // (bytes per block, mins, value offset)
            let (bytes, mins, offset) = match KIND {
                2 => (Q2_K_BYTES, true, false),
                3 => (Q3_K_BYTES, false, true),
                4 => (Q4_K_BYTES, true, false),
                5 => (Q5_K_BYTES, true, false),
                _ => (Q6_K_BYTES, false, true),
            };
            let wp = w.as_ptr();
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let blk = wp.add(b * bytes);
                if pf {
                    prefetch_ahead(blk, bytes);
                }
                let k = match KIND {
                    2 => unpack_q2_k(blk),
                    3 => unpack_q3_k(blk),
                    4 => unpack_q45_k::<false>(blk),
                    5 => unpack_q45_k::<true>(blk),
                    _ => unpack_q6_k(blk),
                };
                let mut iv = [_mm256_setzero_si256(); T];
                for r in 0..8 {
                    for t in 0..T {
                        let y = _mm256_loadu_si256(a[t].qs.as_ptr().add(b * QK_K + 32 * r).cast());
                        let p = _mm256_maddubs_epi16(k.u[r], y);
                        iv[t] = _mm256_add_epi32(iv[t], _mm256_madd_epi16(p, k.sp[r]));
                    }
                }
                for t in 0..T {
                    let bs = _mm256_loadu_si256(a[t].bsums.as_ptr().add(16 * b).cast());
                    let yd = *a[t].d.get_unchecked(b);
                    let isum = if offset {
                        _mm256_sub_epi32(iv[t], _mm256_madd_epi16(k.offsc, bs))
                    } else {
                        iv[t]
                    };
                    acc[t] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(k.d * yd), acc[t]);
                    if mins {
                        let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(k.mins, bs));
                        acc[t] = _mm256_fnmadd_ps(m, _mm256_set1_ps(k.dmin * yd), acc[t]);
                    }
                }
            }
            let mut out = [0f32; T];
            for t in 0..T {
                out[t] = hsum(acc[t]);
            }
            out
        }

        /// Q2_K row times `T` Q8_K activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q2_k<const T: usize>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            dot_k::<T, 2>(w, a, nb)
        }

        /// Q3_K row times `T` Q8_K activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q3_k<const T: usize>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            dot_k::<T, 3>(w, a, nb)
        }

        /// Q4_K row times `T` Q8_K activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q4_k<const T: usize>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            dot_k::<T, 4>(w, a, nb)
        }

        /// Q5_K row times `T` Q8_K activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q5_k<const T: usize>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            dot_k::<T, 5>(w, a, nb)
        }

        /// Q6_K row times `T` Q8_K activation rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q6_k<const T: usize>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            dot_k::<T, 6>(w, a, nb)
        }

        /// The sum of the eight i32 lanes (exact: integer).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn hsum_i32(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s)
        }

        /// Q5_0 (`FIVE`) or Q8_0 row times `T` Q8_0 activation rows in ggml's float order
        /// (`ggml_vec_dot_q5_0_q8_0`/`ggml_vec_dot_q8_0_q8_0` for one row, llamafile's
        /// tinyBLAS for batches: the same arithmetic): 8 f32 lanes per token, lane `l` adding
        /// `fma(d_w·d_a, Σ products of the block's bytes 4l..4l+3)` block by block, the lanes
        /// summed at the end as `hsum_float_8`.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q0_ggml<const T: usize, const FIVE: bool>(
            w: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            let pf = crate::kernels::prefetching(T);
            let bytes = if FIVE { Q5_0_BYTES } else { Q8_0_BYTES };
            let wp = w.as_ptr();
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let blk = wp.add(b * bytes);
                if pf {
                    prefetch_ahead(blk, bytes);
                }
                let dw = scale(blk);
                let wv = if FIVE {
                    _mm256_sub_epi8(q5_0_values(blk), _mm256_set1_epi8(16))
                } else {
                    _mm256_loadu_si256(blk.add(2).cast())
                };
                let wabs = _mm256_sign_epi8(wv, wv);
                for t in 0..T {
                    let y = _mm256_loadu_si256(a[t].qs.as_ptr().add(b * QK).cast());
                    let lanes = dot_u8_i8(_mm256_setzero_si256(), wabs, _mm256_sign_epi8(y, wv));
                    let d = _mm256_set1_ps(dw * *a[t].d.get_unchecked(b));
                    acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), acc[t]);
                }
            }
            let mut out = [0f32; T];
            for t in 0..T {
                out[t] = hsum(acc[t]);
            }
            out
        }

        /// Q4_K row times `T` Q8_K activation rows in the order of ggml's repacked Q4_K
        /// kernels: per super-block the scaled integer sum times `d·d_a` and the mins' sum
        /// times `dmin·d_a` go into two accumulators (subtracted at the end), once per
        /// super-block (`ggml_gemv_q4_K_8x8_q8_K`) or, for the tokens `chunked` marks, once
        /// per 64 values (`ggml_gemm_q4_K_8x8_q8_K` at the AVX-512 level, which takes the
        /// tokens of a batch in fours).
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q4_k_ggml<const T: usize>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
            chunked: [bool; T],
        ) -> [f32; T] {
            let pf = crate::kernels::prefetching(T);
            let wp = w.as_ptr();
            let m4 = _mm256_set1_epi8(0x0f);
            let (mut acc, mut acc_min) = ([0f32; T], [0f32; T]);
            for b in 0..nb {
                let blk = wp.add(b * Q4_K_BYTES);
                if pf {
                    prefetch_ahead(blk, Q4_K_BYTES);
                }
                let (d, dmin) = (scale(blk), scale(blk.add(2)));
                let scales = std::slice::from_raw_parts(blk.add(4), 12);
                let (mut sc, mut mn) = ([0i16; 8], [0i32; 8]);
                for j in 0..8 {
                    let (s, m) = crate::kquants::scale_min_k4(j, scales);
                    (sc[j], mn[j]) = (i16::from(s), i32::from(m));
                }
                let mut lo = [_mm256_setzero_si256(); 4];
                let mut hi = [_mm256_setzero_si256(); 4];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(blk.add(16 + 32 * c).cast());
                    lo[c] = _mm256_and_si256(v, m4);
                    hi[c] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                }
                for t in 0..T {
                    let y = a[t].qs.as_ptr().add(b * QK_K);
                    let bs = a[t].bsums.as_ptr().add(16 * b);
                    let yd = *a[t].d.get_unchecked(b);
                    let (dd, dm) = (d * yd, dmin * yd);
                    let (mut isum, mut imin) = (0i32, 0i32);
                    for c in 0..4 {
                        let yl = _mm256_loadu_si256(y.add(64 * c).cast());
                        let yh = _mm256_loadu_si256(y.add(64 * c + 32).cast());
                        let pl = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(lo[c], yl),
                            _mm256_set1_epi16(sc[2 * c]),
                        );
                        let ph = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(hi[c], yh),
                            _mm256_set1_epi16(sc[2 * c + 1]),
                        );
                        let bsum =
                            |j: usize| i32::from(*bs.add(2 * j)) + i32::from(*bs.add(2 * j + 1));
                        let s = hsum_i32(_mm256_add_epi32(pl, ph));
                        let m = mn[2 * c] * bsum(2 * c) + mn[2 * c + 1] * bsum(2 * c + 1);
                        if chunked[t] {
                            acc[t] = (s as f32).mul_add(dd, acc[t]);
                            acc_min[t] = (m as f32).mul_add(dm, acc_min[t]);
                        } else {
                            (isum, imin) = (isum + s, imin + m);
                        }
                    }
                    if !chunked[t] {
                        acc[t] = (isum as f32).mul_add(dd, acc[t]);
                        acc_min[t] = (imin as f32).mul_add(dm, acc_min[t]);
                    }
                }
            }
            let mut out = [0f32; T];
            for t in 0..T {
                out[t] = acc[t] - acc_min[t];
            }
            out
        }

        /// Q6_K row times `T` Q8_K activation rows in the order of ggml's tiled K-quant
        /// matmul (batches of 8 rows or more): per block the exact integer sum of the scaled
        /// sub-block products (values offset by 32), times `d_w`, then times `d_a` added to
        /// the result with one fused multiply-add.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_q6_k_tiled<const T: usize>(
            w: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [f32; T] {
            let wp = w.as_ptr();
            let mut out = [0f32; T];
            for b in 0..nb {
                let k = unpack_q6_k(wp.add(b * Q6_K_BYTES));
                for t in 0..T {
                    let mut iv = _mm256_setzero_si256();
                    for r in 0..8 {
                        let y = _mm256_loadu_si256(a[t].qs.as_ptr().add(b * QK_K + 32 * r).cast());
                        let p = _mm256_maddubs_epi16(k.u[r], y);
                        iv = _mm256_add_epi32(iv, _mm256_madd_epi16(p, k.sp[r]));
                    }
                    let bs = _mm256_loadu_si256(a[t].bsums.as_ptr().add(16 * b).cast());
                    let s1 = hsum_i32(_mm256_sub_epi32(iv, _mm256_madd_epi16(k.offsc, bs)));
                    let result = s1 as f32 * k.d;
                    out[t] = result.mul_add(*a[t].d.get_unchecked(b), out[t]);
                }
            }
            out
        }

        /// The activation's sums of sub-blocks `2k` and `2k + 1` of super-block `b` as an
        /// i16 pair (low, high) in one i32, for `vpmaddwd` against the rows' mins of those
        /// sub-blocks (each sum of 32 bytes fits i16).
        #[inline(always)]
        unsafe fn q4k_bsum_pairs(a: &Q8KRow<'_>, b: usize, k: usize) -> i32 {
            let bs = a.bsums.as_ptr().add(16 * b + 4 * k);
            let lo = i32::from(*bs) + i32::from(*bs.add(1));
            let hi = i32::from(*bs.add(2)) + i32::from(*bs.add(3));
            (lo & 0xffff) | (hi << 16)
        }

        /// Adds super-block `b` of 8 Q4_K rows to one token's accumulators: the rows'
        /// integer sums `isum` times `d·d_y` into `acc`, and the mins (`mins[k]`: i16 pairs,
        /// the rows' mins of sub-blocks `2k` and `2k + 1`) times the activation's sums of
        /// those sub-blocks, times `dmin·d_y`, into `acc_min` (subtracted at the end, as
        /// ggml's repacked Q4_K gemm does).
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn q4k_group_add(
            isum: __m256i,
            mins: &[__m256i; 4],
            a: &Q8KRow<'_>,
            b: usize,
            (dv, dminv): (__m256, __m256),
            (acc, acc_min): (&mut __m256, &mut __m256),
        ) {
            let mut msum = _mm256_setzero_si256();
            for (k, mv) in mins.iter().enumerate() {
                let yv = _mm256_set1_epi32(q4k_bsum_pairs(a, b, k));
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(*mv, yv));
            }
            let yd = _mm256_set1_ps(*a.d.get_unchecked(b));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dv, yd), *acc);
            *acc_min =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dminv, yd), *acc_min);
        }

        /// Adds chunk `k` (sub-blocks `2k`, `2k + 1`: 64 values) of super-block `b` of 8
        /// Q4_K rows to one token's accumulators, in the order of ggml's repacked gemm:
        /// the chunk's scaled integer sums `isum` times `d·d_y` into `acc`, the rows' two
        /// mins (`mins_k`, i16 pairs) times the activation's sums of the two sub-blocks,
        /// times `dmin·d_y`, into `acc_min`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn q4k_chunk_add(
            isum: __m256i,
            mins_k: __m256i,
            a: &Q8KRow<'_>,
            (b, k): (usize, usize),
            (dv, dminv): (__m256, __m256),
            (acc, acc_min): (&mut __m256, &mut __m256),
        ) {
            let yd = _mm256_set1_ps(*a.d.get_unchecked(b));
            *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dv, yd), *acc);
            let msum = _mm256_madd_epi16(mins_k, _mm256_set1_epi32(q4k_bsum_pairs(a, b, k)));
            *acc_min =
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dminv, yd), *acc_min);
        }

        /// `T` Q8_K activation rows times 8 Q4_K rows interleaved by
        /// `kquants::repack_q4_k_x8`: per sub-block, 4 loads give the 8 rows' 32 values as
        /// low and high nibbles; each half times the broadcast activation chunk
        /// (`vpmaddubsw`) is summed in i16 (8·2·15·127 < 2^15), then one `vpmaddwd`
        /// applies the rows' scales (the scale bytes spread to i16 pairs by one
        /// `vpshufb`); the mins come in through the activation's pair sums, apart
        /// ([`q4k_group_add`]). With `C` (ggml's order for the tokens of a batch, as
        /// `ggml_gemm_q4_K_8x8_q8_K` takes them in fours) the floats take each 64 values'
        /// sums instead of each super-block's ([`q4k_chunk_add`]).
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn gemm_q4_k_x8<const T: usize, const C: bool>(
            packed: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
        ) -> [[f32; 8]; T] {
            let pf = crate::kernels::prefetching(T);
            use crate::kquants::Q4K_X8_BYTES;
            let pp = packed.as_ptr();
            let m4 = _mm256_set1_epi8(0x0f);
            let mut acc = [_mm256_setzero_ps(); T];
            let mut acc_min = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let g = pp.add(b * Q4K_X8_BYTES);
                if pf {
                    prefetch_ahead(g, Q4K_X8_BYTES);
                }
                let ys: [*const i8; T] = std::array::from_fn(|t| a[t].qs.as_ptr().add(b * QK_K));
                let bcast = |y: *const i8| _mm256_set1_epi32(y.cast::<i32>().read_unaligned());
                let dv = _mm256_cvtph_ps(_mm_loadu_si128(g.add(1152).cast()));
                let dminv = _mm256_cvtph_ps(_mm_loadu_si128(g.add(1168).cast()));
                let mins: [__m256i; 4] = std::array::from_fn(|k| {
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(g.add(1088 + 16 * k).cast()))
                });
                let mut isum = [_mm256_setzero_si256(); T];
                for j in 0..8 {
                    let mut sub = [_mm256_setzero_si256(); T];
                    for q in 0..4 {
                        let v = _mm256_loadu_si256(g.add((4 * j + q) * 32).cast());
                        let lo = _mm256_and_si256(v, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                        for t in 0..T {
                            let y = ys[t].add(32 * j + 4 * q);
                            sub[t] = q4k_sub_add(sub[t], (lo, hi), (bcast(y), bcast(y.add(16))));
                        }
                    }
                    let sc = g.add(1024 + 8 * j);
                    for t in 0..T {
                        isum[t] = _mm256_add_epi32(isum[t], q4k_sub_scaled(sub[t], sc));
                    }
                    if C && j % 2 == 1 {
                        for t in 0..T {
                            let (ai, am) = (&mut acc[t], &mut acc_min[t]);
                            q4k_chunk_add(
                                isum[t],
                                mins[j / 2],
                                &a[t],
                                (b, j / 2),
                                (dv, dminv),
                                (ai, am),
                            );
                            isum[t] = _mm256_setzero_si256();
                        }
                    }
                }
                if !C {
                    for t in 0..T {
                        let (ai, am) = (&mut acc[t], &mut acc_min[t]);
                        q4k_group_add(isum[t], &mins, &a[t], b, (dv, dminv), (ai, am));
                    }
                }
            }
            let mut out = [[0f32; 8]; T];
            for t in 0..T {
                _mm256_storeu_ps(out[t].as_mut_ptr(), _mm256_sub_ps(acc[t], acc_min[t]));
            }
            out
        }

        /// [`gemm_q4_k_x8`] over `out.len()` consecutive groups: those the level takes in
        /// pairs first (`gemm_q4_k_x8_pairs`: 512-bit registers at AVX-512, none at AVX2),
        /// the rest one by one.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn gemm_q4_k_x8_groups<const T: usize, const C: bool>(
            packed: &[u8],
            a: [Q8KRow<'_>; T],
            nb: usize,
            out: &mut [[[f32; 8]; T]],
        ) {
            let group = nb * crate::kquants::Q4K_X8_BYTES;
            let paired = gemm_q4_k_x8_pairs::<T, C>(packed, a, nb, out);
            for (g, o) in out.iter_mut().enumerate().skip(paired) {
                *o = gemm_q4_k_x8::<T, C>(packed.get_unchecked(g * group..(g + 1) * group), a, nb);
            }
        }

        /// `T` Q8_0 activation rows times 8 Q4_0 rows interleaved by
        /// `kernels::repack_q4_0_x8`, or (`FIVE`) 8 Q5_0 rows by `repack_q5_0_x8`: per
        /// block, 4 loads give the 8 rows' 32 values as low and high nibbles (Q5_0: each
        /// with its fifth bit, spread from one broadcast byte per row by a `vpshufb` and a
        /// compare); each half times the broadcast activation chunk goes into the rows'
        /// i32 lanes ([`dot2_u8_i8`]), starting from `-8·Σa` (Q5_0: `-16·Σa`); then one
        /// conversion and one multiply-add by `d_w·d_a` per block and token.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn gemm_x8<const T: usize, const FIVE: bool>(
            packed: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [[f32; 8]; T] {
            let pf = crate::kernels::prefetching(T);
            let bytes =
                if FIVE { crate::kernels::Q5_0_X8_BYTES } else { crate::kernels::Q4_0_X8_BYTES };
            let qs_at = if FIVE { 48 } else { 16 };
            let pp = packed.as_ptr();
            let m4 = _mm256_set1_epi8(0x0f);
            let m5 = _mm256_set1_epi8(0x10);
            // Byte `4r + i` takes byte `r` of the broadcast fifth bits; bit `i` (low
            // nibbles) or `4 + i` (high nibbles) of it.
            let spread = _mm256_setr_epi8(
                0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, //
                4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7,
            );
            let bit_lo = _mm256_set1_epi32(0x0804_0201);
            let bit_hi = _mm256_set1_epi32(0x8040_2010u32 as i32);
            let bcast = |y: *const i8| _mm256_set1_epi32(y.cast::<i32>().read_unaligned());
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let g = pp.add(b * bytes);
                if pf {
                    prefetch_ahead(g, bytes);
                }
                let ys: [*const i8; T] = std::array::from_fn(|t| a[t].qs.as_ptr().add(b * QK));
                let mut isum: [__m256i; T] = std::array::from_fn(|t| {
                    let c = *a[t].c.get_unchecked(b);
                    _mm256_set1_epi32(if FIVE { 2 * c } else { c })
                });
                for q in 0..4 {
                    let v = _mm256_loadu_si256(g.add(qs_at + 32 * q).cast());
                    let mut lo = _mm256_and_si256(v, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                    if FIVE {
                        let h =
                            _mm256_set1_epi64x(g.add(16 + 8 * q).cast::<i64>().read_unaligned());
                        let h = _mm256_shuffle_epi8(h, spread);
                        let f_lo = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit_lo), bit_lo);
                        let f_hi = _mm256_cmpeq_epi8(_mm256_and_si256(h, bit_hi), bit_hi);
                        lo = _mm256_or_si256(lo, _mm256_and_si256(f_lo, m5));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(f_hi, m5));
                    }
                    for t in 0..T {
                        let y = ys[t].add(4 * q);
                        isum[t] = dot2_u8_i8(isum[t], (lo, bcast(y)), (hi, bcast(y.add(16))));
                    }
                }
                let dv = _mm256_cvtph_ps(_mm_loadu_si128(g.cast()));
                for t in 0..T {
                    let sc = _mm256_mul_ps(dv, _mm256_set1_ps(*a[t].d.get_unchecked(b)));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), sc, acc[t]);
                }
            }
            let mut out = [[0f32; 8]; T];
            for t in 0..T {
                _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
            }
            out
        }

        /// 8 Q8_0 rows interleaved by `kernels::repack_q8_0_x8` times `T` Q8_0 activation
        /// rows: per block, 8 loads give the 8 rows' 32 values, each times the broadcast
        /// activation chunk into the rows' i32 lanes ([`dot_i8_i8`], starting from
        /// `-I8_BIAS·Σa`), then one conversion and one multiply-add by `d_w·d_a` per block
        /// and token for all 8 rows.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn gemm_q8_0_x8<const T: usize>(
            packed: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
        ) -> [[f32; 8]; T] {
            const BYTES: usize = crate::kernels::Q8_0_X8_BYTES;
            let pf = crate::kernels::prefetching(T);
            let pp = packed.as_ptr();
            let bcast = |y: *const i8| _mm256_set1_epi32(y.cast::<i32>().read_unaligned());
            let mut acc = [_mm256_setzero_ps(); T];
            for b in 0..nb {
                let g = pp.add(b * BYTES);
                if pf {
                    prefetch_ahead(g, BYTES);
                }
                let ys: [*const i8; T] = std::array::from_fn(|t| a[t].qs.as_ptr().add(b * QK));
                // `c` is `-8·Σa`: the bias times `Σa`, negated.
                let mut isum: [__m256i; T] = std::array::from_fn(|t| {
                    _mm256_set1_epi32(*a[t].c.get_unchecked(b) * (I8_BIAS / 8))
                });
                for q in 0..QK / 4 {
                    let w = _mm256_loadu_si256(g.add(16 + 32 * q).cast());
                    for t in 0..T {
                        isum[t] = dot_i8_i8(isum[t], w, bcast(ys[t].add(4 * q)));
                    }
                }
                let dv = _mm256_cvtph_ps(_mm_loadu_si128(g.cast()));
                for t in 0..T {
                    let sc = _mm256_mul_ps(dv, _mm256_set1_ps(*a[t].d.get_unchecked(b)));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), sc, acc[t]);
                }
            }
            let mut out = [[0f32; 8]; T];
            for t in 0..T {
                _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
            }
            out
        }

        /// [`gemm_q8_0_x8`] over `out.len()` consecutive groups.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn gemm_q8_0_x8_groups<const T: usize>(
            packed: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
            out: &mut [[[f32; 8]; T]],
        ) {
            let group = nb * crate::kernels::Q8_0_X8_BYTES;
            for (g, o) in out.iter_mut().enumerate() {
                *o = gemm_q8_0_x8::<T>(packed.get_unchecked(g * group..(g + 1) * group), a, nb);
            }
        }

        /// [`gemm_x8`] over `out.len()` consecutive groups.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn gemm_x8_groups<const T: usize, const FIVE: bool>(
            packed: &[u8],
            a: [ActRow<'_>; T],
            nb: usize,
            out: &mut [[[f32; 8]; T]],
        ) {
            let bytes =
                if FIVE { crate::kernels::Q5_0_X8_BYTES } else { crate::kernels::Q4_0_X8_BYTES };
            let group = nb * bytes;
            for (g, o) in out.iter_mut().enumerate() {
                *o = gemm_x8::<T, FIVE>(packed.get_unchecked(g * group..(g + 1) * group), a, nb);
            }
        }

        /// Rows `w[r·row_bytes..]` for `r < out.len()` times `T` Q8_0 activation rows with
        /// the kernel `KIND` (0 Q4_0, 1 Q8_0, 2 Q5_0, 3 Q5_1): one call per chunk of rows,
        /// so the per-call work (dispatch, checks, passing the activation rows) is not
        /// paid per row.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn rows_q8<const T: usize, const KIND: u8>(
            w: &[u8],
            row_bytes: usize,
            a: [ActRow<'_>; T],
            nb: usize,
            out: &mut [[f32; T]],
        ) {
            for (r, o) in out.iter_mut().enumerate() {
                let row = w.get_unchecked(r * row_bytes..(r + 1) * row_bytes);
                *o = match KIND {
                    0 => dot_q4_0::<T>(row, a, nb),
                    1 => dot_q8_0::<T>(row, a, nb),
                    2 => dot_q5_0::<T>(row, a, nb),
                    _ => dot_q5_1::<T>(row, a, nb),
                };
            }
        }

        /// As [`rows_q8`] for k-quant rows and Q8_K activations (`KIND` 2 to 6: Q2_K to
        /// Q6_K).
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn rows_q8k<const T: usize, const KIND: u8>(
            w: &[u8],
            row_bytes: usize,
            a: [Q8KRow<'_>; T],
            nb: usize,
            out: &mut [[f32; T]],
        ) {
            for (r, o) in out.iter_mut().enumerate() {
                let row = w.get_unchecked(r * row_bytes..(r + 1) * row_bytes);
                *o = dot_k::<T, KIND>(row, a, nb);
            }
        }

        /// An F16 row (`x.len()` halves at `w`) times an F32 row.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_f16_bytes(w: *const u8, x: &[f32]) -> f32 {
            let n = x.len();
            let xp = x.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * (i + 8 * j)).cast()));
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                let wv = _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i).cast()));
                acc[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i)), acc[0]);
                i += 8;
            }
            let mut s =
                hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            while i < n {
                s += scale(w.add(2 * i)) * x[i];
                i += 1;
            }
            s
        }

        /// An F32 row (`x.len()` floats at `w`, unaligned) times an F32 row.
        #[target_feature(enable = $features)]
        #[inline]
        pub(crate) unsafe fn dot_f32_ptr(w: *const f32, x: &[f32]) -> f32 {
            let n = x.len();
            let xp = x.as_ptr();
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_ps(w.add(i + 8 * j));
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i + 8 * j)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] =
                    _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
                i += 8;
            }
            let mut s =
                hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
            while i < n {
                s += w.add(i).read_unaligned() * x[i];
                i += 1;
            }
            s
        }

        /// `n` (a multiple of 8) f16 values at `src` widened into f32 at `dst`.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn widen_f16(src: *const u8, n: usize, dst: *mut f32) {
            for c in 0..n / 8 {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(src.add(16 * c).cast()));
                _mm256_storeu_ps(dst.add(8 * c), x);
            }
        }

        /// `kernels::attend_heads_f16` for `max.len()` heads (at most 64) of
        /// `q.len() / max.len()` values (a multiple of 8, at most 256): keys and values at
        /// `k`/`v` (f16, cell `c`'s head at `c·kv_dim + offset`), the f16 accumulators at
        /// `acc`. Cells go in blocks of `BLOCK`: first every head's scores (each key
        /// widened once), then each head's softmax steps (the exponentials, free of the
        /// value loads), then the values (each widened once) into every head's
        /// accumulator, cell by cell in order as llama.cpp's one-row path adds them
        /// (`f16_native`: in f16 arithmetic, `kernels::FaRounding::F16Native`).
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn attend_heads_f16(
            q: &[f32],
            (k, v): (*const u8, *const u8),
            (kv_dim, offset): (usize, usize),
            cells: &[u32],
            (scale, softcap): (f32, f32),
            acc: *mut u8,
            (max, sum): (&mut [f32], &mut [f32]),
            scratch: *mut f32,
            f16_native: bool,
        ) {
            const BLOCK: usize = crate::kernels::FA_BLOCK;
            let g = max.len();
            let hd = q.len() / g;
            let mut buf = [0f32; 256];
            let bp = buf.as_mut_ptr();
            // Per head and cell of the block: the score, then (rescale, weight), at
            // `scratch[2·(h·BLOCK + j)..]`.
            let step = |h: usize, j: usize| scratch.add(2 * (h * BLOCK + j));
            let qp = q.as_ptr();
            let widen = |src: *const u8, at: usize| widen_f16(src.add(at), hd, bp);
            for block in cells.chunks(BLOCK) {
                for (j, &cell) in block.iter().enumerate() {
                    widen(k, 2 * (cell as usize * kv_dim + offset));
                    for h in 0..g {
                        *step(h, j) = dot_ggml_f16(bp, qp.add(h * hd), hd) * scale;
                    }
                }
                for h in 0..g {
                    let (m, s) = (max.get_unchecked_mut(h), sum.get_unchecked_mut(h));
                    for j in 0..block.len() {
                        let st = step(h, j);
                        let (ms, w) = crate::kernels::softmax_step(*st, softcap, m);
                        (*st, *st.add(1)) = (ms, w);
                        *s = (*s).mul_add(ms, w);
                    }
                }
                // In f16 arithmetic on a CPU that has it, straight from the f16 values.
                let native = f16_native && has_f16_arithmetic();
                for (j, &cell) in block.iter().enumerate() {
                    let at = 2 * (cell as usize * kv_dim + offset);
                    if !native {
                        widen(v, at);
                    }
                    for h in 0..g {
                        let (ms, w) = (*step(h, j), *step(h, j).add(1));
                        if native {
                            fa_accumulate_f16_values(acc.add(2 * h * hd), v.add(at), hd, (ms, w));
                        } else if f16_native {
                            fa_accumulate_f16(acc.add(2 * h * hd), bp, hd, (ms, w));
                        } else {
                            fa_accumulate(acc.add(2 * h * hd), bp, hd, (ms, w));
                        }
                    }
                }
            }
        }

        /// `kernels::attend_heads_tiled` for `max.len()` heads (at most 64) of
        /// `q.len() / max.len()` values (a multiple of 8, at most 256), the f32
        /// accumulators at `acc`: per tile, each cell's key widened once for every head's
        /// score, then each head's softmax step, then each cell's value widened once and
        /// added to every head's accumulator.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn attend_heads_tiled(
            q: &[f32],
            (k, v): (*const u8, *const u8),
            (kv_dim, offset): (usize, usize),
            cells: &[u32],
            (scale, softcap): (f32, f32),
            acc: &mut [f32],
            (max, sum): (&mut [f32], &mut [f32]),
            scratch: *mut f32,
        ) {
            const TILE: usize = crate::kernels::FA_TILE_KV;
            let g = max.len();
            let hd = q.len() / g;
            let mut buf = [0f32; 256];
            let bp = buf.as_mut_ptr();
            // Per head and cell of the tile: the score, then the weight, at
            // `scratch[h·TILE + j]`.
            let weight = |h: usize, j: usize| scratch.add(h * TILE + j);
            let (qp, ap) = (q.as_ptr(), acc.as_mut_ptr());
            let widen = |src: *const u8, cell: u32| {
                widen_f16(src.add(2 * (cell as usize * kv_dim + offset)), hd, bp);
            };
            for tile in cells.chunk_by(|a, b| a / TILE as u32 == b / TILE as u32) {
                for (j, &cell) in tile.iter().enumerate() {
                    widen(k, cell);
                    for h in 0..g {
                        let mut sc = dot_f32_x8(bp, qp.add(h * hd), hd) * scale;
                        if softcap != 0.0 {
                            sc = softcap * sc.tanh();
                        }
                        *weight(h, j) = sc;
                    }
                }
                for h in 0..g {
                    let ws = std::slice::from_raw_parts_mut(weight(h, 0), tile.len());
                    let tile_max = ws.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    let (m, s) = (max.get_unchecked_mut(h), sum.get_unchecked_mut(h));
                    if tile_max > *m {
                        let ms = (*m - tile_max).exp();
                        let msv = _mm256_set1_ps(ms);
                        for c in 0..hd / 8 {
                            let a = ap.add(h * hd + 8 * c);
                            _mm256_storeu_ps(a, _mm256_mul_ps(_mm256_loadu_ps(a), msv));
                        }
                        *s *= ms;
                        *m = tile_max;
                    }
                    let mut tile_sum = 0f64;
                    for w in ws.iter_mut() {
                        *w = (*w - *m).exp();
                        tile_sum += f64::from(*w);
                    }
                    *s += tile_sum as f32;
                }
                for (j, &cell) in tile.iter().enumerate() {
                    widen(v, cell);
                    for h in 0..g {
                        let wv = _mm256_set1_ps(*weight(h, j));
                        for c in 0..hd / 8 {
                            let a = ap.add(h * hd + 8 * c);
                            let x = _mm256_fmadd_ps(
                                wv,
                                _mm256_loadu_ps(bp.add(8 * c)),
                                _mm256_loadu_ps(a),
                            );
                            _mm256_storeu_ps(a, x);
                        }
                    }
                }
            }
        }

        /// The 32 values of a Q8_0 (`q4` false) or Q4_0 block at `blk` as signed bytes
        /// (Q4_0's nibbles less their offset of 8), in element order.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn q0_bytes(blk: *const u8, q4: bool) -> __m256i {
            if q4 {
                _mm256_sub_epi8(nibbles(blk.add(2)), _mm256_set1_epi8(8))
            } else {
                _mm256_loadu_si256(blk.add(2).cast())
            }
        }

        /// `kernels::attend_heads_quantized` for `max.len()` heads (at most 64) of `hd`
        /// values (whole blocks, at most 256) whose queries are the Q8_0 rows `qs` (`g ×
        /// hd`) with scales `qd` (`g × hd/32`), with `2·g·FA_BLOCK` floats of `scratch`: keys and values Q8_0 (`q4` false) or Q4_0
        /// blocks, cell `c`'s head at byte `c·row_bytes + head_at`. Cells go in blocks of
        /// `kernels::FA_BLOCK`: first every head's scores (each key block unpacked once for
        /// all heads; per block the 32 byte products summed in fours into 8 lanes, added as
        /// `fma(d_k·d_q, lanes, acc)`, the lanes summed as `hsum_float_8`: ggml's
        /// `vec_dot_q8_0_q8_0`/`q4_0_q8_0`), then each head's softmax steps, then each
        /// cell's value dequantized once (`dequantize_row_q8_0`/`_q4_0`) and added to every
        /// head's f32 accumulator, cell by cell in order (`ggml_vec_scale_f32` on a new
        /// maximum, `ggml_vec_mad_f32`): per head the operations of ggml's one-row loop.
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn attend_heads_quantized(
            (qs, qd): (&[i8], &[f32]),
            (k, v): (*const u8, *const u8),
            (row_bytes, head_at, q4): (usize, usize, bool),
            cells: &[u32],
            (kq_scale, softcap): (f32, f32),
            acc: &mut [f32],
            (max, sum): (&mut [f32], &mut [f32]),
            scratch: *mut f32,
        ) {
            const BLOCK: usize = crate::kernels::FA_BLOCK;
            let g = max.len();
            let hd = acc.len() / g;
            let nb = hd / QK;
            let bytes = if q4 { Q4_0_BYTES } else { Q8_0_BYTES };
            // Per head and cell of the block: the score, then (rescale, weight), at
            // `scratch[2·(h·BLOCK + j)..]`.
            let steps = std::slice::from_raw_parts_mut(scratch, 2 * g * BLOCK);
            let step = |h: usize, j: usize| 2 * (h * BLOCK + j);
            let mut buf = [0f32; 256];
            let bp = buf.as_mut_ptr();
            let (qp, dp, ap) = (qs.as_ptr(), qd.as_ptr(), acc.as_mut_ptr());
            let head = |store: *const u8, cell: u32| store.add(cell as usize * row_bytes + head_at);
            for block in cells.chunks(BLOCK) {
                for (j, &cell) in block.iter().enumerate() {
                    let kp = head(k, cell);
                    // The key's blocks: |w| and w (for the signs), and the scales.
                    let mut wabs = [_mm256_setzero_si256(); 8];
                    let mut wsgn = [_mm256_setzero_si256(); 8];
                    let mut dk = [0f32; 8];
                    for b in 0..nb {
                        let blk = kp.add(b * bytes);
                        let wv = q0_bytes(blk, q4);
                        wabs[b] = _mm256_sign_epi8(wv, wv);
                        wsgn[b] = wv;
                        dk[b] = scale(blk);
                    }
                    for h in 0..g {
                        let mut lanes_acc = _mm256_setzero_ps();
                        for b in 0..nb {
                            let y = _mm256_loadu_si256(qp.add(h * hd + b * QK).cast());
                            let lanes = dot_u8_i8(
                                _mm256_setzero_si256(),
                                wabs[b],
                                _mm256_sign_epi8(y, wsgn[b]),
                            );
                            let d = _mm256_set1_ps(dk[b] * *dp.add(h * nb + b));
                            lanes_acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), lanes_acc);
                        }
                        *steps.get_unchecked_mut(step(h, j)) = hsum(lanes_acc) * kq_scale;
                    }
                }
                for h in 0..g {
                    let (m, s) = (max.get_unchecked_mut(h), sum.get_unchecked_mut(h));
                    for j in 0..block.len() {
                        let at = step(h, j);
                        let (ms, w) =
                            crate::kernels::softmax_step(*steps.get_unchecked(at), softcap, m);
                        *steps.get_unchecked_mut(at) = ms;
                        *steps.get_unchecked_mut(at + 1) = w;
                        *s = (*s).mul_add(ms, w);
                    }
                }
                for (j, &cell) in block.iter().enumerate() {
                    let vp = head(v, cell);
                    for b in 0..nb {
                        let blk = vp.add(b * bytes);
                        let d = _mm256_set1_ps(scale(blk));
                        let x = q0_bytes(blk, q4);
                        let halves = [_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x)];
                        for (i, half) in halves.into_iter().enumerate() {
                            for (l, part) in
                                [half, _mm_srli_si128::<8>(half)].into_iter().enumerate()
                            {
                                let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
                                _mm256_storeu_ps(
                                    bp.add(b * QK + 16 * i + 8 * l),
                                    _mm256_mul_ps(f, d),
                                );
                            }
                        }
                    }
                    for h in 0..g {
                        let at = step(h, j);
                        let (ms, w) = (*steps.get_unchecked(at), *steps.get_unchecked(at + 1));
                        let acc_h = ap.add(h * hd);
                        if ms != 1.0 {
                            let msv = _mm256_set1_ps(ms);
                            for c in 0..hd / 8 {
                                let a = acc_h.add(8 * c);
                                _mm256_storeu_ps(a, _mm256_mul_ps(_mm256_loadu_ps(a), msv));
                            }
                        }
                        let wv = _mm256_set1_ps(w);
                        for c in 0..hd / 8 {
                            let a = acc_h.add(8 * c);
                            let x = _mm256_fmadd_ps(
                                _mm256_loadu_ps(bp.add(8 * c)),
                                wv,
                                _mm256_loadu_ps(a),
                            );
                            _mm256_storeu_ps(a, x);
                        }
                    }
                }
            }
        }
    };
}

/// AVX2 + FMA + F16C (x86-64-v3: Haswell, Zen 1 and later).
pub(crate) mod avx2 {
    x86_kernels!("avx2,fma,f16c");

    /// No 512-bit registers at this level: every group goes through [`gemm_q4_k_x8`] alone.
    #[inline(always)]
    unsafe fn gemm_q4_k_x8_pairs<const T: usize, const C: bool>(
        _packed: &[u8],
        _a: [Q8KRow<'_>; T],
        _nb: usize,
        _out: &mut [[[f32; 8]; T]],
    ) -> usize {
        0
    }

    /// `acc` plus unsigned bytes `u` times signed bytes `s`, summed in fours into 8 i32
    /// lanes. `|u·s|` pairs stay below 2·128·127 (values ≤ 31 or sign-folded Q8_0), so
    /// `vpmaddubsw` never saturates.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
    }

    /// Bias of [`dot_i8_i8`]'s sums: none here (the sign trick keeps the bytes signed).
    const I8_BIAS: i32 = 0;

    /// `acc` plus signed bytes `w` times signed bytes `s`, summed in fours into i32 lanes:
    /// `|w|` times `s` with `w`'s sign (ggml's trick; `|w|·|s| ≤ 128·127`, so
    /// `vpmaddubsw`'s pair sums never saturate).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_i8_i8(acc: __m256i, w: __m256i, s: __m256i) -> __m256i {
        dot_u8_i8(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w))
    }

    /// [`dot_u8_i8`] of two pairs, the two products summed in i16 first (values ≤ 15, so
    /// `2·2·15·127` fits) and widened once.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot2_u8_i8(
        acc: __m256i,
        (u0, s0): (__m256i, __m256i),
        (u1, s1): (__m256i, __m256i),
    ) -> __m256i {
        let p = _mm256_add_epi16(_mm256_maddubs_epi16(u0, s0), _mm256_maddubs_epi16(u1, s1));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    /// One step of a Q4_K sub-block's sums for 8 interleaved rows: the low and high
    /// nibbles times the broadcast activation bytes, added into i16 pairs per row
    /// (`vpmaddubsw`; 8·2·15·127 < 2^15 over a sub-block).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn q4k_sub_add(
        acc: __m256i,
        (lo, hi): (__m256i, __m256i),
        (y0, y1): (__m256i, __m256i),
    ) -> __m256i {
        let p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, y0), _mm256_maddubs_epi16(hi, y1));
        _mm256_add_epi16(acc, p)
    }

    /// A sub-block's sums ([`q4k_sub_add`]) times the 8 rows' scale bytes at `sc`, as one
    /// i32 per row: each scale spread to its row's i16 pair (rows 0-3 in the low half, 4-7
    /// in the high half), then `vpmaddwd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn q4k_sub_scaled(sub: __m256i, sc: *const u8) -> __m256i {
        let spread = _mm256_setr_epi8(
            0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1, //
            4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1,
        );
        let scv =
            _mm256_shuffle_epi8(_mm256_set1_epi64x(sc.cast::<i64>().read_unaligned()), spread);
        _mm256_madd_epi16(sub, scv)
    }

    /// `a · b` for `n` (a multiple of 8) f32 at each pointer.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_f32_x8(a: *const f32, b: *const f32, n: usize) -> f32 {
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i + 8)), _mm256_loadu_ps(b.add(i + 8)), s1);
            i += 16;
        }
        if i < n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s0);
        }
        hsum(_mm256_add_ps(s0, s1))
    }

    /// `acc = f16(f16(acc·ms) + w·v)` for `n` (a multiple of 8) f16 accumulators at `acc`
    /// and f32 values at `v` (the rescale only when `ms` is not 1).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn fa_accumulate(acc: *mut u8, v: *const f32, n: usize, (ms, w): (f32, f32)) {
        const R: i32 = _MM_FROUND_TO_NEAREST_INT;
        let (wv, msv) = (_mm256_set1_ps(w), _mm256_set1_ps(ms));
        for i in (0..n).step_by(8) {
            let mut a = _mm256_cvtph_ps(_mm_loadu_si128(acc.add(2 * i).cast()));
            if ms != 1.0 {
                a = _mm256_cvtph_ps(_mm256_cvtps_ph::<R>(_mm256_mul_ps(a, msv)));
            }
            let r = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(i)), wv, a);
            _mm_storeu_si128(acc.add(2 * i).cast(), _mm256_cvtps_ph::<R>(r));
        }
    }

    /// [`fa_accumulate`] in f16 arithmetic (`kernels::fa_step` with `F16Native`), one
    /// value at a time: only a CPU with AVX-512 rounds so, and there the AVX-512 kernel
    /// runs unless the level is forced down.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn fa_accumulate_f16(acc: *mut u8, v: *const f32, n: usize, ms_w: (f32, f32)) {
        super::f16_accumulate_tail(acc, v, 0, n, ms_w);
    }

    /// No f16 arithmetic at this level.
    #[inline(always)]
    fn has_f16_arithmetic() -> bool {
        false
    }

    /// [`fa_accumulate_f16`] of `n` (at most 256) values given as f16 (unused at this
    /// level, where [`has_f16_arithmetic`] is false; kept correct all the same).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn fa_accumulate_f16_values(acc: *mut u8, v: *const u8, n: usize, ms_w: (f32, f32)) {
        let mut wide = [0f32; 256];
        let n = n.min(256);
        for (i, x) in wide[..n].iter_mut().enumerate() {
            *x = half::f16::from_bits(v.add(2 * i).cast::<u16>().read_unaligned()).to_f32();
        }
        super::f16_accumulate_tail(acc, wide.as_ptr(), 0, n, ms_w);
    }

    /// `k · q` for `n` f32 at each pointer in `ggml_vec_dot_f16`'s order on AVX2: four
    /// 8-lane accumulators over steps of 32, added as `(a0 + a2) + (a1 + a3)` and then
    /// across lanes with two horizontal adds; the remainder added in f64.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dot_ggml_f16(k: *const f32, q: *const f32, n: usize) -> f32 {
        let np = n & !31;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = i + 8 * j;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(k.add(at)), _mm256_loadu_ps(q.add(at)), *a);
            }
            i += 32;
        }
        let x = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let t1 = _mm_hadd_ps(t0, t0);
        let mut sum = f64::from(_mm_cvtss_f32(_mm_hadd_ps(t1, t1)));
        while i < n {
            sum += f64::from(*k.add(i) * *q.add(i));
            i += 1;
        }
        sum as f32
    }
}

/// Values `from..to` of an f16 accumulator step in f16 arithmetic, one at a time
/// (`kernels::fa_step` with `F16Native`).
///
/// # Safety
/// `acc` holds at least `to` f16 values and `v` at least `to` f32 values.
unsafe fn f16_accumulate_tail(
    acc: *mut u8,
    v: *const f32,
    from: usize,
    to: usize,
    ms_w: (f32, f32),
) {
    use crate::kernels::{FaRounding, fa_step};
    for i in from..to {
        // SAFETY: i < to: inside both rows (the caller's guarantee); f16 is a u16.
        unsafe {
            let a = acc.add(2 * i).cast::<u16>();
            let old = half::f16::from_bits(a.read_unaligned());
            let r = fa_step(old, *v.add(i), ms_w, FaRounding::F16Native);
            a.write_unaligned(r.to_bits());
        }
    }
}

/// The same kernels with AVX-512 F/BW/VL/VNNI (Ice Lake, Zen 4 and later): `vpdpbusd`
/// for the integer dots.
pub(crate) mod avx512 {
    x86_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");

    /// The leading groups of `out` taken two at a time in 512-bit registers
    /// ([`gemm_q4_k_x16`]); returns how many it filled (an odd last one is left).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn gemm_q4_k_x8_pairs<const T: usize, const C: bool>(
        packed: &[u8],
        a: [Q8KRow<'_>; T],
        nb: usize,
        out: &mut [[[f32; 8]; T]],
    ) -> usize {
        let group = nb * crate::kquants::Q4K_X8_BYTES;
        let pairs = out.len() / 2;
        for p in 0..pairs {
            let g0 = packed.as_ptr().add(2 * p * group);
            let both = gemm_q4_k_x16::<T, C>((g0, g0.add(group)), a, nb);
            for t in 0..T {
                out[2 * p][t].copy_from_slice(&both[t][..8]);
                out[2 * p + 1][t].copy_from_slice(&both[t][8..]);
            }
        }
        2 * pairs
    }

    /// [`gemm_q4_k_x8`] for two groups of 8 rows at once (`out[t]`: the first group's
    /// rows, then the second's): each step's two 32-byte chunks go into one 512-bit
    /// register, so every `vpdpbusd` and activation broadcast serves 16 rows. Per row the
    /// same integer sums and float operations in the same order as [`gemm_q4_k_x8`], so
    /// the results are bit for bit its results (with `C`, its chunked order).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn gemm_q4_k_x16<const T: usize, const C: bool>(
        (p0, p1): (*const u8, *const u8),
        a: [Q8KRow<'_>; T],
        nb: usize,
    ) -> [[f32; 16]; T] {
        let pf = crate::kernels::prefetching(T);
        use crate::kquants::Q4K_X8_BYTES;
        let m4 = _mm512_set1_epi8(0x0f);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut acc_min = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let (g0, g1) = (p0.add(b * Q4K_X8_BYTES), p1.add(b * Q4K_X8_BYTES));
            if pf {
                prefetch_ahead(g0, Q4K_X8_BYTES);
                prefetch_ahead(g1, Q4K_X8_BYTES);
            }
            let ys: [*const i8; T] = std::array::from_fn(|t| a[t].qs.as_ptr().add(b * QK_K));
            let bcast = |y: *const i8| _mm512_set1_epi32(y.cast::<i32>().read_unaligned());
            let both = |off: usize| {
                let lo = _mm256_loadu_si256(g0.add(off).cast());
                let hi = _mm256_loadu_si256(g1.add(off).cast());
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            };
            let halves = |off: usize| {
                let (lo, hi) = (g0.add(off).cast(), g1.add(off).cast());
                _mm256_set_m128i(_mm_loadu_si128(hi), _mm_loadu_si128(lo))
            };
            let dv = _mm512_cvtph_ps(halves(1152));
            let dminv = _mm512_cvtph_ps(halves(1168));
            let mins: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_cvtepu8_epi16(halves(1088 + 16 * k)));
            let mut isum = [_mm512_setzero_si512(); T];
            for j in 0..8 {
                let mut sub = [_mm512_setzero_si512(); T];
                for q in 0..4 {
                    let v = both((4 * j + q) * 32);
                    let lo = _mm512_and_si512(v, m4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), m4);
                    for t in 0..T {
                        let y = ys[t].add(32 * j + 4 * q);
                        let s = _mm512_dpbusd_epi32(sub[t], lo, bcast(y));
                        sub[t] = _mm512_dpbusd_epi32(s, hi, bcast(y.add(16)));
                    }
                }
                let sc_at = |g: *const u8| g.add(1024 + 8 * j).cast::<i64>().read_unaligned();
                let sc = _mm512_cvtepu8_epi32(_mm_set_epi64x(sc_at(g1), sc_at(g0)));
                for t in 0..T {
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(sub[t], sc));
                }
                if C && j % 2 == 1 {
                    // ggml's gemm order: the floats take each 64 values' sums.
                    for t in 0..T {
                        let yd = _mm512_set1_ps(*a[t].d.get_unchecked(b));
                        let yv = _mm512_set1_epi32(q4k_bsum_pairs(&a[t], b, j / 2));
                        let msum = _mm512_madd_epi16(mins[j / 2], yv);
                        let di = _mm512_cvtepi32_ps(isum[t]);
                        acc[t] = _mm512_fmadd_ps(di, _mm512_mul_ps(dv, yd), acc[t]);
                        let dm = _mm512_cvtepi32_ps(msum);
                        acc_min[t] = _mm512_fmadd_ps(dm, _mm512_mul_ps(dminv, yd), acc_min[t]);
                        isum[t] = _mm512_setzero_si512();
                    }
                }
            }
            if C {
                continue;
            }
            for t in 0..T {
                let mut msum = _mm512_setzero_si512();
                for (k, mv) in mins.iter().enumerate() {
                    let yv = _mm512_set1_epi32(q4k_bsum_pairs(&a[t], b, k));
                    msum = _mm512_add_epi32(msum, _mm512_madd_epi16(*mv, yv));
                }
                let yd = _mm512_set1_ps(*a[t].d.get_unchecked(b));
                acc[t] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dv, yd), acc[t]);
                acc_min[t] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dminv, yd), acc_min[t]);
            }
        }
        let mut out = [[0f32; 16]; T];
        for t in 0..T {
            _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_sub_ps(acc[t], acc_min[t]));
        }
        out
    }

    /// `acc` plus unsigned bytes `u` times signed bytes `s`, summed in fours (`vpdpbusd`).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_u8_i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }

    /// Bias of [`dot_i8_i8`]'s sums: each weight byte counts 128 too much, which the
    /// caller subtracts as `128·Σs`.
    const I8_BIAS: i32 = 128;

    /// `acc` plus signed bytes `w` (each read 128 higher: `w ^ 0x80` as unsigned) times
    /// signed bytes `s`, summed in fours into i32 lanes (`vpdpbusd`, no saturation).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_i8_i8(acc: __m256i, w: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, _mm256_xor_si256(w, _mm256_set1_epi8(-128)), s)
    }

    /// [`dot_u8_i8`] of two pairs.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot2_u8_i8(
        acc: __m256i,
        (u0, s0): (__m256i, __m256i),
        (u1, s1): (__m256i, __m256i),
    ) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, u0, s0), u1, s1)
    }

    /// One step of a Q4_K sub-block's sums for 8 interleaved rows: the low and high
    /// nibbles times the broadcast activation bytes added straight into one i32 per row
    /// (`vpdpbusd`, two instructions where AVX2 needs four).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn q4k_sub_add(
        acc: __m256i,
        (lo, hi): (__m256i, __m256i),
        (y0, y1): (__m256i, __m256i),
    ) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(acc, lo, y0), hi, y1)
    }

    /// A sub-block's sums ([`q4k_sub_add`], one i32 per row) times the 8 rows' scale bytes
    /// at `sc`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn q4k_sub_scaled(sub: __m256i, sc: *const u8) -> __m256i {
        _mm256_mullo_epi32(sub, _mm256_cvtepu8_epi32(_mm_loadl_epi64(sc.cast())))
    }

    /// `a · b` for `n` (a multiple of 8) f32 at each pointer, 16 lanes at a time.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_f32_x8(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut s = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            s = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), s);
            i += 16;
        }
        let mut s8 = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps::<1>(s));
        if i < n {
            s8 = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), s8);
        }
        hsum(s8)
    }

    /// `acc = f16(f16(acc·ms) + w·v)` for `n` (a multiple of 8) f16 accumulators at `acc`
    /// and f32 values at `v`, 16 lanes at a time.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn fa_accumulate(acc: *mut u8, v: *const f32, n: usize, (ms, w): (f32, f32)) {
        const R: i32 = _MM_FROUND_TO_NEAREST_INT;
        let (wv, msv) = (_mm512_set1_ps(w), _mm512_set1_ps(ms));
        let mut i = 0;
        while i + 16 <= n {
            let mut a = _mm512_cvtph_ps(_mm256_loadu_si256(acc.add(2 * i).cast()));
            if ms != 1.0 {
                a = _mm512_cvtph_ps(_mm512_cvtps_ph::<R>(_mm512_mul_ps(a, msv)));
            }
            let r = _mm512_fmadd_ps(_mm512_loadu_ps(v.add(i)), wv, a);
            _mm256_storeu_si256(acc.add(2 * i).cast(), _mm512_cvtps_ph::<R>(r));
            i += 16;
        }
        if i < n {
            let (wv, msv) = (_mm256_set1_ps(w), _mm256_set1_ps(ms));
            let mut a = _mm256_cvtph_ps(_mm_loadu_si128(acc.add(2 * i).cast()));
            if ms != 1.0 {
                a = _mm256_cvtph_ps(_mm256_cvtps_ph::<R>(_mm256_mul_ps(a, msv)));
            }
            let r = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(i)), wv, a);
            _mm_storeu_si128(acc.add(2 * i).cast(), _mm256_cvtps_ph::<R>(r));
        }
    }

    /// [`fa_accumulate`] in f16 arithmetic, as ggml built with AVX512-FP16 computes it
    /// (`kernels::fa_step` with `F16Native`), 16 lanes at a time: `ms` and `w` rounded to
    /// f16; `f16(acc·ms)` (the product of two f16 values is exact in f32, so one rounding);
    /// then `acc + v·w` (`v·w` exact again) summed in f32 and rounded to odd (two-sum gives
    /// the error exactly; the f32 under the sum when the sum lies below it, then the lowest
    /// bit set when inexact), so that the conversion to f16 rounds the exact sum once.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    pub(crate) unsafe fn fa_accumulate_f16(
        acc: *mut u8,
        v: *const f32,
        n: usize,
        (ms, w): (f32, f32),
    ) {
        const R: i32 = _MM_FROUND_TO_NEAREST_INT;
        let round16 = |x: f32| half::f16::from_f32(x).to_f32();
        let (wv, msv) = (_mm512_set1_ps(round16(w)), _mm512_set1_ps(round16(ms)));
        let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_epi32(1));
        let mut i = 0;
        while i + 16 <= n {
            let mut a = _mm512_cvtph_ps(_mm256_loadu_si256(acc.add(2 * i).cast()));
            if ms != 1.0 {
                a = _mm512_cvtph_ps(_mm512_cvtps_ph::<R>(_mm512_mul_ps(a, msv)));
            }
            let p = _mm512_mul_ps(_mm512_loadu_ps(v.add(i)), wv);
            let r = _mm512_add_ps(a, p);
            let bb = _mm512_sub_ps(r, a);
            let err = _mm512_add_ps(_mm512_sub_ps(a, _mm512_sub_ps(r, bb)), _mm512_sub_ps(p, bb));
            let inexact = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(err, zero);
            let bits = _mm512_castps_si512(r);
            // -1 where the error's sign differs from the sum's (the exact sum lies below).
            let down = _mm512_srai_epi32::<31>(_mm512_xor_si512(_mm512_castps_si512(err), bits));
            let bits = _mm512_mask_add_epi32(bits, inexact, bits, down);
            let bits = _mm512_mask_or_epi32(bits, inexact, bits, one);
            let out = _mm512_cvtps_ph::<R>(_mm512_castsi512_ps(bits));
            _mm256_storeu_si256(acc.add(2 * i).cast(), out);
            i += 16;
        }
        super::f16_accumulate_tail(acc, v, i, n, (ms, w));
    }

    /// Whether the CPU has AVX512-FP16's f16 arithmetic (Sapphire Rapids and later).
    pub(crate) fn has_f16_arithmetic() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512fp16"))
    }

    /// [`fa_accumulate_f16`] with the `n` values given as f16, in f16 arithmetic as
    /// llama.cpp built for such a CPU runs it (`vmulph` by the rounded `ms` unless it is
    /// 1, then `vfmadd231ph` by the rounded `w`: each result rounded once from the exact
    /// value, bit for bit what [`fa_accumulate_f16`] computes in f32 steps, at a tenth of
    /// its instructions). The instructions are written as `asm!` because Rust's
    /// AVX512-FP16 intrinsics are not stable; callers check [`has_f16_arithmetic`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    pub(crate) unsafe fn fa_accumulate_f16_values(
        acc: *mut u8,
        v: *const u8,
        n: usize,
        (ms, w): (f32, f32),
    ) {
        use std::arch::asm;
        let bits = |x: f32| half::f16::from_f32(x).to_bits() as i16;
        let (wv, msv) = (_mm512_set1_epi16(bits(w)), _mm512_set1_epi16(bits(ms)));
        let scale = ms != 1.0;
        let mut i = 0;
        while i + 32 <= n {
            let mut a = _mm512_loadu_si512(acc.add(2 * i).cast());
            let x = _mm512_loadu_si512(v.add(2 * i).cast());
            // SAFETY (both): register-only AVX512-FP16 arithmetic, which the caller
            // checked the CPU has.
            if scale {
                asm!("vmulph {a}, {a}, {m}", a = inout(zmm_reg) a, m = in(zmm_reg) msv,
                     options(pure, nomem, nostack));
            }
            asm!("vfmadd231ph {a}, {x}, {w}", a = inout(zmm_reg) a, x = in(zmm_reg) x,
                 w = in(zmm_reg) wv, options(pure, nomem, nostack));
            _mm512_storeu_si512(acc.add(2 * i).cast(), a);
            i += 32;
        }
        let (wv, msv) = (_mm512_castsi512_si128(wv), _mm512_castsi512_si128(msv));
        while i + 8 <= n {
            let mut a = _mm_loadu_si128(acc.add(2 * i).cast());
            let x = _mm_loadu_si128(v.add(2 * i).cast());
            // SAFETY: as above.
            if scale {
                asm!("vmulph {a}, {a}, {m}", a = inout(xmm_reg) a, m = in(xmm_reg) msv,
                     options(pure, nomem, nostack));
            }
            asm!("vfmadd231ph {a}, {x}, {w}", a = inout(xmm_reg) a, x = in(xmm_reg) x,
                 w = in(xmm_reg) wv, options(pure, nomem, nostack));
            _mm_storeu_si128(acc.add(2 * i).cast(), a);
            i += 8;
        }
        while i < n {
            let x = half::f16::from_bits(v.add(2 * i).cast::<u16>().read_unaligned()).to_f32();
            let at = acc.add(2 * i).cast::<u16>();
            let old = half::f16::from_bits(at.read_unaligned());
            let r = crate::kernels::fa_step(old, x, (ms, w), crate::kernels::FaRounding::F16Native);
            at.write_unaligned(r.to_bits());
            i += 1;
        }
    }

    /// `k · q` for `n` f32 at each pointer in `ggml_vec_dot_f16`'s order on AVX-512: four
    /// 16-lane accumulators over steps of 64, added as `(a0 + a2) + (a1 + a3)`, then
    /// across lanes by halves (`_mm512_reduce_add_ps` as GCC expands it); the remainder
    /// added in f64.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    unsafe fn dot_ggml_f16(k: *const f32, q: *const f32, n: usize) -> f32 {
        let np = n & !63;
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < np {
            for (j, a) in acc.iter_mut().enumerate() {
                let at = i + 16 * j;
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(k.add(at)), _mm512_loadu_ps(q.add(at)), *a);
            }
            i += 64;
        }
        let x = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
        let mut sum = f64::from(hsum(_mm256_add_ps(_mm512_castps512_ps256(x), hi)));
        while i < n {
            sum += f64::from(*k.add(i) * *q.add(i));
            i += 1;
        }
        sum as f32
    }
}
