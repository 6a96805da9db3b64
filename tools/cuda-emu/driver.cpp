// gptrain's CUDA emulator: a CUDA driver (libcuda) that runs on the CPU. One "GPU", named
// `cuda-emu`, whose memory is host memory with a guard page after every buffer; every copy is
// checked against the buffers it touches; kernels are the host libraries the fake NVRTC builds,
// run by emu.h one block at a time, one launch at a time. Everything is synchronous: a stream
// is the calling thread.
//
// Settings: GPTRAIN_EMU_CC (compute capability, default 9.0; or one per GPU, "7.0,9.0"), GPTRAIN_EMU_MEMORY_GIB (default 16),
// GPTRAIN_EMU_TRACE (set: every launch, its shape and host time, every copy, and cuBLASLt's
// heuristic queries and products, on stderr),
// GPTRAIN_EMU_FAIL_ALLOC (N: the N-th device allocation fails with out-of-memory),
// GPTRAIN_EMU_STATIC_SHARED (bytes of static shared memory every kernel reports, counted in
// its 48 KiB as a card counts it; default 0), GPTRAIN_EMU_BLOCK_ORDER (`reverse`: each launch's
// blocks last first, as a GPU may run them; emu.h), GPTRAIN_EMU_MAX_THREADS (N: every kernel
// reports at most N threads per block, as a card does for a kernel whose registers allow no more).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <string>
#include <sys/mman.h>
#include <unistd.h>
#include <vector>

namespace {
typedef int CUresult;
enum { SUCCESS = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, INVALID_DEVICE = 101, INVALID_IMAGE = 200,
       INVALID_CONTEXT = 201, INVALID_HANDLE = 400, NOT_FOUND = 500, NOT_READY = 600, LAUNCH_FAILED = 719, NOT_SUPPORTED = 801 };

struct Launch { // emu.h's emu::Launch
    unsigned grid[3], block[3];
    unsigned shared;
    void** params;
    char error[256];
};
struct Module { void* lib; std::string path; };
struct Function {
    void (*entry)(Launch*);
    std::string name;
    unsigned static_shared;           // CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: GPTRAIN_EMU_STATIC_SHARED, else 0
    unsigned max_dynamic;             // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: 48 KiB less the static until opted in
    unsigned max_threads;             // CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: its __launch_bounds__, else 1024 (max_threads)
};
// The static shared memory the driver reports for every kernel (bytes): the emulator's kernels
// keep theirs in host memory, so a test says how much a real card would count (sm_90 gives
// kernels with dynamic shared memory 1 KiB) with GPTRAIN_EMU_STATIC_SHARED.
unsigned static_shared() {
    const char* s = std::getenv("GPTRAIN_EMU_STATIC_SHARED");
    return s ? (unsigned)std::atoi(s) : 0u;
}
// The threads per block a kernel with `bound` (its __launch_bounds__, else 1024) reports: at most
// GPTRAIN_EMU_MAX_THREADS when set, as a card reports fewer for a kernel short of registers.
unsigned max_threads(unsigned bound) {
    const char* s = std::getenv("GPTRAIN_EMU_MAX_THREADS");
    return s && std::atoi(s) > 0 ? std::min(bound, (unsigned)std::atoi(s)) : bound;
}
struct Event { double ms; };
struct Buffer { uintptr_t map; size_t map_len, size; };

std::mutex mu;
std::map<uintptr_t, Buffer> buffers; // by start address
size_t allocated = 0;
bool initialised = false;
int context_tag, stream_tag;
int current_device = 0; // the GPU whose primary context was retained last (one context at a time)
const char* running = nullptr; // the kernel being run, for the out-of-bounds message
const size_t PAGE = 4096;

size_t memory() {
    const char* g = std::getenv("GPTRAIN_EMU_MEMORY_GIB");
    return (size_t)((g ? std::atof(g) : 16.0) * (double)(1ull << 30));
}
// GPU `dev`'s compute capability: GPTRAIN_EMU_CC, one for every GPU ("8.9") or one per GPU
// ("7.0,9.0": the last for any GPU past the list)
void cc(int dev, int* major, int* minor) {
    const char* s = std::getenv("GPTRAIN_EMU_CC");
    for (int i = 0; s && i < dev && std::strchr(s, ','); i++) s = std::strchr(s, ',') + 1;
    if (!s || std::sscanf(s, "%d.%d", major, minor) != 2) *major = 9, *minor = 0;
}

// The most shared memory a block of GPU `dev` may use once its kernel opts in, static and
// dynamic together (CUDA's table of compute capabilities: Volta 96 KiB, Turing 64, A100 163,
// other Ampere and Ada 99, Hopper 227, the sm_120 cards 99).
unsigned optin_limit(int dev) {
    int major, minor;
    cc(dev, &major, &minor);
    unsigned kib = major == 7 ? (minor == 5 ? 64 : 96) : major == 8 ? (minor == 0 ? 163 : 99) : major == 12 ? 99 : 227;
    return kib << 10;
}

// The buffer holding [p, p + n), or null.
const Buffer* holding(uintptr_t p, size_t n) {
    auto it = buffers.upper_bound(p);
    if (it == buffers.begin()) return nullptr;
    --it;
    return p >= it->first && p + n <= it->first + it->second.size ? &it->second : nullptr;
}

CUresult bad_range(const char* what, uintptr_t p, size_t n) {
    std::fprintf(stderr, "cuda-emu: %s of %zu bytes at 0x%lx is not inside one device buffer\n", what, n, (unsigned long)p);
    return INVALID_VALUE;
}

void on_segv(int, siginfo_t* si, void*) {
    char msg[256];
    uintptr_t a = (uintptr_t)si->si_addr;
    bool guard = false;
    for (auto& [start, b] : buffers) guard |= a >= start + b.size && a < b.map + b.map_len;
    int n = std::snprintf(msg, sizeof msg, "cuda-emu: %s at 0x%lx in kernel %s\n",
                          guard ? "out-of-bounds access past the end of a device buffer" : "invalid memory access", (unsigned long)a,
                          running ? running : "(none: host code)");
    (void)!write(2, msg, n > 0 ? (size_t)n : 0);
    _exit(139);
}

CUresult alloc(uintptr_t* out, size_t n) {
    static bool trace = std::getenv("GPTRAIN_EMU_TRACE") != nullptr;
    if (trace) std::fprintf(stderr, "cuda-emu: allocation of %zu bytes\n", n);
    std::lock_guard<std::mutex> g(mu);
    if (allocated + n > memory()) return OUT_OF_MEMORY;
    // GPTRAIN_EMU_FAIL_ALLOC=N: the N-th allocation (from 1) fails, as a full card would mid-run
    static long fail_at = std::getenv("GPTRAIN_EMU_FAIL_ALLOC") ? std::atol(std::getenv("GPTRAIN_EMU_FAIL_ALLOC")) : 0;
    static long count = 0;
    if (++count == fail_at) return OUT_OF_MEMORY;
    size_t body = (n + 255) / 256 * 256, len = (body + PAGE - 1) / PAGE * PAGE + PAGE;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return OUT_OF_MEMORY;
    uintptr_t guard = (uintptr_t)m + len - PAGE;
    mprotect((void*)guard, PAGE, PROT_NONE);
    uintptr_t start = guard - body;
    std::memset((void*)start, 0xff, body); // fresh device memory is garbage: NaN bytes
    buffers[start] = Buffer{(uintptr_t)m, len, n};
    allocated += n;
    *out = start;
    return SUCCESS;
}

CUresult release(uintptr_t p) {
    std::lock_guard<std::mutex> g(mu);
    auto it = buffers.find(p);
    if (it == buffers.end()) return INVALID_VALUE;
    munmap((void*)it->second.map, it->second.map_len);
    allocated -= it->second.size;
    buffers.erase(it);
    return SUCCESS;
}

CUresult copy(uintptr_t dst, bool dst_dev, uintptr_t src, bool src_dev, size_t n, const char* what) {
    static bool trace = std::getenv("GPTRAIN_EMU_TRACE") != nullptr;
    if (trace) std::fprintf(stderr, "cuda-emu: %s of %zu bytes\n", what, n);
    std::lock_guard<std::mutex> g(mu);
    if (dst_dev && !holding(dst, n)) return bad_range(what, dst, n);
    if (src_dev && !holding(src, n)) return bad_range(what, src, n);
    std::memmove((void*)dst, (const void*)src, n);
    return SUCCESS;
}

double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
} // namespace

extern "C" {
CUresult cuInit(unsigned) {
    if (!initialised) {
        struct sigaction sa{};
        sa.sa_sigaction = on_segv;
        sa.sa_flags = SA_SIGINFO;
        sigaction(SIGSEGV, &sa, nullptr);
        initialised = true;
    }
    return SUCCESS;
}
// The CUDA version this driver stands in for (build.sh: 13000 beside the .so.13 libraries, 12040
// in cuda12/ beside .so.12 ones, where cuEventElapsedTime_v2, new in 12.8, does not exist)
CUresult cuDriverGetVersion(int* v) { *v = EMU_CUDA; return SUCCESS; }
// GPTRAIN_EMU_GPUS=N (default 1) GPUs, all of them this one emulated GPU
static int gpus() { return std::getenv("GPTRAIN_EMU_GPUS") ? std::max(1, std::atoi(std::getenv("GPTRAIN_EMU_GPUS"))) : 1; }
CUresult cuDeviceGetCount(int* n) { *n = gpus(); return SUCCESS; }
CUresult cuDeviceGet(int* d, int ordinal) { if (ordinal < 0 || ordinal >= gpus()) return INVALID_DEVICE; *d = ordinal; return SUCCESS; }
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, len, "cuda-emu (the CPU emulating a GPU)");
    return SUCCESS;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) { *b = memory(); return SUCCESS; }
// "cuda-emu" and GPTRAIN_EMU_GPU (else 0): processes given different numbers emulate different GPUs
CUresult cuDeviceGetUuid_v2(unsigned char* uuid, int) {
    std::memset(uuid, 0, 16);
    std::memcpy(uuid, "cuda-emu", 8);
    const char* g = std::getenv("GPTRAIN_EMU_GPU");
    uint32_t n = g ? (uint32_t)std::atoi(g) : 0;
    std::memcpy(uuid + 8, &n, sizeof n);
    return SUCCESS;
}
CUresult cuDeviceGetUuid(unsigned char* uuid, int d) { return cuDeviceGetUuid_v2(uuid, d); }
CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
    int major, minor;
    cc(dev, &major, &minor);
    switch (attr) {
    case 75: *v = major; break;             // COMPUTE_CAPABILITY_MAJOR
    case 76: *v = minor; break;             // COMPUTE_CAPABILITY_MINOR
    case 16: *v = 4; break;                 // MULTIPROCESSOR_COUNT
    case 1: *v = 1024; break;               // MAX_THREADS_PER_BLOCK
    case 8: *v = 48 << 10; break;           // MAX_SHARED_MEMORY_PER_BLOCK
    case 97: *v = (int)optin_limit(dev); break; // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
    case 10: *v = 32; break;                // WARP_SIZE
    case 115: *v = 0; break;                // MEMORY_POOLS_SUPPORTED: plain allocations
    default: *v = 0; break;
    }
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) {
    *ctx = &context_tag;
    current_device = dev;
    return SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return SUCCESS; }
CUresult cuDevicePrimaryCtxRelease(int) { return SUCCESS; }
CUresult cuCtxSetCurrent(void*) { return SUCCESS; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = &context_tag; return SUCCESS; }
CUresult cuCtxGetDevice(int* d) { *d = current_device; return SUCCESS; }
CUresult cuCtxPushCurrent_v2(void*) { return SUCCESS; }
CUresult cuCtxPopCurrent_v2(void** ctx) { if (ctx) *ctx = &context_tag; return SUCCESS; }
CUresult cuCtxSynchronize() { return SUCCESS; }
CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    std::lock_guard<std::mutex> g(mu);
    *total = memory();
    *free = *total - allocated;
    return SUCCESS;
}

CUresult cuStreamCreate(void** s, unsigned) { *s = &stream_tag; return SUCCESS; }
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) { *s = &stream_tag; return SUCCESS; }
CUresult cuStreamDestroy_v2(void*) { return SUCCESS; }
CUresult cuStreamSynchronize(void*) { return SUCCESS; }
// Work is done when it returns, so a stream is never busy; except once the emulator's NCCL has
// left a collective waiting for a rank that never came (GPTRAIN_EMU_NCCL_HANG), as a GPU's NCCL
// kernel spins: from then on the stream stays busy.
std::atomic<bool> stream_stuck{false};
extern "C" void emu_stream_stuck() { stream_stuck = true; }
CUresult cuStreamQuery(void*) { return stream_stuck ? NOT_READY : SUCCESS; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return SUCCESS; }

CUresult cuEventCreate(void** e, unsigned) { *e = new Event{0}; return SUCCESS; }
CUresult cuEventDestroy_v2(void* e) { delete static_cast<Event*>(e); return SUCCESS; }
CUresult cuEventRecord(void* e, void*) { static_cast<Event*>(e)->ms = now_ms(); return SUCCESS; }
CUresult cuEventRecordWithFlags(void* e, void*, unsigned) { static_cast<Event*>(e)->ms = now_ms(); return SUCCESS; }
CUresult cuEventSynchronize(void*) { return SUCCESS; }
CUresult cuEventQuery(void*) { return SUCCESS; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) { *ms = (float)(static_cast<Event*>(b)->ms - static_cast<Event*>(a)->ms); return SUCCESS; }
#if EMU_CUDA >= 12080
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }
#endif

CUresult cuMemAlloc_v2(uintptr_t* p, size_t n) { return alloc(p, n); }
CUresult cuMemAllocAsync(uintptr_t* p, size_t n, void*) { return alloc(p, n); }
CUresult cuMemFree_v2(uintptr_t p) { return release(p); }
CUresult cuMemFreeAsync(uintptr_t p, void*) { return release(p); }
CUresult cuMemsetD8_v2(uintptr_t p, unsigned char v, size_t n) {
    std::lock_guard<std::mutex> g(mu);
    if (!holding(p, n)) return bad_range("memset", p, n);
    std::memset((void*)p, v, n);
    return SUCCESS;
}
CUresult cuMemsetD8Async(uintptr_t p, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(p, v, n); }
CUresult cuMemcpyHtoD_v2(uintptr_t d, const void* h, size_t n) { return copy(d, true, (uintptr_t)h, false, n, "host-to-device copy"); }
CUresult cuMemcpyHtoDAsync_v2(uintptr_t d, const void* h, size_t n, void*) { return cuMemcpyHtoD_v2(d, h, n); }
CUresult cuMemcpyDtoH_v2(void* h, uintptr_t d, size_t n) { return copy((uintptr_t)h, false, d, true, n, "device-to-host copy"); }
CUresult cuMemcpyDtoHAsync_v2(void* h, uintptr_t d, size_t n, void*) { return cuMemcpyDtoH_v2(h, d, n); }
CUresult cuMemcpyDtoD_v2(uintptr_t d, uintptr_t s, size_t n) { return copy(d, true, s, true, n, "device-to-device copy"); }
CUresult cuMemcpyDtoDAsync_v2(uintptr_t d, uintptr_t s, size_t n, void*) { return cuMemcpyDtoD_v2(d, s, n); }
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) { *p = std::malloc(n ? n : 1); return *p ? SUCCESS : OUT_OF_MEMORY; }
CUresult cuMemFreeHost(void* p) { std::free(p); return SUCCESS; }
CUresult cuMemHostRegister_v2(void*, size_t, unsigned) { return SUCCESS; }
CUresult cuMemHostUnregister(void*) { return SUCCESS; }

// A "CUBIN" from the fake NVRTC: a host library, loaded from a private copy.
CUresult cuModuleLoadData(void** module, const void* image) {
    const unsigned char* bin = static_cast<const unsigned char*>(image);
    if (std::memcmp(bin, "\x7f" "ELF", 4) != 0) return INVALID_IMAGE;
    // the ELF section headers end the file: e_shoff + e_shnum * e_shentsize
    uint64_t shoff;
    uint16_t shentsize, shnum;
    std::memcpy(&shoff, bin + 0x28, 8);
    std::memcpy(&shentsize, bin + 0x3a, 2);
    std::memcpy(&shnum, bin + 0x3c, 2);
    size_t len = shoff + (size_t)shnum * shentsize;
    char path[] = "/tmp/gptrain-cuda-emu-module-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return INVALID_IMAGE;
    bool ok = write(fd, bin, len) == (ssize_t)len;
    close(fd);
    void* lib = ok ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : nullptr;
    unlink(path);
    if (!lib) {
        std::fprintf(stderr, "cuda-emu: cannot load a module: %s\n", dlerror());
        return INVALID_IMAGE;
    }
    *module = new Module{lib, path};
    return SUCCESS;
}
CUresult cuModuleUnload(void* m) {
    dlclose(static_cast<Module*>(m)->lib);
    delete static_cast<Module*>(m);
    return SUCCESS;
}
CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
    std::string entry = std::string("emu_launch_") + name;
    void* sym = dlsym(static_cast<Module*>(m)->lib, entry.c_str());
    if (!sym) return NOT_FOUND;
    unsigned st = static_shared();
    // the kernel's __launch_bounds__, as the fake NVRTC recorded it (else 1024)
    auto bound = static_cast<const unsigned*>(dlsym(static_cast<Module*>(m)->lib, (std::string("emu_max_threads_") + name).c_str()));
    *f = new Function{reinterpret_cast<void (*)(Launch*)>(sym), name, st, (48u << 10) - std::min(st, 48u << 10), max_threads(bound ? *bound : 1024u)};
    return SUCCESS;
}
// CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK (0): the kernel's __launch_bounds__, else 1024 (the
// emulator has no registers to run out of); SHARED_SIZE_BYTES (1) and
// MAX_DYNAMIC_SHARED_SIZE_BYTES (8) as above; the rest 0
CUresult cuFuncGetAttribute(int* v, int attr, void* f) {
    if (!f) return INVALID_VALUE;
    Function* fn = static_cast<Function*>(f);
    *v = attr == 0 ? (int)fn->max_threads : attr == 1 ? (int)fn->static_shared : attr == 8 ? (int)fn->max_dynamic : 0;
    return SUCCESS;
}
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES (8) opts a kernel in to more dynamic shared
// memory per block: static and dynamic together up to the device's
// MAX_SHARED_MEMORY_PER_BLOCK_OPTIN (by compute capability: optin_limit)
CUresult cuFuncSetAttribute(void* f, int attr, int v) {
    if (!f) return INVALID_VALUE;
    if (attr == 8) {
        if (v < 0 || (unsigned)v + static_cast<Function*>(f)->static_shared > optin_limit(current_device)) return INVALID_VALUE;
        static_cast<Function*>(f)->max_dynamic = (unsigned)v;
    }
    return SUCCESS;
}
CUresult cuFuncSetCacheConfig(void*, int) { return SUCCESS; }

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, void*,
                        void** params, void** extra) {
    if (!f || extra) return INVALID_VALUE;
    Function* fn = static_cast<Function*>(f);
    if (bx * by * bz > fn->max_threads) {
        std::fprintf(stderr, "cuda-emu: %s launched with %u threads per block, over the %u it reports\n", fn->name.c_str(), bx * by * bz,
                     fn->max_threads);
        return INVALID_VALUE;
    }
    if (shared > fn->max_dynamic) {
        std::fprintf(stderr,
                     "cuda-emu: %s asks for %u bytes of dynamic shared memory, over the %u it may use (48 KiB less its %u static unless opted in)\n",
                     fn->name.c_str(), shared, fn->max_dynamic, fn->static_shared);
        return INVALID_VALUE;
    }
    Launch l{{gx, gy, gz}, {bx, by, bz}, shared, params, {0}};
    // one launch at a time in the process: a module runs its blocks on one set of fibers
    static std::mutex launching;
    std::lock_guard<std::mutex> one(launching);
    static bool trace = std::getenv("GPTRAIN_EMU_TRACE") != nullptr;
    double t0 = trace ? now_ms() : 0.0;
    running = fn->name.c_str();
    fn->entry(&l);
    running = nullptr;
    if (trace)
        std::fprintf(stderr, "cuda-emu: %s <<<(%u,%u,%u), (%u,%u,%u), %u>>> %.3f ms\n", fn->name.c_str(), gx, gy, gz, bx, by, bz, shared,
                     now_ms() - t0);
    if (l.error[0]) {
        std::fprintf(stderr, "cuda-emu: %s\n", l.error);
        return LAUNCH_FAILED;
    }
    return SUCCESS;
}

CUresult cuGetErrorString(CUresult e, const char** s) {
    switch (e) {
    case SUCCESS: *s = "no error"; break;
    case INVALID_VALUE: *s = "invalid argument"; break;
    case OUT_OF_MEMORY: *s = "out of memory"; break;
    case LAUNCH_FAILED: *s = "unspecified launch failure"; break;
    default: *s = "cuda-emu error"; break;
    }
    return SUCCESS;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
    case SUCCESS: *s = "CUDA_SUCCESS"; break;
    case INVALID_VALUE: *s = "CUDA_ERROR_INVALID_VALUE"; break;
    case OUT_OF_MEMORY: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
    case LAUNCH_FAILED: *s = "CUDA_ERROR_LAUNCH_FAILED"; break;
    case NOT_FOUND: *s = "CUDA_ERROR_NOT_FOUND"; break;
    default: *s = "CUDA_ERROR_UNKNOWN"; break;
    }
    return SUCCESS;
}
}
