//! Causal attention of new query rows against a host-side KV cache (decode and chunked
//! prefill). burn's attention wants contiguous `[b, heads, seq, d]` keys with one key head per
//! query head; feeding it a growing cache means copying (and repeating) the whole cache every
//! layer of every token, which dominated decode time. Here keys stay where they were written.

use super::dense_f32::gemm_serial;
use super::fast_exp::exp_f32;
use super::simd::dot_f32;

/// Shapes of one cached attention call.
#[derive(Debug, Clone, Copy)]
pub struct CachedAttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// New query rows (their keys are the last `queries` cached positions).
    pub queries: usize,
    /// Positions in the cache including the new ones.
    pub len: usize,
    /// Allocated positions per head in the cache layout `[kv_heads, capacity, head_dim]`.
    pub capacity: usize,
}

/// Plain definition in f64: query row i (position `len − queries + i`) attends to keys
/// `0..=position` of its KV head (`head / (heads / kv_heads)`), scale `1/√d`.
/// `q` is `[heads, queries, d]`; returns `[queries, heads, d]`.
pub fn attention_cached_ref(q: &[f32], k: &[f32], v: &[f32], s: CachedAttnShape) -> Vec<f32> {
    let d = s.head_dim;
    let rep = s.heads / s.kv_heads;
    let mut out = vec![0.0f32; s.queries * s.heads * d];
    for h in 0..s.heads {
        let kvh = h / rep;
        for i in 0..s.queries {
            let pos = s.len - s.queries + i;
            let qrow = &q[(h * s.queries + i) * d..][..d];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    let krow = &k[(kvh * s.capacity + j) * d..][..d];
                    qrow.iter()
                        .zip(krow)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = scores.iter().map(|x| (x - m).exp()).sum();
            for (j, sc) in scores.iter().enumerate() {
                let p = (sc - m).exp() / z;
                let vrow = &v[(kvh * s.capacity + j) * d..][..d];
                for c in 0..d {
                    out[(i * s.heads + h) * d + c] += (p * vrow[c] as f64) as f32;
                }
            }
        }
    }
    out
}

/// Query rows from which [`attention_cached`] computes scores and outputs as matrix products
/// (a prompt) instead of one dot product per key (decode, speculative verification).
pub const BLOCKED_MIN_QUERIES: usize = 16;

/// Query rows per task of the blocked path: each task scores its rows against the keys up
/// to its last row only, so smaller blocks skip more of the causal mask (64 rows of a
/// 512-token prompt: 56% of the full score matrix, against 75% with blocks of 256), and
/// bound the score matrix (`rows × len` f32) for long prompts.
const QUERY_BLOCK: usize = 64;

/// Fast version of [`attention_cached_ref`]: one of two f32 paths by the number of queries.
pub fn attention_cached(q: &[f32], k: &[f32], v: &[f32], s: CachedAttnShape) -> Vec<f32> {
    if s.queries >= BLOCKED_MIN_QUERIES {
        attention_blocked(q, k, v, s)
    } else {
        attention_rows(q, k, v, s)
    }
}

/// Prompt attention as matrix products: one team task per (query head, block of query
/// rows) computes `scores = Q·Kᵀ` against the cached keys in place (a single-threaded gemm
/// with strides, no copy of the keys or values), a causal softmax per row, then `P·V`
/// written straight into the output rows. The per-key loop spent a quarter of a 512-token
/// prefill here; then transposing V and looping over KV heads with each product split over
/// the threads left a core waiting between the small products.
fn attention_blocked(q: &[f32], k: &[f32], v: &[f32], s: CachedAttnShape) -> Vec<f32> {
    let (d, n) = (s.head_dim, s.queries);
    let rep = s.heads / s.kv_heads;
    assert_eq!(q.len(), s.heads * n * d, "query shape");
    assert!(
        k.len() >= s.kv_heads * s.capacity * d
            && v.len() >= s.kv_heads * s.capacity * d
            && s.len <= s.capacity
            && n <= s.len,
        "cache shape"
    );
    let scale = 1.0 / (d as f32).sqrt();
    let prefix = s.len - n;
    let mut out = vec![0.0f32; n * s.heads * d];
    let blocks = n.div_ceil(QUERY_BLOCK);
    let dst = super::team::SendPtr(out.as_mut_ptr());
    let task = |t: usize| {
        // The whole wrapper, not its raw field, into the closure.
        let out_ptr = dst;
        // The blocks with the most keys first, so the last tasks claimed are short ones.
        let (h, b) = (t / blocks, blocks - 1 - t % blocks);
        let i0 = b * QUERY_BLOCK;
        let rows = QUERY_BLOCK.min(n - i0);
        // Keys past the block's last query are masked for every row: leave them out.
        let len = prefix + i0 + rows;
        let kvh = h / rep;
        let keys = &k[kvh * s.capacity * d..][..len * d];
        let vals = &v[kvh * s.capacity * d..][..len * d];
        let qrows = &q[(h * n + i0) * d..][..rows * d];
        let mut p = vec![0.0f32; rows * len];
        // SAFETY: p is [rows, len]; qrows is [rows, d]; Kᵀ is read from keys [len, d]
        // (element (i, j) at j·d + i). In bounds by the slices above.
        unsafe {
            gemm_serial(
                (rows, len, d),
                (p.as_mut_ptr(), len),
                (qrows.as_ptr(), d),
                (keys.as_ptr(), 1, d),
            )
        };
        for (r, row) in p.chunks_exact_mut(len).enumerate() {
            let pos = prefix + i0 + r;
            softmax_scaled(&mut row[..=pos], scale);
            row[pos + 1..].fill(0.0);
        }
        // SAFETY: output rows i0..i0 + rows of head h: [rows, d] at (i0 · heads + h) · d
        // with row stride heads · d, written by this task only; `out` outlives the loop.
        // vals is [len, d] row-major.
        unsafe {
            gemm_serial(
                (rows, d, len),
                (out_ptr.0.add((i0 * s.heads + h) * d), s.heads * d),
                (p.as_ptr(), len),
                (vals.as_ptr(), d, 1),
            )
        };
    };
    super::team::global().run(s.heads * blocks, &task);
    out
}

/// Lanes of the partial maxima and sums in [`softmax_scaled`].
const SOFTMAX_LANES: usize = 16;

/// `row ← softmax(scale · row)`, with the maximum and the normalizing sum kept as 16
/// partial values (one per SIMD lane) instead of one serial chain: a prompt's causal
/// softmax is ~35 M exponentials, and the serial `max`/`+` chains ran at one element per
/// add latency (a fifth of a 512-token prefill). Compiled for AVX-512 where the CPU has it.
pub fn softmax_scaled(row: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if super::packed_vnni::available() {
        // SAFETY: AVX-512 F checked at run time.
        unsafe { softmax_avx512(row, scale) };
        return;
    }
    softmax_lanes(row, scale);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(row: &mut [f32], scale: f32) {
    softmax_lanes(row, scale);
}

/// The body of [`softmax_scaled`], inlined into each instruction-set variant.
#[inline(always)]
fn softmax_lanes(row: &mut [f32], scale: f32) {
    let mut mx = [f32::NEG_INFINITY; SOFTMAX_LANES];
    let mut chunks = row.chunks_exact_mut(SOFTMAX_LANES);
    for c in &mut chunks {
        for (m, x) in mx.iter_mut().zip(c.iter_mut()) {
            *x *= scale;
            *m = m.max(*x);
        }
    }
    for x in chunks.into_remainder() {
        *x *= scale;
        mx[0] = mx[0].max(*x);
    }
    let m = mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let mut sums = [0.0f32; SOFTMAX_LANES];
    let mut chunks = row.chunks_exact_mut(SOFTMAX_LANES);
    for c in &mut chunks {
        for (z, x) in sums.iter_mut().zip(c.iter_mut()) {
            *x = exp_f32(*x - m);
            *z += *x;
        }
    }
    for x in chunks.into_remainder() {
        *x = exp_f32(*x - m);
        sums[0] += *x;
    }
    let inv = 1.0 / sums.iter().sum::<f32>();
    row.iter_mut().for_each(|x| *x *= inv);
}

/// Decode-sized attention: parallel over (head, query) rows, f32 dot products, softmax with
/// an f32 running max.
fn attention_rows(q: &[f32], k: &[f32], v: &[f32], s: CachedAttnShape) -> Vec<f32> {
    let d = s.head_dim;
    let rep = s.heads / s.kv_heads;
    assert_eq!(q.len(), s.heads * s.queries * d, "query shape");
    assert!(
        k.len() >= s.kv_heads * s.capacity * d && s.len <= s.capacity,
        "cache shape"
    );
    let scale = 1.0 / (d as f32).sqrt();
    // Rows in output order [queries, heads]: row r = i * heads + h.
    let mut out = vec![0.0f32; s.queries * s.heads * d];
    // A few heads × a few rows, each a short loop: the team runs them without a wake-up.
    // (On rayon's pool, a verification pass's attention left the team's spinning worker
    // contending with rayon's threads for the two cores: 11% of a 2-row pass.)
    super::team::for_each_chunk_mut(&mut out, d, |r, orow| {
        let (i, h) = (r / s.heads, r % s.heads);
        let kvh = h / rep;
        let pos = s.len - s.queries + i;
        let qrow = &q[(h * s.queries + i) * d..][..d];
        let head = kvh * s.capacity * d..(kvh * s.capacity + s.len) * d;
        attend_row(qrow, &k[head.clone()], &v[head], pos + 1, &[], scale, orow);
    });
    out
}

/// One query row's attention over keys `0..prefix`, then the keys at `extra`, of one KV head
/// (`k`, `v`: its `[positions, d]` rows): scores in key order, their softmax, and the values
/// weighted and summed in key order into `orow`. A decode step, a chain being verified and
/// a tree node all go through here, so a row gets the same bits in each.
fn attend_row(
    qrow: &[f32],
    k: &[f32],
    v: &[f32],
    prefix: usize,
    extra: &[usize],
    scale: f32,
    orow: &mut [f32],
) {
    let d = qrow.len();
    let n = prefix + extra.len();
    let mut scores = vec![0.0f32; n];
    let fast = super::gemv_f32_avx2::available() && d.is_multiple_of(8);
    if fast {
        // Keys are weight rows to the few-row kernel: each score one FMA chain, 4 keys a tile.
        super::gemv_f32_avx2::gemv_band(qrow, 1, d, &k[..prefix * d], &mut scores[..prefix]);
        for (sc, &j) in scores[prefix..].iter_mut().zip(extra) {
            super::gemv_f32_avx2::gemv_band(
                qrow,
                1,
                d,
                &k[j * d..(j + 1) * d],
                std::slice::from_mut(sc),
            );
        }
    } else {
        for (sc, j) in scores
            .iter_mut()
            .zip((0..prefix).chain(extra.iter().copied()))
        {
            *sc = dot_f32(qrow, &k[j * d..(j + 1) * d]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for sc in scores.iter_mut() {
        *sc *= scale;
        m = m.max(*sc);
    }
    scores.iter_mut().for_each(|sc| *sc = exp_f32(*sc - m));
    let inv = 1.0 / scores.iter().sum::<f32>();
    scores.iter_mut().for_each(|p| *p *= inv);
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: AVX2 + FMA present; every key index is below `n` rows of `v` (callers).
        unsafe { weighted_rows_avx2(&scores, v, prefix, extra, orow) };
        return;
    }
    for (&p, j) in scores.iter().zip((0..prefix).chain(extra.iter().copied())) {
        for (o, &x) in orow.iter_mut().zip(&v[j * d..(j + 1) * d]) {
            *o += p * x;
        }
    }
}

/// `orow += Σ_j p_j · v[key_j]` over keys `0..prefix` then `extra`, in that order, one
/// fused multiply-add per element and key, the output held in registers 64 columns at a
/// time (the scalar loop loaded and stored the row for every key).
///
/// # Safety
/// AVX2 + FMA; `orow.len()` is a multiple of 8 and every key's row lies inside `v`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_rows_avx2(
    p: &[f32],
    v: &[f32],
    prefix: usize,
    extra: &[usize],
    orow: &mut [f32],
) {
    use std::arch::x86_64::*;
    const BLOCK: usize = 8;
    let d = orow.len();
    for c0 in (0..d).step_by(8 * BLOCK) {
        let vecs = ((d - c0) / 8).min(BLOCK);
        let mut acc = [_mm256_setzero_ps(); BLOCK];
        // SAFETY: columns c0..c0 + 8 * vecs lie inside every row (d % 8 == 0).
        unsafe {
            for (b, a) in acc.iter_mut().enumerate().take(vecs) {
                *a = _mm256_loadu_ps(orow.as_ptr().add(c0 + 8 * b));
            }
            for (&w, j) in p.iter().zip((0..prefix).chain(extra.iter().copied())) {
                let wv = _mm256_set1_ps(w);
                let row = v.as_ptr().add(j * d + c0);
                for (b, a) in acc.iter_mut().enumerate().take(vecs) {
                    *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(row.add(8 * b)), *a);
                }
            }
            for (b, a) in acc.iter().enumerate().take(vecs) {
                _mm256_storeu_ps(orow.as_mut_ptr().add(c0 + 8 * b), *a);
            }
        }
    }
}

/// Tree attention (Medusa verification): the last `s.queries` cache rows are tree nodes;
/// node i attends to every earlier position and to node j when `mask[i * queries + j]`
/// (itself and its ancestors). With a lower-triangular mask this is [`attention_cached`].
pub fn attention_tree(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: CachedAttnShape,
    mask: &[bool],
) -> Vec<f32> {
    let (d, n) = (s.head_dim, s.queries);
    let rep = s.heads / s.kv_heads;
    assert_eq!(q.len(), s.heads * n * d, "query shape");
    assert_eq!(mask.len(), n * n, "mask shape");
    let prefix = s.len - n;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; n * s.heads * d];
    // On the team, as `attention_rows` (a tree is a verification pass too).
    super::team::for_each_chunk_mut(&mut out, d, |r, orow| {
        let (i, h) = (r / s.heads, r % s.heads);
        let kvh = h / rep;
        let qrow = &q[(h * n + i) * d..][..d];
        let head = kvh * s.capacity * d..(kvh * s.capacity + s.len) * d;
        let nodes: Vec<usize> = (0..n)
            .filter(|&j| mask[i * n + j])
            .map(|j| prefix + j)
            .collect();
        attend_row(
            qrow,
            &k[head.clone()],
            &v[head],
            prefix,
            &nodes,
            scale,
            orow,
        );
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_softmax_matches_the_f64_softmax() {
        for len in [1, 15, 16, 17, 100, 513] {
            let x: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let mut got = x.clone();
            softmax_scaled(&mut got, 0.125);
            let m = x
                .iter()
                .fold(f64::NEG_INFINITY, |a, &b| a.max(f64::from(b) * 0.125));
            let z: f64 = x.iter().map(|&v| (f64::from(v) * 0.125 - m).exp()).sum();
            for (g, &v) in got.iter().zip(&x) {
                let want = (f64::from(v) * 0.125 - m).exp() / z;
                assert!(
                    (f64::from(*g) - want).abs() <= 1e-6 * want.max(1e-3),
                    "{len}: {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn tree_attention_with_a_causal_mask_is_cached_attention() {
        let (heads, kv_heads, n, len, d, capacity) = (4, 2, 5, 12, 8, 16);
        let s = CachedAttnShape {
            heads,
            kv_heads,
            head_dim: d,
            queries: n,
            len,
            capacity,
        };
        let gen = |c: usize, m: usize| -> Vec<f32> {
            (0..c)
                .map(|i| ((i * m % 53) as f32 - 26.0) / 13.0)
                .collect()
        };
        let (q, k, v) = (
            gen(heads * n * d, 7),
            gen(kv_heads * capacity * d, 11),
            gen(kv_heads * capacity * d, 5),
        );
        let causal: Vec<bool> = (0..n * n).map(|x| x % n <= x / n).collect();
        let a = attention_tree(&q, &k, &v, s, &causal);
        let b = attention_cached(&q, &k, &v, s);
        // Bit for bit: tree nodes and chain rows share one per-row computation.
        assert_eq!(a, b);
        // A node that sees only itself and the prefix differs from the causal answer.
        let diag: Vec<bool> = (0..n * n).map(|x| x % n == x / n).collect();
        let c = attention_tree(&q, &k, &v, s, &diag);
        assert!(c[(n - 1) * heads * d..]
            .iter()
            .zip(&b[(n - 1) * heads * d..])
            .any(|(x, y)| (x - y).abs() > 1e-3));
        assert_eq!(
            c[..heads * d],
            b[..heads * d],
            "node 0 sees the same keys either way"
        );
    }

    /// Deterministic values in about ±1.8, varied by `m`.
    fn gen(n: usize, m: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * m % 61) as f32 - 30.0) / 17.0)
            .collect()
    }

    /// f32 scores and softmax against the f64 definition.
    const ATTN_ABS_TOL: f32 = 1e-5;

    #[test]
    fn cached_attention_matches_reference() {
        // Queries ≥ BLOCKED_MIN_QUERIES take the blocked path; 300 queries span five blocks.
        for (heads, kv_heads, queries, len) in [
            (4, 2, 1, 9),
            (9, 3, 5, 5),
            (2, 2, 3, 20),
            (6, 1, 1, 1),
            (4, 2, 16, 16),
            (9, 3, 20, 23),
            (2, 1, 300, 310),
        ] {
            for d in [16, 64, 72, 12] {
                let capacity = 320;
                let s = CachedAttnShape {
                    heads,
                    kv_heads,
                    head_dim: d,
                    queries,
                    len,
                    capacity,
                };
                let q = gen(heads * queries * d, 7);
                let k = gen(kv_heads * capacity * d, 11);
                let v = gen(kv_heads * capacity * d, 13);
                let want = attention_cached_ref(&q, &k, &v, s);
                let got = attention_cached(&q, &k, &v, s);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(err < ATTN_ABS_TOL, "{s:?}: {err}");
            }
        }
    }

    /// A query row verified among others gets the bits it gets decoded alone (the cache
    /// holding the same keys up to its position).
    #[test]
    fn a_row_gets_the_same_bits_alone_and_among_others() {
        let (heads, kv_heads, d, capacity) = (9, 3, 64, 40);
        let (k, v) = (
            gen(kv_heads * capacity * d, 3),
            gen(kv_heads * capacity * d, 5),
        );
        let (queries, len) = (5, 30);
        let q = gen(heads * queries * d, 7);
        let shape = |queries, len| CachedAttnShape {
            heads,
            kv_heads,
            head_dim: d,
            queries,
            len,
            capacity,
        };
        let all = attention_cached(&q, &k, &v, shape(queries, len));
        for i in 0..queries {
            // Row i alone: its query, the cache up to its position.
            let qi: Vec<f32> = (0..heads)
                .flat_map(|h| q[(h * queries + i) * d..][..d].to_vec())
                .collect();
            let one = attention_cached(&qi, &k, &v, shape(1, len - queries + i + 1));
            assert_eq!(one, all[i * heads * d..][..heads * d], "row {i}");
        }
    }
}
