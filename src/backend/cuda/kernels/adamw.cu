// One AdamW step (torch.optim.AdamW) per element, the gradient multiplied by grad_scale as it
// is read (clipping and loss-scale division fused in, as llm.c does). Gradients, moments and
// master weights are f32. With a master copy (mixed precision) the f32 master is updated and
// the parameters the kernels read are its rounding; without one (f32 runs) the parameters are
// the master. k = beta1, beta2, eps, lr / bc1, sqrt(bc2), 1 - lr * wd, grad_scale, as the CPU.

#define ADAMW_KERNELS(T, S) \
extern "C" __global__ void adamw_##S(T* params, float* master, const float* grads, float* m, float* v, u64 n, \
                                     float beta1, float beta2, float eps, float step_size, float bc2_sqrt, \
                                     float decay, float grad_scale) { \
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) { \
        float g = grads[i] * grad_scale; \
        float p = master ? master[i] : load(params[i]); \
        p *= decay; \
        float mi = m[i]; \
        mi += (1.0f - beta1) * (g - mi); \
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g; \
        float denom = sqrtf(vi) / bc2_sqrt + eps; \
        p -= step_size * mi / denom; \
        m[i] = mi; \
        v[i] = vi; \
        if (master) master[i] = p; \
        params[i] = store<T>(p); \
    } \
}
FOR_STORAGE(ADAMW_KERNELS)
