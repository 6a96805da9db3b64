// LayerNorm over rows of C channels: one warp per row for the forward and for the backward's
// input gradient; the weight and bias gradients are a second kernel that sums columns over
// rows in a fixed order (no atomics: per chunk of rows, then the chunks in order). mean and
// rstd are f32 statistics; dinp accumulates into the residual stream's gradient (+=), dw and
// db (f32) accumulate too.

#define LN_EPS 1e-5f

// A lane's share of a row of c values: with c a multiple of a Pack's N, the packs lane, lane +
// 32, ... (N consecutive values each, in order), else the values lane, lane + 32, ... The
// order depends on c only; `wide` (every row 16-byte aligned) only picks one 128-bit access
// per pack instead of N, so the results are the same bits either way.
template <typename T> __device__ __forceinline__ Pack<T> ldp(const T* p, bool wide) {
    if (wide) return ld128(p);
    Pack<T> r;
    for (u32 j = 0; j < Pack<T>::N; j++) r.v[j] = p[j];
    return r;
}
template <typename T> __device__ __forceinline__ void stp(T* p, const Pack<T>& x, bool wide) {
    if (wide) st128(p, x);
    else for (u32 j = 0; j < Pack<T>::N; j++) p[j] = x.v[j];
}

// out(N,C), mean(N), rstd(N) from inp(N,C), w(C), b(C) (b may be null): a warp per row.
template <typename T>
__device__ void ln_forward(T* out, float* mean, float* rstd, const T* inp, const T* w, const T* b, u32 n, u32 c) {
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    const u32 N = Pack<T>::N;
    const bool packed = c % N == 0, wide = packed && aligned16(inp, out) && aligned16(w, b);
    const T* x = inp + (u64)row * c;
    T* o = out + (u64)row * c;
    float s = 0.0f;
    if (packed) {
        for (u32 k = lane; k < c / N; k += 32) {
            Pack<T> xv = ldp(x + k * N, wide);
            for (u32 j = 0; j < N; j++) s += load(xv.v[j]);
        }
    } else {
        for (u32 i = lane; i < c; i += 32) s += load(x[i]);
    }
    const float mu = warp_sum(s) / c;
    float v = 0.0f;
    if (packed) {
        for (u32 k = lane; k < c / N; k += 32) {
            Pack<T> xv = ldp(x + k * N, wide);
            for (u32 j = 0; j < N; j++) { float d = load(xv.v[j]) - mu; v += d * d; }
        }
    } else {
        for (u32 i = lane; i < c; i += 32) { float d = load(x[i]) - mu; v += d * d; }
    }
    const float r = 1.0f / sqrtf(warp_sum(v) / c + LN_EPS);
    auto y = [&](float xi, float wi, float bi) { return store<T>((xi - mu) * r * wi + bi); };
    if (packed) {
        for (u32 k = lane; k < c / N; k += 32) {
            Pack<T> xv = ldp(x + k * N, wide), wv = ldp(w + k * N, wide), ov;
            Pack<T> bv = b ? ldp(b + k * N, wide) : Pack<T>{};
            for (u32 j = 0; j < N; j++) ov.v[j] = y(load(xv.v[j]), load(wv.v[j]), b ? load(bv.v[j]) : 0.0f);
            stp(o + k * N, ov, wide);
        }
    } else {
        for (u32 i = lane; i < c; i += 32) o[i] = y(load(x[i]), load(w[i]), b ? load(b[i]) : 0.0f);
    }
    if (lane == 0) { mean[row] = mu; rstd[row] = r; }
}

// dinp(N,C) += the input gradient, from dout, inp, mean, rstd, w: a warp per row.
template <typename T>
__device__ void ln_backward_dinp(T* dinp, const T* dout, const T* inp, const float* mean, const float* rstd, const T* w, u32 n, u32 c) {
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= n) return;
    const u32 N = Pack<T>::N;
    const bool packed = c % N == 0, wide = packed && aligned16(dinp, dout, inp) && aligned16(w);
    const T* x = inp + (u64)row * c;
    const T* d = dout + (u64)row * c;
    T* di = dinp + (u64)row * c;
    const float mu = mean[row], r = rstd[row];
    float dm = 0.0f, dnm = 0.0f;
    auto sums = [&](float xi, float wi, float di_) {
        float wd = wi * di_;
        dm += wd;
        dnm += wd * (xi - mu) * r;
    };
    if (packed) {
        for (u32 k = lane; k < c / N; k += 32) {
            Pack<T> xv = ldp(x + k * N, wide), wv = ldp(w + k * N, wide), dv = ldp(d + k * N, wide);
            for (u32 j = 0; j < N; j++) sums(load(xv.v[j]), load(wv.v[j]), load(dv.v[j]));
        }
    } else {
        for (u32 i = lane; i < c; i += 32) sums(load(x[i]), load(w[i]), load(d[i]));
    }
    dm = warp_sum(dm) / c;
    dnm = warp_sum(dnm) / c;
    auto g = [&](float xi, float wi, float di_, float acc) {
        float norm = (xi - mu) * r;
        return store<T>(acc + (wi * di_ - dm - norm * dnm) * r);
    };
    if (packed) {
        for (u32 k = lane; k < c / N; k += 32) {
            Pack<T> xv = ldp(x + k * N, wide), wv = ldp(w + k * N, wide), dv = ldp(d + k * N, wide), av = ldp(di + k * N, wide);
            for (u32 j = 0; j < N; j++) av.v[j] = g(load(xv.v[j]), load(wv.v[j]), load(dv.v[j]), load(av.v[j]));
            stp(di + k * N, av, wide);
        }
    } else {
        for (u32 i = lane; i < c; i += 32) di[i] = g(load(x[i]), load(w[i]), load(d[i]), load(di[i]));
    }
}

#define LAYERNORM_KERNELS(T, S) \
extern "C" __global__ void layernorm_forward_##S(T* out, float* mean, float* rstd, const T* inp, \
                                                 const T* w, const T* b, u32 n, u32 c) { \
    ln_forward<T>(out, mean, rstd, inp, w, b, n, c); \
} \
extern "C" __global__ void layernorm_backward_dinp_##S(T* dinp, const T* dout, const T* inp, const float* mean, \
                                                       const float* rstd, const T* w, u32 n, u32 c) { \
    ln_backward_dinp<T>(dinp, dout, inp, mean, rstd, w, n, c); \
} \
/* part(2, R, C): the sums over row chunk r = blockIdx.y (rows r*per .. (r+1)*per) of */ \
/* norm * dout (for dw, part[0][r]) and dout (for db, part[1][r]); reduce.cu's */ \
/* column_partials_add adds the chunks in order. Block (32, up to 32): x the column, y a */ \
/* stride of the chunk's rows; the y partial sums add in order. */ \
extern "C" __global__ __launch_bounds__(1024) void layernorm_backward_dw_##S(float* part, const T* dout, const T* inp, \
                                                     const float* mean, const float* rstd, u32 n, u32 c, u32 per) { \
    __shared__ float pw[32][32], pb[32][32]; \
    u32 col = blockIdx.x * 32 + threadIdx.x, end = umin(n, (blockIdx.y + 1) * per); \
    float sw = 0.0f, sb = 0.0f; \
    if (col < c) { \
        for (u32 row = blockIdx.y * per + threadIdx.y; row < end; row += blockDim.y) { \
            float d = load(dout[(u64)row * c + col]); \
            sw += (load(inp[(u64)row * c + col]) - mean[row]) * rstd[row] * d; \
            sb += d; \
        } \
    } \
    pw[threadIdx.y][threadIdx.x] = sw; \
    pb[threadIdx.y][threadIdx.x] = sb; \
    __syncthreads(); \
    if (threadIdx.y == 0 && col < c) { \
        for (u32 k = 1; k < blockDim.y; k++) { sw += pw[k][threadIdx.x]; sb += pb[k][threadIdx.x]; } \
        part[(u64)blockIdx.y * c + col] = sw; \
        part[((u64)gridDim.y + blockIdx.y) * c + col] = sb; \
    } \
}
FOR_STORAGE(LAYERNORM_KERNELS)
