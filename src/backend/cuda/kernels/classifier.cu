// llm.c's fused classifier: per row of logits(N,Vp), softmax + cross-entropy over the first V
// columns, the loss into losses(N) (f32), and with grad_scale != 0 the logits overwritten by
// dlogits = s * (softmax - onehot(target)), zero in the padded columns. One block per row.
//
// Two passes over the row (a GPT-2 row is 100 KB of bf16, the whole tensor over a GB): the first
// keeps, per thread, a running max and the sum of exp(x - max) rescaled whenever the max grows
// (the online softmax), then the block combines them in a fixed order; the second writes the
// gradient. Both read 16-byte packs where the row is 16-byte aligned (the rest one at a time),
// each thread the same elements every time, so a run is bitwise repeatable.

// Folds x into a running (max m, sum s of exp(v - m)). A -inf logit adds exp(-inf) = 0, as in a
// three-pass softmax (exp(-inf - -inf) would be NaN while m is still -inf).
__device__ __forceinline__ void online_add(float& m, float& s, float x) {
    if (x == NEG_INF) return;
    if (x > m) {
        s = s * expf(m - x) + 1.0f; // m = -inf at first: exp(-inf) = 0
        m = x;
    } else {
        s += expf(x - m);
    }
}

template <typename T>
__device__ void classifier(T* logits, float* losses, const u32* targets, u32 v, u32 vp, int write_grad, float grad_scale) {
    __shared__ float shared[32];
    const u64 row = blockIdx.x;
    T* l = logits + row * vp;
    const u32 N = Pack<T>::N, packs = aligned16(l) ? v / N : 0, gpacks = aligned16(l) ? vp / N : 0;
    float m = NEG_INF, s = 0.0f;
    for (u32 k = threadIdx.x; k < packs; k += blockDim.x) {
        Pack<T> p = ld128(l + (u64)k * N);
        for (u32 j = 0; j < N; j++) online_add(m, s, load(p.v[j]));
    }
    for (u32 i = packs * N + threadIdx.x; i < v; i += blockDim.x) online_add(m, s, load(l[i]));
    const float mx = block_max(m, shared);
    const float sum = block_sum(s * expf(m - mx), shared); // a thread with no columns adds 0 * exp(-inf)
    const u32 tgt = targets[row];
    if (threadIdx.x == 0) losses[row] = logf(sum) + mx - load(l[tgt]);
    __syncthreads(); // every thread has read l[tgt] before it is overwritten
    if (!write_grad) return;
    const float scale = grad_scale / sum;
    auto grad = [&](u32 i, float x) { return i < v ? scale * expf(x - mx) - (i == tgt ? grad_scale : 0.0f) : 0.0f; };
    for (u32 k = threadIdx.x; k < gpacks; k += blockDim.x) {
        Pack<T> p = ld128(l + (u64)k * N);
        for (u32 j = 0; j < N; j++) p.v[j] = store<T>(grad(k * N + j, load(p.v[j])));
        st128(l + (u64)k * N, p);
    }
    for (u32 i = gpacks * N + threadIdx.x; i < vp; i += blockDim.x) l[i] = store<T>(grad(i, load(l[i])));
}

#define CLASSIFIER_KERNELS(T, S) \
extern "C" __global__ __launch_bounds__(512) void fused_classifier_##S(T* logits, float* losses, const u32* targets, u32 v, u32 vp, \
                                                int write_grad, float grad_scale) { \
    classifier<T>(logits, losses, targets, v, vp, write_grad, grad_scale); \
}
FOR_STORAGE(CLASSIFIER_KERNELS)
