// Causal self-attention on tensor cores, for bf16/f16 storage and heads of 16, 32 or 64
// channels (every GPT-2 size has 64): the same results as attention.cu's kernels, within the
// rounding of the 16-bit operands below. FlashAttention-2's scheme: the forward keeps each
// block's query rows, their running max and sum and their output in registers, and streams
// key/value tiles through shared memory; no T x T matrix, no atomics, so a run is bitwise
// repeatable.
//
// Products are `mma.sync.aligned.m16n8k16` (sm_80 and newer, bf16 and f16; two m16n8k8 on
// sm_75, f16 only): a warp multiplies A(16x16) by B(16x8) into an f32 accumulator. Fragment
// layout (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), for lane
// 4g + t, each u32 two 16-bit values with the lower column (A) or row (B) in its low half:
//   A: a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..], a[3] = A[g+8][2t+8..]
//   B: b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   C: c[0], c[1] = C[g][2t], C[g][2t+1];  c[2], c[3] = C[g+8][2t], C[g+8][2t+1]
// Two C tiles side by side (keys 0-7 and 8-15) are, rounded to 16 bits, exactly the A fragment
// of the next product: probabilities go from the score product into the value product without
// leaving registers.
//
// What is rounded to 16 bits beyond the CPU backend's bf16/f16 path: the probabilities before
// p.v, and in the backward a_j (dA_j - rowdot) before it multiplies k and q. Everything else
// (scores, max, sums, softmax, accumulators) is f32, as on the CPU, with e^x by one
// `ex2.approx` (exp_fast).
//
// Blocks: 4 warps, 16 query rows (or keys) each. Shared tiles: 64 rows of HS channels,
// row-major, rows padded by 8 values so that the 8 rows an ldmatrix phase reads fall in 32
// different banks. B fragments come from them by ldmatrix, transposed where a product runs
// along the tile's rows (p.v, ds.k, ...), so no tile is kept twice. They are double-buffered:
// the next tile is copied by cp.async (16 or 4 bytes a copy) while this one is used. Copies and
// ldmatrix's 16-byte rows need aligned addresses, so the tiles are declared __align__(16): an
// array of 16-bit structs is otherwise only 2-byte aligned, and a GPU faults on a misaligned
// access.

#define TC_WARP_ROWS 16
#define TC_ROWS 64 // query rows (forward, backward q) or keys (backward kv) per block
#define TC_TILE 64 // keys (or queries) per shared tile
#define TC_PAD 8

// lo and hi rounded into one word (lo in the low half).
template <typename T> __device__ __forceinline__ u32 pack(float lo, float hi) {
    return (u32)store<T>(lo).bits | ((u32)store<T>(hi).bits << 16);
}

// d(16x8) += a(16x16) b(16x8), fragments as above.
template <typename T> __device__ __forceinline__ void mma(float* d, const u32* a, const u32* b);
template <> __device__ __forceinline__ void mma<bf16_t>(float* d, const u32* a, const u32* b) {
#if defined(GPTRAIN_EMU)
    emu::mma16816(d, a, b, true);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    asm volatile("trap;"); // bf16 needs sm_80: the backend never launches this kernel on an older card
#endif
}
template <> __device__ __forceinline__ void mma<f16_t>(float* d, const u32* a, const u32* b) {
#if defined(GPTRAIN_EMU)
    emu::mma16816(d, a, b, false);
#elif __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif __CUDA_ARCH__ >= 750 // the k = 0..7 half, then k = 8..15 (m16n8k8 takes a[0..1] and b[0] of the same layout)
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b[0]));
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[2]), "r"(a[3]), "r"(b[1]));
#else
    asm volatile("trap;"); // Volta has no m16n8k8: the backend never launches this kernel there
#endif
}

// Four 8x8 matrices of 16-bit values from shared memory, `ldmatrix.sync.aligned.m8n8.x4`
// (sm_75 and newer): lane l gives the address p of row l % 8 of matrix l / 8 (eight values,
// 16-byte aligned); lane 4g + t receives in r[m] matrix m's [g][2t..2t+1], or with TRANS its
// [2t][g] and [2t+1][g] (PTX ISA, "Warp-level matrix load instruction: ldmatrix"). So a
// row-major tile gives B fragments either way round: untransposed where B[k][n] = s[n][k], and
// transposed where B[k][n] = s[k][n], with no transposed copy of the tile.
template <bool TRANS, typename T> __device__ __forceinline__ void ldmatrix_x4(u32* r, const T* p) {
#if defined(GPTRAIN_EMU)
    emu::ldmatrix(r, p, 4, TRANS);
#elif __CUDA_ARCH__ >= 750
    u32 at = (u32)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(at)
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(at)
                     : "memory");
#else
    asm volatile("trap;"); // Volta has no ldmatrix: the backend never launches these kernels there
#endif
}

// acc[n] (+)= a . B over NT 8-column C fragments (NT even) and KC 16-deep chunks, from a
// row-major shared tile s (row stride ld): B[k][n] = s[n][k] (the scores' q.k^T and the like),
// or with TRANS B[k][n] = s[k][n] (p.v and the gradients' products over a tile's rows). From
// zero when FRESH, else accumulating. One ldmatrix.x4 gives the B fragments of columns n and
// n + 1 at one chunk: matrices 0 and 1 are column block n at k 0..7 and 8..15, 2 and 3 block n + 1.
// Only 16-wide column pairs (FRESH) or chunks (accumulating) in [from, to) are computed: the
// others of a causal tile are all masked (their scores are left 0 for the mask to overwrite;
// their probabilities are 0, so leaving them out adds exactly nothing). from and to are the
// same for the whole warp.
template <typename T, int NT, int KC, bool FRESH, bool TRANS>
__device__ __forceinline__ void mma_cols(float (*acc)[4], u32 (*a)[4], const T* s, u32 ld, u32 lane, u32 from, u32 to) {
    const u32 row = lane % 8, khalf = (lane / 8) % 2, nnext = lane / 16;
#pragma unroll
    for (int n = 0; n < NT; n += 2) {
        if (FRESH) {
#pragma unroll
            for (int i = 0; i < 4; i++) acc[n][i] = acc[n + 1][i] = 0.0f;
            if (n / 2 < (int)from || n / 2 >= (int)to) continue;
        }
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            if (!FRESH && (kc < (int)from || kc >= (int)to)) continue;
            u32 k = kc * 16 + khalf * 8, c = (n + nnext) * 8;
            u32 b[4];
            ldmatrix_x4<TRANS>(b, TRANS ? s + (k + row) * ld + c : s + (c + row) * ld + k);
            mma<T>(acc[n], a[kc], b);
            mma<T>(acc[n + 1], a[kc], b + 2);
        }
    }
}
// acc(16 x 64) = a(16 x HS) . s^T, s a row-major tile of 64 rows: the scores q.k^T and the
// like, for the tile's rows 16 from .. 16 to - 1 (the other scores 0).
template <typename T, int HS>
__device__ __forceinline__ void product_rows(float (*acc)[4], u32 (*a)[4], const T* s, u32 lane, u32 from, u32 to) {
    mma_cols<T, TC_TILE / 8, HS / 16, true, false>(acc, a, s, HS + TC_PAD, lane, from, to);
}
// acc(16 x HS) += a(16 x 64) . s, s a row-major tile of 64 rows: p.v and the gradients'
// products over the tile's rows 16 from .. 16 to - 1 (a's other columns must be 0).
template <typename T, int HS>
__device__ __forceinline__ void accumulate_cols(float (*acc)[4], u32 (*a)[4], const T* s, u32 lane, u32 from, u32 to) {
    mma_cols<T, HS / 8, TC_TILE / 16, false, true>(acc, a, s, HS + TC_PAD, lane, from, to);
}

// A fragments of 16 rows r0.. (HS channels) of a row-major matrix at x (row stride ld), rows
// at or past t zero.
template <typename T, int HS>
__device__ __forceinline__ void frag_a_rows(u32 (*a)[4], const T* x, u64 ld, u32 r0, u32 t, u32 g, u32 tq) {
#pragma unroll
    for (int kc = 0; kc < HS / 16; kc++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            u32 row = r0 + g + 8 * (i & 1), col = kc * 16 + 2 * tq + 8 * (i >> 1);
            a[kc][i] = row < t ? ld32(x + (u64)row * ld + col) : 0u;
        }
    }
}

// Copies BYTES (4 or 16; both addresses aligned to it) from global src to shared dst, or zeros
// when !valid (src is then not read). On sm_80 and newer without the registers and
// asynchronously (`cp.async`: it has landed only after a copy_wait that covers its group); on
// older cards at once, so the same code is correct there (the waits are then no-ops).
template <int BYTES> __device__ __forceinline__ void copy_async(void* dst, const void* src, bool valid) {
#if defined(GPTRAIN_EMU)
    emu::cp_async(dst, src, BYTES, valid ? BYTES : 0);
#elif __CUDA_ARCH__ >= 800
    // 16 bytes bypass L1 (.cg: the tile is read once from shared memory; .ca is the only form
    // for 4); the source as a global address
    u32 at = (u32)__cvta_generic_to_shared(dst);
    size_t from = __cvta_generic_to_global(src);
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(at), "l"(from), "r"(valid ? 16 : 0) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;" ::"r"(at), "l"(from), "n"(BYTES), "r"(valid ? BYTES : 0) : "memory");
#else
    if (BYTES == 16) *reinterpret_cast<uint4*>(dst) = valid ? *reinterpret_cast<const uint4*>(src) : make_uint4(0, 0, 0, 0);
    else *reinterpret_cast<u32*>(dst) = valid ? *reinterpret_cast<const u32*>(src) : 0u;
#endif
}
// Closes the group of copies issued since the last commit.
__device__ __forceinline__ void copy_commit() {
#if defined(GPTRAIN_EMU)
    emu::cp_commit();
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
// Waits until every committed group of this thread but the newest N has landed (other
// threads' copies: a __syncthreads after it).
template <int N> __device__ __forceinline__ void copy_wait() {
#if defined(GPTRAIN_EMU)
    emu::cp_wait(N);
#elif __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

// Starts copying rows j0..j0+63 (those before t; zeros past it) of HS channels from x (row
// stride ld) into s[row][channel]: 16 bytes a copy where x and its rows are 16-byte aligned
// (every GPT-2 shape: the check is the same for the whole block), else 4. A warp writes whole
// rows, consecutive bytes (no bank conflicts).
template <typename T, int HS>
__device__ __forceinline__ void load_tile(T (*s)[HS + TC_PAD], const T* x, u64 ld, u32 j0, u32 t) {
    if (aligned16(x) && ld * sizeof(T) % 16 == 0) {
        for (u32 e = threadIdx.x; e < TC_TILE * HS / 8; e += blockDim.x) {
            u32 jj = e / (HS / 8), i = (e % (HS / 8)) * 8, row = j0 + jj;
            copy_async<16>(&s[jj][i], row < t ? x + (u64)row * ld + i : x, row < t);
        }
    } else {
        for (u32 e = threadIdx.x; e < TC_TILE * HS / 2; e += blockDim.x) {
            u32 jj = e / (HS / 2), i = (e % (HS / 2)) * 2, row = j0 + jj;
            copy_async<4>(&s[jj][i], row < t ? x + (u64)row * ld + i : x, row < t);
        }
    }
}

// The double buffer: `issue(b, j)` starts the copies of the tiles at j into buffer b. Before the
// loop, the first tiles go into buffer 0 (tile_start); at the top of each iteration (tile_step,
// every thread of the block), the next tiles (`more`) start into the other buffer, which nobody
// reads any more, while the current ones are waited for; then every thread's copies of the
// current tiles have landed.
template <typename F> __device__ __forceinline__ void tile_start(u32 j, F issue) {
    issue(0, j);
    copy_commit();
}
template <typename F> __device__ __forceinline__ void tile_step(u32 cur, bool more, u32 next, F issue) {
    __syncthreads(); // nobody reads the other buffer (the previous tiles) any more
    if (more) {
        issue(cur ^ 1, next);
        copy_commit();
        copy_wait<1>(); // the current tiles' group has landed, the next one's may not have
    } else {
        copy_wait<0>();
    }
    __syncthreads(); // every thread's copies of the current tiles have landed
}

// Starts copying the softmax max and 1/sum (stats(B,NH,T,2)) and the row dot products (rowdot
// (B,NH,T)) of rows j0..j0+63 of task bh into ms, is, rs (zeros past t), with load_tile's copies
// (4 bytes each: stats' rows are 8 bytes apart).
__device__ __forceinline__ void load_stats(float* ms, float* is, float* rs, const float* stats, const float* rowdot, u64 bh, u32 t,
                                           u32 j0) {
    for (u32 i = threadIdx.x; i < TC_TILE; i += blockDim.x) {
        u64 row = bh * t + j0 + i;
        bool in = j0 + i < t;
        copy_async<4>(&ms[i], in ? stats + row * 2 : stats, in);
        copy_async<4>(&is[i], in ? stats + row * 2 + 1 : stats, in);
        copy_async<4>(&rs[i], in ? rowdot + row : rowdot, in);
    }
}

// e^x for the probabilities, the softmax's hot spot (a score per key per row): one `ex2.approx`
// (relative error ~2^-22, below the 16-bit rounding the probabilities then get) instead of
// expf's ten instructions. Forward and backward use this same function, so the probabilities
// the backward recomputes match the forward's sums. e^-inf = 0.
__device__ __forceinline__ float exp_fast(float x) {
    const float y = x * 1.44269504f; // log2(e)
#if defined(GPTRAIN_EMU)
    return std::exp2(y);
#else
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(y));
    return r;
#endif
}

// Adds x over the 4 lanes of a quad (lanes 4g..4g+3), the same order for every lane.
__device__ __forceinline__ float quad_sum(float x) {
    x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
    return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// out(B,T,C), stats(B,NH,T,2) (max, 1/sum) from qkv(B,T,3C). Grid (T/64, B*NH), 128 threads.
template <typename T, int HS>
__device__ void attn_tc_forward(T* out, float* stats, const T* qkv, u32 t, u32 c, u32 nh, float p, u64 key) {
    __shared__ __align__(16) T ks[2][TC_TILE][HS + TC_PAD]; // keys: B of q.k (k = channel); two tiles, see below
    __shared__ __align__(16) T vs[2][TC_TILE][HS + TC_PAD]; // values: B of p.v (k = key), read transposed
    const u32 bh = blockIdx.y, h = bh % nh, bi = bh / nh;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    // the last rows first: they see the most keys, so the grid's tail is light blocks
    const u32 r0 = (gridDim.x - 1 - blockIdx.x) * TC_ROWS, w0 = r0 + warp * TC_WARP_ROWS; // the warp's rows w0..w0+15
    const u32 rows[2] = {w0 + g, w0 + g + 8};                           // this lane's two rows
    const u64 ld = 3 * (u64)c;
    const T* base = qkv + (u64)bi * t * ld + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    u32 qa[HS / 16][4];
    frag_a_rows<T, HS>(qa, base, ld, w0, t, g, tq);
    float o[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    const u32 last = umin(r0 + TC_ROWS, t) - 1; // the block's keys: 0..=last
    auto issue = [&](u32 b, u32 j) {
        load_tile<T, HS>(ks[b], base + c, ld, j, t);
        load_tile<T, HS>(vs[b], base + 2 * c, ld, j, t);
    };
    tile_start(0, issue);
    for (u32 j0 = 0, cur = 0; j0 <= last; j0 += TC_TILE, cur ^= 1) {
        tile_step(cur, j0 + TC_TILE <= last, j0 + TC_TILE, issue);
        if (j0 > w0 + TC_WARP_ROWS - 1 || w0 >= t) continue; // the warp's rows see none of these keys
        const u32 to = umin(TC_TILE / 16, (w0 + TC_WARP_ROWS - j0) / 16); // keys past the warp's last row: masked
        float s[TC_TILE / 8][4];                                           // scores: 16 rows x 64 keys
        product_rows<T, HS>(s, qa, &ks[cur][0][0], lane, 0, to);
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; n++) {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                u32 col = j0 + n * 8 + 2 * tq + (i & 1);
                s[n][i] = col <= rows[i >> 1] ? s[n][i] * scale : NEG_INF;
                mx[i >> 1] = fmaxf(mx[i >> 1], s[n][i]);
            }
        }
        float corr[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = quad_max(mx[r]); // finite: key j0 <= every row the warp computes here
            corr[r] = expf(m[r] - mx[r]); // 0 on the first tile (m = -inf)
            m[r] = mx[r];
            l[r] *= corr[r];
        }
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
        }
        u32 pa[TC_TILE / 16][4]; // probabilities (dropout applied) as A fragments of p.v
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; n++) {
            float e[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                u32 row = rows[i >> 1], col = j0 + n * 8 + 2 * tq + (i & 1);
                e[i] = exp_fast(s[n][i] - m[i >> 1]); // 0 past the row's last key
                l[i >> 1] += e[i];
                e[i] *= drop_scale(p, key, ((u64)bh * t + row) * t + col);
            }
            pa[n / 2][(n % 2) * 2] = pack<T>(e[0], e[1]);
            pa[n / 2][(n % 2) * 2 + 1] = pack<T>(e[2], e[3]);
        }
        accumulate_cols<T, HS>(o, pa, &vs[cur][0][0], lane, 0, to);
    }
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) inv[r] = 1.0f / quad_sum(l[r]);
#pragma unroll
    for (int r = 0; r < 2; r++) {
        u32 row = rows[r];
        if (row >= t) continue;
        T* y = out + ((u64)bi * t + row) * c + h * HS + 2 * tq;
#pragma unroll
        for (int n = 0; n < HS / 8; n++) st32(y + n * 8, pack<T>(o[n][2 * r] * inv[r], o[n][2 * r + 1] * inv[r]));
        if (tq == 0) {
            stats[((u64)bh * t + row) * 2] = m[r];
            stats[((u64)bh * t + row) * 2 + 1] = inv[r];
        }
    }
}

// dq part of dqkv(B,T,3C), and rowdot(B,NH,T) = dout . out per row (= sum_j a_j dA_j, which
// the kv kernel needs), from dout(B,T,C), the forward's out(B,T,C), qkv and stats. Per key
// tile: s = q.k and dA = dout.v on tensor cores, then dq += scale a (mask dA - rowdot) k.
// Grid (T/64, B*NH), 128 threads.
template <typename T, int HS>
__device__ void attn_tc_backward_q(T* dqkv, float* rowdot, const T* dout, const T* out, const T* qkv, const float* stats, u32 t,
                                   u32 c, u32 nh, float p, u64 key) {
    __shared__ __align__(16) T ks[2][TC_TILE][HS + TC_PAD]; // keys: B of q.k (k = channel), read transposed of ds.k (k = key)
    __shared__ __align__(16) T vs[2][TC_TILE][HS + TC_PAD]; // values: B of dout.v (k = channel); both double-buffered
    const u32 bh = blockIdx.y, h = bh % nh, bi = bh / nh;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const u32 r0 = (gridDim.x - 1 - blockIdx.x) * TC_ROWS, w0 = r0 + warp * TC_WARP_ROWS; // heaviest first, as the forward
    const u32 rows[2] = {w0 + g, w0 + g + 8};
    const u64 ld = 3 * (u64)c;
    const T* base = qkv + (u64)bi * t * ld + h * HS;
    const T* dy = dout + (u64)bi * t * c + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    u32 qa[HS / 16][4], da[HS / 16][4];
    frag_a_rows<T, HS>(qa, base, ld, w0, t, g, tq);
    frag_a_rows<T, HS>(da, dy, c, w0, t, g, tq);
    float rd[2], mm[2], iv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        u32 row = rows[r];
        float acc = 0.0f;
        if (row < t) {
            const T* y = out + ((u64)bi * t + row) * c + h * HS;
            for (u32 i = tq; i < HS; i += 4) acc += load(dy[(u64)row * c + i]) * load(y[i]);
        }
        rd[r] = quad_sum(acc);
        mm[r] = row < t ? stats[((u64)bh * t + row) * 2] : 0.0f;
        iv[r] = row < t ? stats[((u64)bh * t + row) * 2 + 1] : 0.0f;
        if (tq == 0 && row < t) rowdot[(u64)bh * t + row] = rd[r];
    }
    float dq[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    const u32 last = umin(r0 + TC_ROWS, t) - 1;
    auto issue = [&](u32 b, u32 j) {
        load_tile<T, HS>(ks[b], base + c, ld, j, t);
        load_tile<T, HS>(vs[b], base + 2 * c, ld, j, t);
    };
    tile_start(0, issue);
    for (u32 j0 = 0, cur = 0; j0 <= last; j0 += TC_TILE, cur ^= 1) {
        tile_step(cur, j0 + TC_TILE <= last, j0 + TC_TILE, issue);
        if (j0 > w0 + TC_WARP_ROWS - 1 || w0 >= t) continue;
        const u32 to = umin(TC_TILE / 16, (w0 + TC_WARP_ROWS - j0) / 16); // as in the forward
        float s[TC_TILE / 8][4], da_[TC_TILE / 8][4];                      // q.k and dout.v: 16 rows x 64 keys
        product_rows<T, HS>(s, qa, &ks[cur][0][0], lane, 0, to);
        product_rows<T, HS>(da_, da, &vs[cur][0][0], lane, 0, to);
        u32 dsa[TC_TILE / 16][4]; // scale a (mask dA - rowdot) as A fragments of ds.k
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; n++) {
            float e[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int r = i >> 1;
                u32 row = rows[r], col = j0 + n * 8 + 2 * tq + (i & 1);
                float a = col <= row ? exp_fast(s[n][i] * scale - mm[r]) * iv[r] : 0.0f;
                float d = drop_scale(p, key, ((u64)bh * t + row) * t + col) * da_[n][i];
                e[i] = a * (d - rd[r]) * scale;
            }
            dsa[n / 2][(n % 2) * 2] = pack<T>(e[0], e[1]);
            dsa[n / 2][(n % 2) * 2 + 1] = pack<T>(e[2], e[3]);
        }
        accumulate_cols<T, HS>(dq, dsa, &ks[cur][0][0], lane, 0, to);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (rows[r] >= t) continue;
        T* d = dqkv + ((u64)bi * t + rows[r]) * ld + h * HS + 2 * tq;
#pragma unroll
        for (int n = 0; n < HS / 8; n++) st32(d + n * 8, pack<T>(dq[n][2 * r], dq[n][2 * r + 1]));
    }
}

// dk, dv parts of dqkv(B,T,3C): per block 64 keys (16 per warp), over the query tiles from
// its first key on: s' = k.q and dA' = v.dout (keys x queries) on tensor cores, then
// dv += a mask dout and dk += scale a (mask dA - rowdot) q. Grid (T/64, B*NH), 128 threads.
template <typename T, int HS>
__device__ void attn_tc_backward_kv(T* dqkv, const float* rowdot, const T* dout, const T* qkv, const float* stats, u32 t, u32 c,
                                    u32 nh, float p, u64 key) {
    __shared__ __align__(16) T qs[2][TC_TILE][HS + TC_PAD]; // queries: B of k.q (k = channel); transposed, of ds'.q (k = query)
    __shared__ __align__(16) T ys[2][TC_TILE][HS + TC_PAD]; // dout: B of v.dout (k = channel); transposed, of a'.dout (k = query)
    __shared__ float ms[2][TC_TILE], is[2][TC_TILE], rs[2][TC_TILE]; // the queries' stats, double-buffered too
    const u32 bh = blockIdx.y, h = bh % nh, bi = bh / nh;
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    // the first keys first: they are seen by the most queries (heaviest first, as the forward)
    const u32 first = blockIdx.x * TC_ROWS, k0 = first + warp * TC_WARP_ROWS; // the warp's keys k0..k0+15
    const u32 keys[2] = {k0 + g, k0 + g + 8};
    const u64 ld = 3 * (u64)c;
    const T* base = qkv + (u64)bi * t * ld + h * HS;
    const T* dy = dout + (u64)bi * t * c + h * HS;
    const float scale = 1.0f / sqrtf((float)HS);
    u32 ka[HS / 16][4], va[HS / 16][4];
    frag_a_rows<T, HS>(ka, base + c, ld, k0, t, g, tq);
    frag_a_rows<T, HS>(va, base + 2 * c, ld, k0, t, g, tq);
    float dk[HS / 8][4], dv[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) {
        dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
        dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
    }
    auto issue = [&](u32 b, u32 j) {
        load_tile<T, HS>(qs[b], base, ld, j, t);
        load_tile<T, HS>(ys[b], dy, c, j, t);
        load_stats(ms[b], is[b], rs[b], stats, rowdot, bh, t, j);
    };
    tile_start(first, issue);
    for (u32 j0 = first, cur = 0; j0 < t; j0 += TC_TILE, cur ^= 1) {
        tile_step(cur, j0 + TC_TILE < t, j0 + TC_TILE, issue);
        if (k0 >= t) continue; // every query of the tile is at or past j0 >= first: none is skipped by causality alone
        const u32 from = k0 > j0 ? (k0 - j0) / 16 : 0; // queries before the warp's first key: masked
        float s[TC_TILE / 8][4], da_[TC_TILE / 8][4];  // k.q and v.dout: 16 keys x 64 queries
        product_rows<T, HS>(s, ka, &qs[cur][0][0], lane, from, TC_TILE / 16);
        product_rows<T, HS>(da_, va, &ys[cur][0][0], lane, from, TC_TILE / 16);
        u32 pa[TC_TILE / 16][4], dsa[TC_TILE / 16][4]; // a mask, and scale a (mask dA - rowdot)
#pragma unroll
        for (int n = 0; n < TC_TILE / 8; n++) {
            float e[4], f[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                u32 kr = keys[i >> 1], qi = n * 8 + 2 * tq + (i & 1), qc = j0 + qi;
                bool seen = qc >= kr && qc < t;
                float a = seen ? exp_fast(s[n][i] * scale - ms[cur][qi]) * is[cur][qi] : 0.0f;
                float mk = drop_scale(p, key, ((u64)bh * t + qc) * t + kr);
                e[i] = a * mk;
                f[i] = a * (mk * da_[n][i] - rs[cur][qi]) * scale;
            }
            pa[n / 2][(n % 2) * 2] = pack<T>(e[0], e[1]);
            pa[n / 2][(n % 2) * 2 + 1] = pack<T>(e[2], e[3]);
            dsa[n / 2][(n % 2) * 2] = pack<T>(f[0], f[1]);
            dsa[n / 2][(n % 2) * 2 + 1] = pack<T>(f[2], f[3]);
        }
        accumulate_cols<T, HS>(dv, pa, &ys[cur][0][0], lane, from, TC_TILE / 16);
        accumulate_cols<T, HS>(dk, dsa, &qs[cur][0][0], lane, from, TC_TILE / 16);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        if (keys[r] >= t) continue;
        T* d = dqkv + ((u64)bi * t + keys[r]) * ld + c + h * HS + 2 * tq;
#pragma unroll
        for (int n = 0; n < HS / 8; n++) {
            st32(d + n * 8, pack<T>(dk[n][2 * r], dk[n][2 * r + 1]));
            st32(d + c + n * 8, pack<T>(dv[n][2 * r], dv[n][2 * r + 1]));
        }
    }
}

#define TC_KERNELS(T, S, HS) \
extern "C" __global__ void attention_tc_forward_hs##HS##_##S(T* out, float* stats, const T* qkv, u32 t, u32 c, u32 nh, float p, \
                                                          u64 key) { \
    attn_tc_forward<T, HS>(out, stats, qkv, t, c, nh, p, key); \
} \
extern "C" __global__ void attention_tc_backward_q_hs##HS##_##S(T* dqkv, float* rowdot, const T* dout, const T* out, const T* qkv, \
                                                             const float* stats, u32 t, u32 c, u32 nh, float p, u64 key) { \
    attn_tc_backward_q<T, HS>(dqkv, rowdot, dout, out, qkv, stats, t, c, nh, p, key); \
} \
extern "C" __global__ void attention_tc_backward_kv_hs##HS##_##S(T* dqkv, const float* rowdot, const T* dout, const T* qkv, \
                                                              const float* stats, u32 t, u32 c, u32 nh, float p, u64 key) { \
    attn_tc_backward_kv<T, HS>(dqkv, rowdot, dout, qkv, stats, t, c, nh, p, key); \
}
// 16-bit storage only (f32 attention stays true f32, in attention.cu); heads of 16, 32, 64
// channels, one at a time when compile.rs sets HEAD_ONLY
#if defined(ONLY_F32)
#define TC_FOR(K)
#elif defined(ONLY_BF16)
#define TC_FOR(K) K(bf16_t, bf16)
#elif defined(ONLY_F16)
#define TC_FOR(K) K(f16_t, f16)
#else
#define TC_FOR(K) K(bf16_t, bf16) K(f16_t, f16)
#endif
#define TC_16(T, S) TC_KERNELS(T, S, 16)
#define TC_32(T, S) TC_KERNELS(T, S, 32)
#define TC_64(T, S) TC_KERNELS(T, S, 64)
#if !defined(HEAD_ONLY) || HEAD_ONLY == 16
TC_FOR(TC_16)
#endif
#if !defined(HEAD_ONLY) || HEAD_ONLY == 32
TC_FOR(TC_32)
#endif
#if !defined(HEAD_ONLY) || HEAD_ONLY == 64
TC_FOR(TC_64)
#endif
