// What every kernel file shares (prepended to each before NVRTC compiles it): the storage
// types of ARCHITECTURE.md's mixed-precision table, their loads and rounding stores, block
// and warp reductions in a fixed order, and the dropout hash of src/rng.rs.
//
// Storage types: f32 (`float`), bf16 and f16 (`bf16_t`/`f16_t`, 16 raw bits). Every kernel
// loads its operands into f32, computes in f32 (f64 for the step accumulators) and rounds each
// result once into its output's type (round to nearest even), as the CPU backend does. No
// headers: conversions are bit arithmetic (bf16) and PTX `cvt` (f16), so NVRTC needs no
// include path.
//
// A kernel launched with more than 256 threads per block carries `__launch_bounds__(N)`, N its
// largest block: ptxas then keeps its registers within what such a block may hold (64 per
// thread at 1024), so its launch cannot fail for registers (at 256 threads or fewer, any
// kernel's 255 fit).

// -infinity, the start of a running maximum (no math header defines INFINITY here)
#define NEG_INF __int_as_float(0xff800000)

typedef unsigned long long u64;
typedef unsigned int u32;
struct bf16_t { unsigned short bits; };
struct f16_t { unsigned short bits; };

__device__ __forceinline__ float load(float x) { return x; }
__device__ __forceinline__ float load(bf16_t x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float load(f16_t x) {
#ifdef GPTRAIN_EMU // tools/cuda-emu: the same conversion in C, for the host compiler
    return emu::f16_to_f32(x.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#endif
}

__device__ __forceinline__ u32 umin(u32 a, u32 b) { return a < b ? a : b; }
__device__ __forceinline__ u64 u64min(u64 a, u64 b) { return a < b ? a : b; }

template <typename T> __device__ __forceinline__ T store(float x);
template <> __device__ __forceinline__ float store<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t store<bf16_t>(float x) {
    u32 b = __float_as_uint(x);
    bf16_t r;
    if ((b & 0x7fffffffu) > 0x7f800000u) {
        r.bits = (unsigned short)((b >> 16) | 0x40u); // NaN stays a (quiet) NaN
    } else {
        r.bits = (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16); // nearest, ties to even
    }
    return r;
}
template <> __device__ __forceinline__ f16_t store<f16_t>(float x) {
    f16_t r;
#ifdef GPTRAIN_EMU
    r.bits = emu::f32_to_f16(x);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#endif
    return r;
}

// Two 16-bit values at p as one 32-bit word, the lower address in the low half. p must be
// 4-byte aligned, as a GPU requires (the emulator checks; x86 would not fault): a shared array
// of bf16_t/f16_t read this way is declared __align__(16).
template <typename T> __device__ __forceinline__ u32 ld32(const T* p) {
#ifdef GPTRAIN_EMU
    emu::aligned(p, 4);
#endif
    return *reinterpret_cast<const u32*>(p);
}
template <typename T> __device__ __forceinline__ void st32(T* p, u32 v) {
#ifdef GPTRAIN_EMU
    emu::aligned(p, 4);
#endif
    *reinterpret_cast<u32*>(p) = v;
}

// 16 bytes of storage values (8 bf16/f16 or 4 f32), read or written by one 128-bit access:
// the widest a thread makes, so that memory-bound kernels move a warp's 512 bytes per
// instruction. p must be 16-byte aligned (the emulator checks).
template <typename T> struct __align__(16) Pack {
    static constexpr u32 N = 16 / sizeof(T);
    T v[N];
};
template <typename T> __device__ __forceinline__ Pack<T> ld128(const T* p) {
    Pack<T> r;
#ifdef GPTRAIN_EMU
    emu::aligned(p, 16);
    std::memcpy(&r, p, 16);
#else
    *reinterpret_cast<uint4*>(&r) = *reinterpret_cast<const uint4*>(p);
#endif
    return r;
}
template <typename T> __device__ __forceinline__ void st128(T* p, const Pack<T>& x) {
#ifdef GPTRAIN_EMU
    emu::aligned(p, 16);
    std::memcpy(p, &x, 16);
#else
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(&x);
#endif
}
// Whether every pointer given is 16-byte aligned (null ones count as aligned).
__device__ __forceinline__ bool aligned16(const void* a, const void* b = nullptr, const void* c = nullptr) {
    return (((u64)a | (u64)b | (u64)c) & 15) == 0;
}

// src/rng.rs: splitmix, mix, uniform_f32; and Dropout::scale of src/backend/ops.rs, bit for bit.
__device__ __forceinline__ u64 splitmix(u64 z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ u64 mix(u64 key, u64 x) { return splitmix(key ^ splitmix(x + 0x632BE59BD9B4E019ull)); }
__device__ __forceinline__ float uniform_f32(u64 bits) { return (float)(bits >> 40) * (1.0f / 16777216.0f); }
// The multiplier of element `idx`: 0 when dropped, 1/(1-p) when kept (p = 0: always 1).
__device__ __forceinline__ float drop_scale(float p, u64 key, u64 idx) {
    if (p <= 0.0f) return 1.0f;
    return uniform_f32(mix(key, idx)) < p ? 0.0f : 1.0f / (1.0f - p);
}

// Warp reductions: a butterfly of shuffles, the same order every time.
template <typename F> __device__ __forceinline__ float warp_reduce(float x, F f) {
    for (int o = 16; o > 0; o >>= 1) x = f(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float add_f(float a, float b) { return a + b; }
__device__ __forceinline__ float max_f(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ float warp_sum(float x) { return warp_reduce(x, add_f); }
__device__ __forceinline__ float warp_max(float x) { return warp_reduce(x, max_f); }
// Block reductions over blockDim.x threads (a multiple of 32, at most 1024); every thread gets
// the result. `shared` holds 32 floats; `identity` fills the lanes past the block's warps.
template <typename F> __device__ float block_reduce(float x, float* shared, float identity, F f) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    x = warp_reduce(x, f);
    __syncthreads();
    if (lane == 0) shared[warp] = x;
    __syncthreads();
    x = lane < warps ? shared[lane] : identity;
    return warp_reduce(x, f);
}
__device__ float block_sum(float x, float* shared) { return block_reduce(x, shared, 0.0f, add_f); }
__device__ float block_max(float x, float* shared) { return block_reduce(x, shared, NEG_INF, max_f); }

// Instantiates `NAME_f32`, `NAME_bf16`, `NAME_f16` from a macro `NAME##_KERNEL(T, S)`. A source
// compiled with ONLY_F32, ONLY_BF16 or ONLY_F16 defined instantiates that storage type's alone
// (compile.rs: a run compiles the kernels of the types it uses, when it first uses them).
#if defined(ONLY_F32)
#define FOR_STORAGE(K) K(float, f32)
#elif defined(ONLY_BF16)
#define FOR_STORAGE(K) K(bf16_t, bf16)
#elif defined(ONLY_F16)
#define FOR_STORAGE(K) K(f16_t, f16)
#else
#define FOR_STORAGE(K) K(float, f32) K(bf16_t, bf16) K(f16_t, f16)
#endif
