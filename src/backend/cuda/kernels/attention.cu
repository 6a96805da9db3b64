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
