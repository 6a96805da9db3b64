// Elementwise kernels: GELU (tanh form) and its backward, the residual add and dropout (copy
// and zero are the driver's memcpy and memset). One thread per element, grid-stride loops; each
// output is written (=), rounded once to its type. Dropout's element index is the position in
// the tensor, as the CPU's.

#define GELU_SCALE 0.7978845608f

#define POINTWISE_KERNELS(T, S) \
extern "C" __global__ void gelu_forward_##S(T* out, const T* inp, u64 n) { \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) { \
        float x = load(inp[i]); \
        float cube = 0.044715f * x * x * x; \
        out[i] = store<T>(0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)))); \
    } \
} \
extern "C" __global__ void gelu_backward_##S(T* dinp, const T* dout, const T* inp, u64 n) { \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) { \
        float x = load(inp[i]); \
        float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x)); \
        float sech2 = 1.0f - th * th; \
        float grad = 0.5f * (1.0f + th) + x * 0.5f * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x); \
        dinp[i] = store<T>(grad * load(dout[i])); \
    } \
} \
extern "C" __global__ void residual_forward_##S(T* out, const T* a, const T* b, u64 n) { \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) { \
        out[i] = store<T>(load(a[i]) + load(b[i])); \
    } \
} \
extern "C" __global__ void dropout_##S(T* x, u64 n, float p, u64 key) { \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) { \
        x[i] = store<T>(load(x[i]) * drop_scale(p, key, i)); \
    } \
}
FOR_STORAGE(POINTWISE_KERNELS)
