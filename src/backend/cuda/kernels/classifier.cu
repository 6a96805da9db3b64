// llm.c's fused classifier: per row of logits(N,Vp), softmax + cross-entropy over the first V
// columns, the loss into losses(N) (f32), and with grad_scale != 0 the logits overwritten by
// dlogits = s * (softmax - onehot(target)), zero in the padded columns. One block per row;
// the max and the sum are block reductions in a fixed order.

#define CLASSIFIER_KERNELS(T, S) \
extern "C" __global__ void fused_classifier_##S(T* logits, float* losses, const u32* targets, u32 v, u32 vp, \
                                                int write_grad, float grad_scale) { \
    __shared__ float shared[32]; \
    u64 row = blockIdx.x; \
    T* l = logits + row * vp; \
    float m = NEG_INF; \
    for (u32 i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, load(l[i])); \
    m = block_max(m, shared); \
    float s = 0.0f; \
    for (u32 i = threadIdx.x; i < v; i += blockDim.x) s += expf(load(l[i]) - m); \
    s = block_sum(s, shared); \
    u32 tgt = targets[row]; \
    if (threadIdx.x == 0) losses[row] = logf(s) + m - load(l[tgt]); \
    __syncthreads(); /* every thread has read l[tgt] before it is overwritten */ \
    if (write_grad) { \
        float scale = grad_scale / s; \
        for (u32 i = threadIdx.x; i < vp; i += blockDim.x) { \
            float g = i < v ? scale * expf(load(l[i]) - m) - (i == tgt ? grad_scale : 0.0f) : 0.0f; \
            l[i] = store<T>(g); \
        } \
    } \
}
FOR_STORAGE(CLASSIFIER_KERNELS)
