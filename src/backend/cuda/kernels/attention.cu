// Causal self-attention, the simple correct version (correctness over speed): one warp per
// (batch, head, row). qkv(B,T,3C) holds q, k, v side by side; head h is channels h*hs..(h+1)*hs
// of each. The forward saves each row's softmax max and 1/sum in stats(B,NH,T,2) and the
// backward recomputes the probabilities from them, as the CPU backend does; no B x NH x T x T
// matrix is kept. Attention dropout masks element (row, col) of task bh = b*NH + h with
// counter (bh*T + row)*T + col, the CPU's `mask_row`.
//
// The backward has three kernels, none with atomics: per query row, the row's
// sum_j a_j * dA_j (into rowdot(B,NH,T)) and dq; then per key row, dk and dv, summing over
// the query rows in order.

// s = q.k of `hs` channels split across the warp's lanes, reduced in a fixed order.
template <typename T> __device__ __forceinline__ float dot_warp(const T* a, const T* b, u32 hs) {
    float s = 0.0f;
    for (u32 i = threadIdx.x % 32; i < hs; i += 32) s += load(a[i]) * load(b[i]);
    return warp_sum(s);
}

#define ATTENTION_KERNELS(T, S) \
/* out(B,T,C), stats(B,NH,T,2) from qkv(B,T,3C). Dynamic shared memory: T floats per warp. */ \
extern "C" __global__ void attention_forward_##S(T* out, float* stats, const T* qkv, u32 b, u32 t, u32 c, u32 nh, \
                                                 float p, u64 key) { \
    extern __shared__ float att_sh[]; \
    u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32; \
    u64 task = (u64)blockIdx.x * (blockDim.x / 32) + warp; /* (bh, t1) */ \
    if (task >= (u64)b * nh * t) return; \
    float* a = att_sh + (u64)warp * t; \
    u32 t1 = task % t, bh = task / t, h = bh % nh, bi = bh / nh, hs = c / nh; \
    float scale = 1.0f / sqrtf((float)hs); \
    const T* base = qkv + (u64)bi * t * 3 * c; \
    const T* q = base + (u64)t1 * 3 * c + h * hs; \
    float m = NEG_INF; \
    for (u32 t2 = 0; t2 <= t1; t2++) { \
        float s = dot_warp(q, base + (u64)t2 * 3 * c + c + h * hs, hs) * scale; \
        if (lane == 0) a[t2] = s; \
        m = fmaxf(m, s); \
    } \
    __syncwarp(); \
    float sum = 0.0f; \
    for (u32 t2 = lane; t2 <= t1; t2 += 32) { float e = expf(a[t2] - m); a[t2] = e; sum += e; } \
    float inv = 1.0f / warp_sum(sum); \
    __syncwarp(); \
    u64 mrow = ((u64)bh * t + t1) * t; \
    T* y = out + ((u64)bi * t + t1) * c + h * hs; \
    for (u32 i = lane; i < hs; i += 32) { \
        float acc = 0.0f; \
        for (u32 t2 = 0; t2 <= t1; t2++) { \
            float w = a[t2] * inv * drop_scale(p, key, mrow + t2); \
            acc += w * load(base[(u64)t2 * 3 * c + 2 * c + h * hs + i]); \
        } \
        y[i] = store<T>(acc); \
    } \
    if (lane == 0) { stats[task * 2] = m; stats[task * 2 + 1] = inv; } \
} \
/* Per query row: rowdot = sum_j a_j dA_j and dq = scale * sum_j a_j (dA_j - rowdot) k_j, */ \
/* where dA_j = mask_j * v_j.dy. Shared memory: 2T floats per warp (a_j, then a_j dA_j). */ \
extern "C" __global__ void attention_backward_q_##S(T* dqkv, float* rowdot, const T* dout, const T* qkv, \
                                                    const float* stats, u32 b, u32 t, u32 c, u32 nh, float p, u64 key) { \
    extern __shared__ float att_sh[]; \
    u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32; \
    u64 task = (u64)blockIdx.x * (blockDim.x / 32) + warp; \
    if (task >= (u64)b * nh * t) return; \
    float* a = att_sh + (u64)warp * 2 * t; \
    float* ad = a + t; \
    u32 t1 = task % t, bh = task / t, h = bh % nh, bi = bh / nh, hs = c / nh; \
    float scale = 1.0f / sqrtf((float)hs); \
    const T* base = qkv + (u64)bi * t * 3 * c; \
    const T* q = base + (u64)t1 * 3 * c + h * hs; \
    const T* dy = dout + ((u64)bi * t + t1) * c + h * hs; \
    float m = stats[task * 2], inv = stats[task * 2 + 1]; \
    u64 mrow = ((u64)bh * t + t1) * t; \
    float dot = 0.0f; \
    for (u32 t2 = 0; t2 <= t1; t2++) { \
        float aj = expf(dot_warp(q, base + (u64)t2 * 3 * c + c + h * hs, hs) * scale - m) * inv; \
        float dj = drop_scale(p, key, mrow + t2) * dot_warp(base + (u64)t2 * 3 * c + 2 * c + h * hs, dy, hs); \
        if (lane == 0) { a[t2] = aj; ad[t2] = aj * dj; } \
        dot += aj * dj; \
    } \
    __syncwarp(); \
    if (lane == 0) rowdot[task] = dot; \
    for (u32 i = lane; i < hs; i += 32) { \
        float acc = 0.0f; \
        for (u32 t2 = 0; t2 <= t1; t2++) { \
            acc += (ad[t2] - a[t2] * dot) * scale * load(base[(u64)t2 * 3 * c + c + h * hs + i]); \
        } \
        dqkv[((u64)bi * t + t1) * 3 * c + h * hs + i] = store<T>(acc); \
    } \
} \
/* Per key row t2: dk = sum_{t1>=t2} dpre(t1,t2) q_t1, dv = sum_{t1>=t2} a(t1,t2) mask dy_t1. */ \
extern "C" __global__ void attention_backward_kv_##S(T* dqkv, const float* rowdot, const T* dout, const T* qkv, \
                                                     const float* stats, u32 b, u32 t, u32 c, u32 nh, float p, u64 key) { \
    u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32; \
    u64 task = (u64)blockIdx.x * (blockDim.x / 32) + warp; /* (bh, t2) */ \
    if (task >= (u64)b * nh * t) return; \
    u32 t2 = task % t, bh = task / t, h = bh % nh, bi = bh / nh, hs = c / nh; \
    float scale = 1.0f / sqrtf((float)hs); \
    const T* base = qkv + (u64)bi * t * 3 * c; \
    const T* kr = base + (u64)t2 * 3 * c + c + h * hs; \
    const T* vr = base + (u64)t2 * 3 * c + 2 * c + h * hs; \
    /* each lane keeps up to 8 channels (hs <= 256) of dk and dv in registers */ \
    float dk[8], dv[8]; \
    for (int j = 0; j < 8; j++) { dk[j] = 0.0f; dv[j] = 0.0f; } \
    for (u32 t1 = t2; t1 < t; t1++) { \
        u64 row = (u64)bh * t + t1; \
        const T* q = base + (u64)t1 * 3 * c + h * hs; \
        const T* dy = dout + ((u64)bi * t + t1) * c + h * hs; \
        float a = expf(dot_warp(q, kr, hs) * scale - stats[row * 2]) * stats[row * 2 + 1]; \
        float mk = drop_scale(p, key, row * t + t2); \
        float d = mk * dot_warp(vr, dy, hs); \
        float dpre = a * (d - rowdot[row]) * scale; \
        for (u32 i = lane, j = 0; i < hs; i += 32, j++) { \
            dk[j] += dpre * load(q[i]); \
            dv[j] += a * mk * load(dy[i]); \
        } \
    } \
    T* dkr = dqkv + ((u64)bi * t + t2) * 3 * c + c + h * hs; \
    for (u32 i = lane, j = 0; i < hs; i += 32, j++) { \
        dkr[i] = store<T>(dk[j]); \
        dkr[c + i] = store<T>(dv[j]); \
    } \
} \
/* Sampling: writes qkv(3C)'s key and value into row pos of k, v (maxT, C), then out(C) = */ \
/* attention of its query over rows 0..=pos. One warp per head; shared: (pos+1) floats per warp. */ \
extern "C" __global__ void attention_decode_##S(T* out, T* kc, T* vc, const T* qkv, u32 pos, u32 c, u32 nh) { \
    extern __shared__ float att_sh[]; \
    u32 h = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32; \
    if (h >= nh) return; \
    u32 hs = c / nh; \
    float* a = att_sh + (u64)(threadIdx.x / 32) * (pos + 1); \
    for (u32 i = lane; i < hs; i += 32) { \
        kc[(u64)pos * c + h * hs + i] = qkv[c + h * hs + i]; \
        vc[(u64)pos * c + h * hs + i] = qkv[2 * c + h * hs + i]; \
    } \
    __syncwarp(); \
    float scale = 1.0f / sqrtf((float)hs); \
    float m = NEG_INF; \
    for (u32 t2 = 0; t2 <= pos; t2++) { \
        float s = dot_warp(qkv + h * hs, kc + (u64)t2 * c + h * hs, hs) * scale; \
        if (lane == 0) a[t2] = s; \
        m = fmaxf(m, s); \
    } \
    __syncwarp(); \
    float sum = 0.0f; \
    for (u32 t2 = lane; t2 <= pos; t2 += 32) { float e = expf(a[t2] - m); a[t2] = e; sum += e; } \
    sum = warp_sum(sum); \
    __syncwarp(); \
    for (u32 i = lane; i < hs; i += 32) { \
        float acc = 0.0f; \
        for (u32 t2 = 0; t2 <= pos; t2++) acc += a[t2] / sum * load(vc[(u64)t2 * c + h * hs + i]); \
        out[h * hs + i] = store<T>(acc); \
    } \
}
FOR_STORAGE(ATTENTION_KERNELS)

// ---------------------------------------------------------------------------------------------
// Tiled attention for heads of HS = 8, 16, 32 or 64 channels (every GPT-2 size has 64): the
// same results as the kernels above, each key and value read from global memory once per
// block of query rows instead of once per row, and no shuffle per score. FlashAttention's
// online softmax without tensor cores, so it runs on every card (7.x too) and in the emulator.
// Heads of other sizes use the one-warp-per-row kernels above.
//
// forward:     block (BR = 64 threads) = 64 query rows of one (b, h), one row per thread, its q
//              and output accumulator in registers; key/value tiles of BC = 32 rows in shared
//              memory. Per chunk of KC = 8 keys the row sees: their scores, the running max
//              and sum rescaled once.
// backward q:  block = 32 query rows, two threads per row (HS/2 channels each, the two halves of
//              a dot product added in one fixed order by a shuffle); two passes over the key
//              tiles: rowdot = sum_j a_j dA_j, then dq = scale * sum_j a_j (dA_j - rowdot) k_j
//              (the forward's probabilities recomputed from its max and 1/sum).
// backward kv: block = 32 key rows, two threads per row as above, query tiles of 32 rows (q, dy,
//              the row's max, 1/sum and rowdot) in shared memory.

#define BR 64
#define BC 32
#define KC 8 // keys per chunk of the forward's online softmax

template <typename T, int HS>
__device__ void attn_forward_tiled(T* out, float* stats, const T* qkv, u32 b, u32 t, u32 c, u32 nh, float p, u64 key) {
    __shared__ float ks[BC][HS];
    __shared__ float vs[BC][HS];
    u32 bh = blockIdx.y, h = bh % nh, bi = bh / nh;
    u32 r0 = blockIdx.x * BR, t1 = r0 + threadIdx.x;
    bool live = t1 < t;
    float scale = 1.0f / sqrtf((float)HS);
    const T* base = qkv + (u64)bi * t * 3 * c;
    float q[HS], o[HS];
    for (int i = 0; i < HS; i++) {
        q[i] = live ? load(base[(u64)t1 * 3 * c + h * HS + i]) : 0.0f;
        o[i] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    u32 last = umin(r0 + BR, t) - 1; // the block's keys: 0..=last
    u64 mrow = ((u64)bh * t + t1) * t;
    for (u32 j0 = 0; j0 <= last; j0 += BC) {
        __syncthreads(); // nobody reads the previous tile any more
        for (u32 e = threadIdx.x; e < BC * HS; e += blockDim.x) {
            u32 jj = e / HS, i = e % HS, t2 = j0 + jj;
            ks[jj][i] = t2 < t ? load(base[(u64)t2 * 3 * c + c + h * HS + i]) : 0.0f;
            vs[jj][i] = t2 < t ? load(base[(u64)t2 * 3 * c + 2 * c + h * HS + i]) : 0.0f;
        }
        __syncthreads();
        if (!live || j0 > t1) continue;
        u32 n = umin(BC, t1 - j0 + 1); // keys of this tile the row sees
        // KC keys at a time: a chunk's scores in registers (its loops unrolled, the chunk loop
        // not). The whole tile unrolled took NVRTC 25 s and 254 registers for heads of 64 on
        // sm_90 (4 blocks per SM); chunks of 8 take 5.5 s and 170 registers (6 blocks).
#pragma unroll 1
        for (u32 c0 = 0; c0 < n; c0 += KC) {
            float s[KC];
            float cmax = NEG_INF;
#pragma unroll
            for (int jj = 0; jj < KC; jj++) {
                float d = 0.0f;
                for (int i = 0; i < HS; i++) d += q[i] * ks[c0 + jj][i];
                s[jj] = c0 + jj < n ? d * scale : NEG_INF;
                cmax = fmaxf(cmax, s[jj]);
            }
            float mnew = fmaxf(m, cmax); // finite: key c0 is one the row sees
            float corr = expf(m - mnew); // 0 on the first chunk (m = -inf)
            l *= corr;
            for (int i = 0; i < HS; i++) o[i] *= corr;
#pragma unroll
            for (int jj = 0; jj < KC; jj++) {
                float e = expf(s[jj] - mnew); // 0 for the keys past the row (s = -inf)
                l += e;
                float w = e * drop_scale(p, key, mrow + j0 + c0 + jj);
                for (int i = 0; i < HS; i++) o[i] += w * vs[c0 + jj][i];
            }
            m = mnew;
        }
    }
    if (!live) return;
    float inv = 1.0f / l;
    T* y = out + ((u64)bi * t + t1) * c + h * HS;
    for (int i = 0; i < HS; i++) y[i] = store<T>(o[i] * inv);
    u64 task = (u64)bh * t + t1;
    stats[task * 2] = m;
    stats[task * 2 + 1] = inv;
}

template <typename T, int HS>
__device__ void attn_backward_q_tiled(T* dqkv, float* rowdot, const T* dout, const T* qkv, const float* stats, u32 b, u32 t, u32 c,
                                      u32 nh, float p, u64 key) {
    const int HALF = HS / 2;
    __shared__ float ks[BC][HS];
    __shared__ float vs[BC][HS];
    u32 bh = blockIdx.y, h = bh % nh, bi = bh / nh;
    u32 r0 = blockIdx.x * (BR / 2), t1 = r0 + threadIdx.x / 2, off = (threadIdx.x % 2) * HALF; // 32 rows, two threads each
    bool lower = threadIdx.x % 2 == 0, live = t1 < t;
    float scale = 1.0f / sqrtf((float)HS);
    const T* base = qkv + (u64)bi * t * 3 * c;
    u64 task = (u64)bh * t + t1;
    float q[HALF], dy[HALF], acc[HALF];
    for (int i = 0; i < HALF; i++) {
        q[i] = live ? load(base[(u64)t1 * 3 * c + h * HS + off + i]) : 0.0f;
        dy[i] = live ? load(dout[((u64)bi * t + t1) * c + h * HS + off + i]) : 0.0f;
        acc[i] = 0.0f;
    }
    float m = live ? stats[task * 2] : 0.0f, inv = live ? stats[task * 2 + 1] : 0.0f;
    u32 last = umin(r0 + BR / 2, t) - 1;
    u64 mrow = task * t;
    float dot = 0.0f;
    for (int pass = 0; pass < 2; pass++) {
        for (u32 j0 = 0; j0 <= last; j0 += BC) {
            __syncthreads();
            for (u32 e = threadIdx.x; e < BC * HS; e += blockDim.x) {
                u32 jj = e / HS, i = e % HS, t2 = j0 + jj;
                ks[jj][i] = t2 < t ? load(base[(u64)t2 * 3 * c + c + h * HS + i]) : 0.0f;
                vs[jj][i] = t2 < t ? load(base[(u64)t2 * 3 * c + 2 * c + h * HS + i]) : 0.0f;
            }
            __syncthreads();
            for (int jj = 0; jj < BC; jj++) {
                float sp = 0.0f, vp = 0.0f;
                for (int i = 0; i < HALF; i++) {
                    sp += q[i] * ks[jj][off + i];
                    vp += vs[jj][off + i] * dy[i];
                }
                // every lane shuffles (the warp's rows see different keys); one order for both halves
                float so = __shfl_xor_sync(0xffffffffu, sp, 1), vo = __shfl_xor_sync(0xffffffffu, vp, 1);
                float s = lower ? sp + so : so + sp, vd = lower ? vp + vo : vo + vp;
                u32 t2 = j0 + jj;
                if (!live || t2 > t1) continue;
                float a = expf(s * scale - m) * inv;
                float d = drop_scale(p, key, mrow + t2) * vd;
                if (pass == 0) {
                    dot += a * d;
                } else {
                    float g = (a * d - a * dot) * scale;
                    for (int i = 0; i < HALF; i++) acc[i] += g * ks[jj][off + i];
                }
            }
        }
    }
    if (!live) return;
    if (lower) rowdot[task] = dot;
    T* dq = dqkv + ((u64)bi * t + t1) * 3 * c + h * HS + off;
    for (int i = 0; i < HALF; i++) dq[i] = store<T>(acc[i]);
}

// Attention backward over query tiles: the softmax max, 1/sum (stats(B,NH,T,2)) and rowdot
// (B,NH,T) of rows j0..j0+n of task bh into shared ms, is, rs (n floats each; zeros past t).
__device__ __forceinline__ void load_row_stats(float* ms, float* is, float* rs, const float* stats, const float* rowdot, u64 bh, u32 t,
                                               u32 j0, u32 n) {
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) {
        u64 row = bh * t + j0 + i;
        bool in = j0 + i < t;
        ms[i] = in ? stats[row * 2] : 0.0f;
        is[i] = in ? stats[row * 2 + 1] : 0.0f;
        rs[i] = in ? rowdot[row] : 0.0f;
    }
}

template <typename T, int HS>
__device__ void attn_backward_kv_tiled(T* dqkv, const float* rowdot, const T* dout, const T* qkv, const float* stats, u32 b, u32 t,
                                       u32 c, u32 nh, float p, u64 key) {
    const int HALF = HS / 2;
    __shared__ float qs[BC][HS];
    __shared__ float dys[BC][HS];
    __shared__ float ms[BC], invs[BC], rds[BC];
    u32 bh = blockIdx.y, h = bh % nh, bi = bh / nh;
    u32 first = blockIdx.x * (BR / 2); // 32 key rows per block of 64 threads
    u32 t2 = first + threadIdx.x / 2, off = (threadIdx.x % 2) * HALF;
    bool lower = threadIdx.x % 2 == 0, live = t2 < t;
    float scale = 1.0f / sqrtf((float)HS);
    const T* base = qkv + (u64)bi * t * 3 * c;
    float k[HALF], v[HALF], dk[HALF], dv[HALF];
    for (int i = 0; i < HALF; i++) {
        k[i] = live ? load(base[(u64)t2 * 3 * c + c + h * HS + off + i]) : 0.0f;
        v[i] = live ? load(base[(u64)t2 * 3 * c + 2 * c + h * HS + off + i]) : 0.0f;
        dk[i] = 0.0f;
        dv[i] = 0.0f;
    }
    for (u32 j0 = first; j0 < t; j0 += BC) {
        __syncthreads();
        for (u32 e = threadIdx.x; e < BC * HS; e += blockDim.x) {
            u32 ii = e / HS, i = e % HS, t1 = j0 + ii;
            qs[ii][i] = t1 < t ? load(base[(u64)t1 * 3 * c + h * HS + i]) : 0.0f;
            dys[ii][i] = t1 < t ? load(dout[((u64)bi * t + t1) * c + h * HS + i]) : 0.0f;
        }
        load_row_stats(ms, invs, rds, stats, rowdot, bh, t, j0, BC);
        __syncthreads();
        for (int ii = 0; ii < BC; ii++) {
            float sp = 0.0f, vp = 0.0f;
            for (int i = 0; i < HALF; i++) {
                sp += qs[ii][off + i] * k[i];
                vp += v[i] * dys[ii][off + i];
            }
            // every lane shuffles (the warp's rows differ in which queries they see)
            float so = __shfl_xor_sync(0xffffffffu, sp, 1), vo = __shfl_xor_sync(0xffffffffu, vp, 1);
            float s = lower ? sp + so : so + sp, vd = lower ? vp + vo : vo + vp; // one order for both halves
            u32 t1 = j0 + ii;
            if (!live || t1 >= t || t1 < t2) continue;
            u64 row = (u64)bh * t + t1;
            float a = expf(s * scale - ms[ii]) * invs[ii];
            float mk = drop_scale(p, key, row * t + t2);
            float dpre = a * (mk * vd - rds[ii]) * scale;
            for (int i = 0; i < HALF; i++) {
                dk[i] += dpre * qs[ii][off + i];
                dv[i] += a * mk * dys[ii][off + i];
            }
        }
    }
    if (!live) return;
    T* dkr = dqkv + ((u64)bi * t + t2) * 3 * c + c + h * HS + off;
    for (int i = 0; i < HALF; i++) {
        dkr[i] = store<T>(dk[i]);
        dkr[c + i] = store<T>(dv[i]);
    }
}

#define TILED_KERNELS(T, S, HS) \
extern "C" __global__ void attention_forward_tiled##HS##_##S(T* out, float* stats, const T* qkv, u32 b, u32 t, u32 c, u32 nh, \
                                                             float p, u64 key) { \
    attn_forward_tiled<T, HS>(out, stats, qkv, b, t, c, nh, p, key); \
} \
extern "C" __global__ void attention_backward_q_tiled##HS##_##S(T* dqkv, float* rowdot, const T* dout, const T* qkv, \
                                                                const float* stats, u32 b, u32 t, u32 c, u32 nh, float p, u64 key) { \
    attn_backward_q_tiled<T, HS>(dqkv, rowdot, dout, qkv, stats, b, t, c, nh, p, key); \
} \
extern "C" __global__ void attention_backward_kv_tiled##HS##_##S(T* dqkv, const float* rowdot, const T* dout, const T* qkv, \
                                                                 const float* stats, u32 b, u32 t, u32 c, u32 nh, float p, u64 key) { \
    attn_backward_kv_tiled<T, HS>(dqkv, rowdot, dout, qkv, stats, b, t, c, nh, p, key); \
}
#define TILED_8(T, S) TILED_KERNELS(T, S, 8)
#define TILED_16(T, S) TILED_KERNELS(T, S, 16)
#define TILED_32(T, S) TILED_KERNELS(T, S, 32)
#define TILED_64(T, S) TILED_KERNELS(T, S, 64)
// (compile.rs compiles the head size a run uses alone: HEAD_ONLY = 8, 16, 32, 64, or 0 for none)
#if !defined(HEAD_ONLY) || HEAD_ONLY == 8
FOR_STORAGE(TILED_8)
#endif
#if !defined(HEAD_ONLY) || HEAD_ONLY == 16
FOR_STORAGE(TILED_16)
#endif
#if !defined(HEAD_ONLY) || HEAD_ONLY == 32
FOR_STORAGE(TILED_32)
#endif
#if !defined(HEAD_ONLY) || HEAD_ONLY == 64
FOR_STORAGE(TILED_64)
#endif
