// The embeddings: out(B,T,C) = wte[tokens] + wpe[pos0 + t] with embedding dropout applied
// before the one rounding to the output's type (element index i, as the CPU's), and their
// backward. The backward is deterministic without atomics: dwpe's (t, c) thread sums the
// batch in order; dwte's warp for a token sums that token's rows in row order (found through
// the batch's positions sorted by token, which the host uploads with it) before adding once
// into its row, so repeated tokens accumulate in row order.

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
/* dwte(Vp,C)[v] += the sum of dout's rows whose token is v, in row order, for every token v */ \
/* of the batch. order(BT): the positions sorted by token, equal tokens in row order, so each */ \
/* token's rows are a run of it. A warp per (k, 256 channels): the warp whose k starts a run */ \
/* (its token differs from order[k - 1]'s) adds the run's rows in order; the others return. */ \
/* It reads the run 32 positions at a time (one coalesced load of order and one gather of */ \
/* tokens, a ballot for how many are still the run's), so a long run (a frequent token) costs */ \
/* its dout rows, not a chain of dependent loads per row. */ \
extern "C" __global__ void encoder_backward_wte_##S(float* dwte, const T* dout, const u32* tokens, const u32* order, u64 bt, \
                                                    u32 c) { \
    u64 k0 = blockIdx.x * (u64)(blockDim.x / 32) + threadIdx.x / 32; \
    u32 lane = threadIdx.x % 32; \
    if (k0 >= bt) return; \
    u32 v = tokens[order[k0]]; \
    if (k0 > 0 && tokens[order[k0 - 1]] == v) return; \
    u32 ch0 = blockIdx.y * 256 + lane; /* this lane's channels: ch0 + 32 k, k < 8 */ \
    float acc[8]; \
    for (int k = 0; k < 8; k++) acc[k] = 0.0f; \
    for (u64 base = k0; base < bt; base += 32) { \
        /* the run's positions among base..base+31 are a prefix: the order is sorted by token */ \
        bool in = base + lane < bt && tokens[order[base + lane]] == v; \
        u32 mask = __ballot_sync(0xffffffffu, in); \
        u32 n = mask == 0xffffffffu ? 32 : __ffs(~mask) - 1; \
        for (u32 i = 0; i < n; i++) { \
            u64 row = order[base + i]; \
            for (int k = 0; k < 8; k++) { \
                u32 ch = ch0 + 32 * k; \
                if (ch < c) acc[k] += load(dout[row * c + ch]); \
            } \
        } \
        if (n < 32) break; \
    } \
    for (int k = 0; k < 8; k++) { \
        u32 ch = ch0 + 32 * k; \
        if (ch < c) dwte[(u64)v * c + ch] += acc[k]; \
    } \
}
FOR_STORAGE(ENCODER_KERNELS)
