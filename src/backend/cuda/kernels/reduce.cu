// Reductions in a fixed order: the bias gradient (column sums over rows, for the linear
// layers), and the step accumulators (f64): the mean of the per-position losses and the sum of
// squares of a gradient. Two passes for the sum of squares: a fixed grid of blocks writes one
// partial each, then one block adds the partials in order; no atomics, the same bits every run.

#define REDUCE_KERNELS(T, S) \
/* db(OC) += sum over rows of dout(N,OC). Block (32, up to 32): x the column, y a stride of */ \
/* rows; the y partial sums add in order. */ \
extern "C" __global__ void bias_backward_##S(float* db, const T* dout, u32 n, u32 oc) { \
    __shared__ float part[32][32]; \
    u32 col = blockIdx.x * 32 + threadIdx.x; \
    float s = 0.0f; \
    if (col < oc) for (u32 row = threadIdx.y; row < n; row += blockDim.y) s += load(dout[(u64)row * oc + col]); \
    part[threadIdx.y][threadIdx.x] = s; \
    __syncthreads(); \
    if (threadIdx.y == 0 && col < oc) { \
        for (u32 k = 1; k < blockDim.y; k++) s += part[k][threadIdx.x]; \
        db[col] += s; \
    } \
} \
/* partial[blockIdx.x] = sum of squares of this block's grid-stride share of x(n), in f64 */ \
extern "C" __global__ void sum_squares_partial_##S(double* partial, const T* x, u64 n) { \
    __shared__ double sh[1024]; \
    double s = 0.0; \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) { \
        double v = load(x[i]); \
        s += v * v; \
    } \
    sh[threadIdx.x] = s; \
    __syncthreads(); \
    for (u32 h = blockDim.x / 2; h > 0; h >>= 1) { \
        if (threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h]; \
        __syncthreads(); \
    } \
    if (threadIdx.x == 0) partial[blockIdx.x] = sh[0]; \
}
FOR_STORAGE(REDUCE_KERNELS)

// *into += the sum of partial(n), in order (one thread: n is the fixed grid size).
extern "C" __global__ void add_partials(double* into, const double* partial, u32 n) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double s = 0.0;
    for (u32 i = 0; i < n; i++) s += partial[i];
    *into += s;
}

// *into += (float)(mean of losses(n)), summed in f64 by one block in a fixed order, as the CPU.
extern "C" __global__ void add_mean_loss(double* into, const float* losses, u32 n) {
    __shared__ double sh[1024];
    double s = 0.0;
    for (u32 i = threadIdx.x; i < n; i += blockDim.x) s += losses[i];
    sh[threadIdx.x] = s;
    __syncthreads();
    for (u32 h = blockDim.x / 2; h > 0; h >>= 1) {
        if (threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) *into += (double)(float)(sh[0] / n);
}
