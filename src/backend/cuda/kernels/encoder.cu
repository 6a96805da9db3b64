// The embeddings: out(B,T,C) = wte[tokens] + wpe[pos0 + t] with embedding dropout applied
// before the one rounding to the output's type (element index i, as the CPU's), and their
// backward. The backward is deterministic without atomics: dwpe's (t, c) thread sums the
// batch in order; dwte's c thread walks every row in order and adds into its token's row, so
// repeated tokens accumulate in row order, as on the CPU.

#define ENCODER_KERNELS(T, S) \
extern "C" __global__ void encoder_forward_##S(T* out, const T* wte, const T* wpe, const u32* tokens, \
                                               u64 bt, u32 t, u32 c, u32 pos0, float p, u64 key) { \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < bt * c; i += (u64)gridDim.x * blockDim.x) { \
        u64 row = i / c, ch = i % c; \
        u64 tok = tokens[row], pos = pos0 + row % t; \
        out[i] = store<T>((load(wte[tok * c + ch]) + load(wpe[pos * c + ch])) * drop_scale(p, key, i)); \
    } \
} \
/* dwpe(maxT,C) += sum over b of dout(B,T,C): one thread per (t, c) */ \
extern "C" __global__ void encoder_backward_wpe_##S(float* dwpe, const T* dout, u32 b, u32 t, u32 c) { \
    u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; \
    if (i >= (u64)t * c) return; \
    float acc = dwpe[i]; \
    for (u32 bi = 0; bi < b; bi++) acc += load(dout[(u64)bi * t * c + i]); \
    dwpe[i] = acc; \
} \
/* dwte(Vp,C)[tokens[row]] += dout[row]: one thread per channel, rows in order */ \
extern "C" __global__ void encoder_backward_wte_##S(float* dwte, const T* dout, const u32* tokens, u64 bt, u32 c) { \
    u32 ch = blockIdx.x * blockDim.x + threadIdx.x; \
    if (ch >= c) return; \
    for (u64 row = 0; row < bt; row++) { \
        u64 at = (u64)tokens[row] * c + ch; \
        dwte[at] += load(dout[row * c + ch]); \
    } \
}
FOR_STORAGE(ENCODER_KERNELS)
