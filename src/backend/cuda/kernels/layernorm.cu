// LayerNorm over rows of C channels: one warp per row for the forward and for the backward's
// input gradient; the weight and bias gradients are a second kernel that sums columns over
// rows in a fixed order (no atomics: per chunk of rows, then the chunks in order). mean and
// rstd are f32 statistics; dinp accumulates into the residual stream's gradient (+=), dw and
// db (f32) accumulate too.

#define LN_EPS 1e-5f

#define LAYERNORM_KERNELS(T, S) \
/* out(N,C), mean(N), rstd(N) from inp(N,C), w(C), b(C) (b may be null) */ \
extern "C" __global__ void layernorm_forward_##S(T* out, float* mean, float* rstd, const T* inp, \
                                                 const T* w, const T* b, u32 n, u32 c) { \
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32; \
    if (row >= n) return; \
    const T* x = inp + (u64)row * c; \
    float s = 0.0f; \
    for (u32 i = lane; i < c; i += 32) s += load(x[i]); \
    float mu = warp_sum(s) / c; \
    float v = 0.0f; \
    for (u32 i = lane; i < c; i += 32) { float d = load(x[i]) - mu; v += d * d; } \
    float r = 1.0f / sqrtf(warp_sum(v) / c + LN_EPS); \
    T* o = out + (u64)row * c; \
    for (u32 i = lane; i < c; i += 32) { \
        float y = (load(x[i]) - mu) * r * load(w[i]) + (b ? load(b[i]) : 0.0f); \
        o[i] = store<T>(y); \
    } \
    if (lane == 0) { mean[row] = mu; rstd[row] = r; } \
} \
/* dinp(N,C) += the input gradient, from dout, inp, mean, rstd, w */ \
extern "C" __global__ void layernorm_backward_dinp_##S(T* dinp, const T* dout, const T* inp, const float* mean, \
                                                       const float* rstd, const T* w, u32 n, u32 c) { \
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32; \
    if (row >= n) return; \
    const T* x = inp + (u64)row * c; \
    const T* d = dout + (u64)row * c; \
    float mu = mean[row], r = rstd[row]; \
    float dm = 0.0f, dnm = 0.0f; \
    for (u32 i = lane; i < c; i += 32) { \
        float wd = load(w[i]) * load(d[i]); \
        dm += wd; \
        dnm += wd * (load(x[i]) - mu) * r; \
    } \
    dm = warp_sum(dm) / c; \
    dnm = warp_sum(dnm) / c; \
    T* di = dinp + (u64)row * c; \
    for (u32 i = lane; i < c; i += 32) { \
        float norm = (load(x[i]) - mu) * r; \
        float g = (load(w[i]) * load(d[i]) - dm - norm * dnm) * r; \
        di[i] = store<T>(load(di[i]) + g); \
    } \
} \
/* part(2, R, C): the sums over row chunk r = blockIdx.y (rows r*per .. (r+1)*per) of */ \
/* norm * dout (for dw, part[0][r]) and dout (for db, part[1][r]); reduce.cu's */ \
/* column_partials_add adds the chunks in order. Block (32, up to 32): x the column, y a */ \
/* stride of the chunk's rows; the y partial sums add in order. */ \
extern "C" __global__ void layernorm_backward_dw_##S(float* part, const T* dout, const T* inp, \
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
