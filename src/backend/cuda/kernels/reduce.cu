// Reductions in a fixed order: the bias gradient (column sums over rows, for the linear
// layers), and the step accumulators (f64): the mean of the per-position losses and the sum of
// squares of a gradient. Two passes for each: blocks over a grid fixed by the shape write one
// partial each (for column sums, one per column and chunk of rows, so that a few hundred
// columns still fill the card), then the partials are added in order; no atomics, the same
// bits every run.

#define REDUCE_KERNELS(T, S) \
/* part(R, OC): part[r][col] = sum of dout(N,OC)[row][col] over row chunk r = blockIdx.y (rows */ \
/* r*per .. (r+1)*per). Block (32, up to 32): x the column, y a stride of the chunk's rows; the */ \
/* y partial sums add in order. column_partials_add then adds the R chunks in order into db. */ \
extern "C" __global__ __launch_bounds__(1024) void bias_backward_##S(float* part, const T* dout, u32 n, u32 oc, u32 per) { \
    __shared__ float sh[32][32]; \
    u32 col = blockIdx.x * 32 + threadIdx.x, end = umin(n, (blockIdx.y + 1) * per); \
    float s = 0.0f; \
    if (col < oc) for (u32 row = blockIdx.y * per + threadIdx.y; row < end; row += blockDim.y) s += load(dout[(u64)row * oc + col]); \
    sh[threadIdx.y][threadIdx.x] = s; \
    __syncthreads(); \
    if (threadIdx.y == 0 && col < oc) { \
        for (u32 k = 1; k < blockDim.y; k++) s += sh[k][threadIdx.x]; \
        part[(u64)blockIdx.y * oc + col] = s; \
    } \
} \
/* Piece y = blockIdx.y of x(n) (elements y*per .. (y+1)*per, the last fewer; never empty), */ \
/* as if launched alone on grid = its blocks of blockDim.x elements, at most maxg: */ \
/* partial[y*maxg + b] = the sum of squares of block b's grid-stride share of it, in f64; */ \
/* blocks past that grid idle. */ \
extern "C" __global__ __launch_bounds__(1024) void sum_squares_partial_##S(double* partial, const T* x, u64 n, u64 per, u32 maxg) { \
    __shared__ double sh[1024]; \
    u64 start = (u64)blockIdx.y * per, len = u64min(per, n - start); \
    u32 grid = (u32)u64min((len + blockDim.x - 1) / blockDim.x, maxg); \
    if (blockIdx.x >= grid) return; /* a whole block: no barrier is left waiting */ \
    x += start; \
    double s = 0.0; \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < len; i += (u64)grid * blockDim.x) { \
        double v = load(x[i]); \
        s += v * v; \
    } \
    sh[threadIdx.x] = s; \
    __syncthreads(); \
    for (u32 h = blockDim.x / 2; h > 0; h >>= 1) { \
        if (threadIdx.x < h) sh[threadIdx.x] += sh[threadIdx.x + h]; \
        __syncthreads(); \
    } \
    if (threadIdx.x == 0) partial[(u64)blockIdx.y * maxg + blockIdx.x] = sh[0]; \
}
FOR_STORAGE(REDUCE_KERNELS)

// out(C) += the column sums of part(R, C), each over r = 0..R in order (a thread per column).
extern "C" __global__ void column_partials_add(float* out, const float* part, u32 r, u32 c) {
    u32 col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= c) return;
    float s = part[col];
    for (u32 k = 1; k < r; k++) s += part[(u64)k * c + col];
    out[col] += s;
}

// For each of `pieces` pieces y of x(n) in order (as sum_squares_partial: `per` elements each,
// grid of `block`-element blocks, at most maxg), into[y * step] += the sum of its partials, in
// order (one thread). step 0 adds every piece's sum to one slot, one after another.
extern "C" __global__ void add_partials(double* into, const double* partial, u64 n, u64 per, u32 pieces, u32 maxg, u32 block, u32 step) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    for (u32 y = 0; y < pieces; y++) {
        u64 len = u64min(per, n - (u64)y * per);
        u32 grid = (u32)u64min((len + block - 1) / block, maxg);
        double s = 0.0;
        for (u32 i = 0; i < grid; i++) s += partial[(u64)y * maxg + i];
        into[(u64)y * step] += s;
    }
}

// *into += (float)(mean of losses(n)), summed in f64 by one block in a fixed order, as the CPU.
extern "C" __global__ __launch_bounds__(1024) void add_mean_loss(double* into, const float* losses, u32 n) {
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
