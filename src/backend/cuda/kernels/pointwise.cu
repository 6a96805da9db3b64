// Elementwise kernels: GELU (tanh form) and its backward, the residual add, dropout and the
// bias add of a product whose epilogue cuBLASLt refused (copy and zero are the driver's memcpy
// and memset). Grid-stride loops over 16-byte packs of
// elements (see FOR_PACKS); each output is written (=), rounded once to its type. Dropout's
// element index is the position in the tensor, as the CPU's.

#define GELU_SCALE 0.7978845608f

__device__ __forceinline__ float gelu(float x) {
    float cube = 0.044715f * x * x * x;
    return 0.5f * x * (1.0f + tanhf(GELU_SCALE * (x + cube)));
}
__device__ __forceinline__ float gelu_grad(float x) {
    float th = tanhf(GELU_SCALE * (x + 0.044715f * x * x * x));
    float sech2 = 1.0f - th * th;
    return 0.5f * (1.0f + th) + x * 0.5f * sech2 * GELU_SCALE * (1.0f + 3.0f * 0.044715f * x * x);
}

// The loops: where every pointer is 16-byte aligned, each step of the grid-stride loop handles a
// Pack (16 bytes of each operand, one 128-bit load or store apiece), and the last n % N elements
// go one at a time; otherwise every element goes one at a time. Element i computes the same
// either way.
#define FOR_PACKS(T, ALIGNED) \
    const u64 tid = blockIdx.x * (u64)blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x; \
    const u32 N = Pack<T>::N; \
    const u64 packs = (ALIGNED) ? n / N : 0; \
    for (u64 k = tid; k < packs; k += stride)
#define FOR_REST(T) for (u64 i = packs * N + tid; i < n; i += stride)

#define POINTWISE_KERNELS(T, S) \
extern "C" __global__ void gelu_forward_##S(T* out, const T* inp, u64 n) { \
    FOR_PACKS(T, aligned16(out, inp)) { \
        Pack<T> x = ld128(inp + k * N), y; \
        for (u32 j = 0; j < N; j++) y.v[j] = store<T>(gelu(load(x.v[j]))); \
        st128(out + k * N, y); \
    } \
    FOR_REST(T) out[i] = store<T>(gelu(load(inp[i]))); \
} \
/* dinp may be dout (in place: each element is read before it is written, by one thread) */ \
extern "C" __global__ void gelu_backward_##S(T* dinp, const T* dout, const T* inp, u64 n) { \
    FOR_PACKS(T, aligned16(dinp, dout, inp)) { \
        Pack<T> x = ld128(inp + k * N), d = ld128(dout + k * N), y; \
        for (u32 j = 0; j < N; j++) y.v[j] = store<T>(gelu_grad(load(x.v[j])) * load(d.v[j])); \
        st128(dinp + k * N, y); \
    } \
    FOR_REST(T) dinp[i] = store<T>(gelu_grad(load(inp[i])) * load(dout[i])); \
} \
extern "C" __global__ void residual_forward_##S(T* out, const T* a, const T* b, u64 n) { \
    FOR_PACKS(T, aligned16(out, a, b)) { \
        Pack<T> x = ld128(a + k * N), y = ld128(b + k * N), z; \
        for (u32 j = 0; j < N; j++) z.v[j] = store<T>(load(x.v[j]) + load(y.v[j])); \
        st128(out + k * N, z); \
    } \
    FOR_REST(T) out[i] = store<T>(load(a[i]) + load(b[i])); \
} \
extern "C" __global__ void dropout_##S(T* x, u64 n, float p, u64 key) { \
    FOR_PACKS(T, aligned16(x)) { \
        Pack<T> v = ld128(x + k * N); \
        for (u32 j = 0; j < N; j++) v.v[j] = store<T>(load(v.v[j]) * drop_scale(p, key, k * N + j)); \
        st128(x + k * N, v); \
    } \
    FOR_REST(T) x[i] = store<T>(load(x[i]) * drop_scale(p, key, i)); \
} \
/* out(n / oc, oc) += bias(oc) on every row, in place: a linear layer's bias when cuBLASLt */ \
/* refused its epilogue (the product is rounded first, so 16-bit types round twice) */ \
extern "C" __global__ void bias_add_##S(T* out, const T* bias, u64 n, u32 oc) { \
    const u64 tid = blockIdx.x * (u64)blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x; \
    for (u64 i = tid; i < n; i += stride) out[i] = store<T>(load(out[i]) + load(bias[i % oc])); \
}
FOR_STORAGE(POINTWISE_KERNELS)
