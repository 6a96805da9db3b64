// The CUDA emulator checks itself: that its warp shuffles, block barriers and mma compute what a
// GPU does, that a barrier not every thread reaches, a misaligned access and each broken rule of
// warp collectives and cp.async it knows are reported, that a launch's blocks can run last
// first, and that the fake driver stops a write past a buffer's end and a copy out of range. Run by tests/cuda_emu.rs:
//     c++ -std=c++17 -O1 -I DIR tools/cuda-emu/selftest.cpp -o selftest -ldl && ./selftest DIR
// (DIR: a folder built by build.sh). Prints one line per check; exits 1 if any fails.
#include "emu.h"
#include <dlfcn.h>
#include <string>
#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

// out[block] = the sum of in's 32 values of that block, by a butterfly of shuffles
extern "C" __global__ void warp_sums(float* out, const float* in) {
    float x = in[blockIdx.x * 32 + threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (threadIdx.x == 0) out[blockIdx.x] = x;
}

// out[block] = the sum of 128 values, a tree in shared memory with a barrier per level
extern "C" __global__ void tree_sums(float* out, const float* in) {
    __shared__ float s[128];
    s[threadIdx.x] = in[blockIdx.x * 128 + threadIdx.x];
    __syncthreads();
    for (unsigned h = 64; h > 0; h >>= 1) {
        if (threadIdx.x < h) s[threadIdx.x] += s[threadIdx.x + h];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = s[0];
}

// half of warp 0 waits for the block, the other half for its warp: a deadlock on a GPU
extern "C" __global__ void divergent(float* out) {
    if (threadIdx.x < 16) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = 1.0f;
}

// lanes 16-31 exit, lanes 0-15 read them by a shuffle: undefined on a GPU
extern "C" __global__ void shuffle_from_exited(float* out) {
    if (threadIdx.x >= 16) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 16);
}

// lanes 16-31 exit, the rest take a ballot: defined (the exited lanes' bits are 0)
extern "C" __global__ void ballot_after_exits(unsigned* out) {
    if (threadIdx.x >= 16) return;
    unsigned m = __ballot_sync(0xffffffffu, threadIdx.x % 2 == 0);
    if (threadIdx.x == 0) *out = m;
}

// a member mask naming half the warp (which 0-2: shuffle, ballot, __syncwarp) or a shuffle of
// width 16 (which 3): the emulator models neither, so it refuses them
extern "C" __global__ void partial_warp(float* out, int which) {
    if (which == 0) out[threadIdx.x] = __shfl_xor_sync(0xffffu, 1.0f, 1);
    if (which == 1) out[threadIdx.x] = (float)__ballot_sync(0xffffu, true);
    if (which == 2) __syncwarp(0xffffu);
    if (which == 3) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1, 16);
}

// half the warp at a shuffle, the other half at __syncwarp: released together by a barrier
// that only counts lanes, undefined on a GPU
extern "C" __global__ void mixed_collectives(float* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    else __syncwarp();
}

// half the warp at ldmatrix.x4, the other half at ldmatrix.x2: two instructions
extern "C" __global__ void mixed_ldmatrix(uint32_t* out) {
    __shared__ __align__(16) uint16_t tile[32][8];
    for (unsigned e = threadIdx.x; e < 32 * 8; e += 32) tile[e / 8][e % 8] = 0;
    __syncwarp();
    emu::ldmatrix(out + 4 * threadIdx.x, &tile[threadIdx.x][0], threadIdx.x < 16 ? 4 : 2, false);
}

// an mma after lane 31 exited: it reads every lane's operands
extern "C" __global__ void mma_missing_lane(float* d) {
    if (threadIdx.x == 31) return;
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    emu::mma16816(d + 4 * threadIdx.x, a, b, true);
}

// a cp.async PTX leaves undefined (which 0-3): 12 bytes, 20 of 16 bytes from src, dst off its
// 16-byte alignment, src off it with nothing read from it
extern "C" __global__ void bad_copy(const float* in, int which) {
    __shared__ __align__(16) float s[8];
    if (which == 0) emu::cp_async(s, in, 12, 12);
    if (which == 1) emu::cp_async(s, in, 16, 20);
    if (which == 2) emu::cp_async(s + 1, in, 16, 16);
    if (which == 3) emu::cp_async(s, in + 1, 16, 0);
    emu::cp_commit();
    emu::cp_wait(0);
}

// d(16x8) = a(16x16) b(16x8) (row-major floats) by one warp's mma.m16n8k16 in bf16, each
// fragment packed from PTX ISA's per-element tables: a_i at row g + 8((i/2)%2), column
// 2t + i%2 + 8(i/4); b_i at row 2t + i%2 + 8(i/2), column g; c_i at row g + 8(i/2), column
// 2t + i%2 (lane 4g + t; element i in word i/2, half i%2)
extern "C" __global__ void mma_product(float* d, const float* a, const float* b) {
    unsigned g = threadIdx.x / 4, t = threadIdx.x % 4;
    uint32_t af[4] = {0, 0, 0, 0}, bf[2] = {0, 0};
    for (unsigned i = 0; i < 8; i++) {
        unsigned row = g + 8 * ((i / 2) % 2), col = 2 * t + i % 2 + 8 * (i / 4);
        af[i / 2] |= (uint32_t)halfemu::f32_to_bf16(a[row * 16 + col]) << (16 * (i % 2));
    }
    for (unsigned i = 0; i < 4; i++) {
        unsigned row = 2 * t + i % 2 + 8 * (i / 2);
        bf[i / 2] |= (uint32_t)halfemu::f32_to_bf16(b[row * 8 + g]) << (16 * (i % 2));
    }
    float c[4] = {0, 0, 0, 0};
    emu::mma16816(c, af, bf, true);
    for (unsigned i = 0; i < 4; i++) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = c[i];
}

// out[m][lane] = the words ldmatrix.x4 (trans or not) gives each lane from four 8x8 matrices
// of 16-bit values in shared memory, matrix m's row r at tile[8m + r][0..8] (rows padded to 16
// values, 16-byte aligned as ldmatrix requires)
extern "C" __global__ void ldmatrix_words(uint32_t* out, const uint16_t* in, int trans) {
    __shared__ __align__(16) uint16_t tile[32][16];
    for (unsigned e = threadIdx.x; e < 32 * 8; e += 32) tile[e / 8][e % 8] = in[e];
    __syncwarp();
    uint32_t r[4];
    emu::ldmatrix(r, &tile[threadIdx.x][0], 4, trans != 0);
    for (unsigned m = 0; m < 4; m++) out[m * 32 + threadIdx.x] = r[m];
}

// d(16x8) = a(16x16) b(16x8) as the attention kernels compute it: b stored row-major (k, n), its
// fragment loaded by ldmatrix.x2.trans (lane l: row l % 16), a's packed as in mma_product
extern "C" __global__ void mma_from_ldmatrix(float* d, const float* a, const float* b) {
    __shared__ __align__(16) uint16_t bs[16][8];
    for (unsigned e = threadIdx.x; e < 16 * 8; e += 32) bs[e / 8][e % 8] = halfemu::f32_to_bf16(b[e]);
    __syncwarp();
    unsigned g = threadIdx.x / 4, t = threadIdx.x % 4;
    uint32_t af[4] = {0, 0, 0, 0}, bf[2];
    for (unsigned i = 0; i < 8; i++) {
        unsigned row = g + 8 * ((i / 2) % 2), col = 2 * t + i % 2 + 8 * (i / 4);
        af[i / 2] |= (uint32_t)halfemu::f32_to_bf16(a[row * 16 + col]) << (16 * (i % 2));
    }
    emu::ldmatrix(bf, &bs[threadIdx.x % 16][0], 2, true);
    float c[4] = {0, 0, 0, 0};
    emu::mma16816(c, af, bf, true);
    for (unsigned i = 0; i < 4; i++) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = c[i];
}

// out: what one thread reads of two 16-byte cp.async groups (4 floats each, the second with
// only 8 bytes from src): before any wait, after wait_group 1, after wait_group 0
extern "C" __global__ void async_copies(float* out, const float* in) {
    __shared__ __align__(16) float s[8];
    emu::cp_async(&s[0], in, 16, 16);
    emu::cp_commit();
    emu::cp_async(&s[4], in + 4, 16, 8);
    emu::cp_commit();
    for (int i = 0; i < 8; i++) out[i] = s[i];
    emu::cp_wait(1);
    for (int i = 0; i < 8; i++) out[8 + i] = s[i];
    emu::cp_wait(0);
    for (int i = 0; i < 8; i++) out[16 + i] = s[i];
}

// out[b] = out[b - 1] + 1 (out[0] = 1): a block reading what an earlier block of its launch
// wrote, right only when the blocks run in order (a race on a GPU)
extern "C" __global__ void block_chain(float* out) {
    if (threadIdx.x == 0) out[blockIdx.x] = blockIdx.x == 0 ? 1.0f : out[blockIdx.x - 1] + 1.0f;
}

// a 4-byte read one byte off its alignment, as common.cuh's ld32 checks it
extern "C" __global__ void misaligned(float* out) { emu::aligned(reinterpret_cast<char*>(out) + 1, 4); }

static int failures = 0;
static void check(bool ok, const std::string& what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
    failures += !ok;
}

template <class... A> static std::string run(void (*k)(A...), unsigned grid, unsigned block, void** params, const char* name) {
    emu::Launch l{{grid, 1, 1}, {block, 1, 1}, 0, params, {0}};
    emu::launch(k, &l, name);
    return l.error;
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: selftest DIR (the folder build.sh made)\n");
        return 2;
    }
    float in[4 * 128], out[4];
    for (int i = 0; i < 4 * 128; i++) in[i] = (float)(i % 7) - 3.0f;
    float* pin = in;
    float* pout = out;
    void* params[] = {&pout, &pin};

    std::string e = run(warp_sums, 4, 32, params, "warp_sums");
    bool ok = e.empty();
    for (int b = 0; b < 4; b++) {
        float want = 0.0f;
        for (int i = 0; i < 32; i++) want += in[b * 32 + i];
        ok &= out[b] == want;
    }
    check(ok, "warp shuffles sum each warp's 32 values " + e);

    e = run(tree_sums, 4, 128, params, "tree_sums");
    ok = e.empty();
    for (int b = 0; b < 4; b++) {
        float want = 0.0f;
        for (int i = 0; i < 128; i++) want += in[b * 128 + i];
        ok &= out[b] == want;
    }
    check(ok, "__syncthreads orders a shared-memory tree " + e);

    void* one[] = {&pout};
    e = run(divergent, 1, 64, one, "divergent");
    check(e.find("deadlock") != std::string::npos, "a barrier half a warp never reaches is reported: " + e);

    e = run(shuffle_from_exited, 1, 32, one, "shuffle_from_exited");
    check(e.find("reads lane 16, which exited") != std::string::npos, "a shuffle that reads an exited lane is reported: " + e);
    unsigned votes = 0, *pvotes = &votes;
    void* vp[] = {&pvotes};
    e = run(ballot_after_exits, 1, 32, vp, "ballot_after_exits");
    check(e.empty() && votes == 0x5555u, "a ballot counts exited lanes as false " + e);
    const char* partial[] = {"__shfl_xor_sync with mask 0xffff", "__ballot_sync with mask 0xffff", "__syncwarp with mask 0xffff",
                             "__shfl_xor_sync of width 16"};
    for (int which = 0; which < 4; which++) {
        void* pp[] = {&pout, &which};
        e = run(partial_warp, 1, 32, pp, "partial_warp");
        check(e.find(partial[which]) != std::string::npos, std::string("a partial warp is refused: ") + e);
    }
    e = run(mixed_collectives, 1, 32, one, "mixed_collectives");
    check(e.find("lane 0 at __shfl_xor_sync of 4 bytes, lane 16 at __syncwarp") != std::string::npos,
          "lanes at a shuffle and at __syncwarp are reported: " + e);
    uint32_t words[4 * 32];
    uint32_t* pwords = words;
    void* wp[] = {&pwords};
    e = run(mixed_ldmatrix, 1, 32, wp, "mixed_ldmatrix");
    check(e.find("lane 0 at ldmatrix .x4, lane 16 at ldmatrix .x2") != std::string::npos, "ldmatrix .x4 and .x2 in one warp are reported: " + e);

    float ma[16 * 16], mb[16 * 8], md[16 * 8];
    for (int i = 0; i < 16 * 16; i++) ma[i] = (float)(i % 5) - 2.0f;
    for (int i = 0; i < 16 * 8; i++) mb[i] = (float)(i % 3) - 1.0f;
    float *pd = md, *pa = ma, *pb = mb;
    void* mp[] = {&pd, &pa, &pb};
    auto product_ok = [&] { // md = ma mb, exactly (small integers)
        bool same = true;
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 8; c++) {
                float want = 0.0f;
                for (int k = 0; k < 16; k++) want += ma[r * 16 + k] * mb[k * 8 + c];
                same &= md[r * 8 + c] == want;
            }
        return same;
    };
    e = run(mma_product, 1, 32, mp, "mma_product");
    check(e.empty() && product_ok(), "mma.m16n8k16 multiplies fragments laid out as PTX documents " + e);
    e = run(mma_missing_lane, 1, 32, mp, "mma_missing_lane");
    check(e.find("mma.sync .bf16 with 31 of the warp's 32 lanes") != std::string::npos, "an mma without all its lanes is reported: " + e);

    uint16_t lin[32 * 8];
    uint32_t lout[4 * 32];
    for (int i = 0; i < 32 * 8; i++) lin[i] = (uint16_t)(1000 + i);
    uint16_t* plin = lin;
    uint32_t* plout = lout;
    for (int trans = 0; trans < 2; trans++) {
        void* lp[] = {&plout, &plin, &trans};
        e = run(ldmatrix_words, 1, 32, lp, "ldmatrix_words");
        ok = e.empty();
        for (unsigned m = 0; m < 4; m++)
            for (unsigned l = 0; l < 32; l++) {
                unsigned i = l / 4, j = l % 4; // lane 4i + j: row i, columns 2j, 2j+1 (trans: rows 2j, 2j+1, column i)
                unsigned lo = trans ? (2 * j) * 8 + i : i * 8 + 2 * j, hi = trans ? (2 * j + 1) * 8 + i : i * 8 + 2 * j + 1;
                ok &= lout[m * 32 + l] == ((uint32_t)lin[m * 64 + lo] | (uint32_t)lin[m * 64 + hi] << 16);
            }
        check(ok, std::string("ldmatrix.x4") + (trans ? ".trans" : "") + " hands out words as PTX documents " + e);
    }
    std::memset(md, 0, sizeof md);
    e = run(mma_from_ldmatrix, 1, 32, mp, "mma_from_ldmatrix");
    check(e.empty() && product_ok(), "mma.m16n8k16 with B from ldmatrix.x2.trans of a row-major (k, n) tile " + e);

    float cin[8] = {1, 2, 3, 4, 5, 6, 7, 8}, cout[24];
    float *pcin = cin, *pcout = cout;
    void* cp[] = {&pcout, &pcin};
    e = run(async_copies, 1, 1, cp, "async_copies");
    ok = e.empty();
    for (int i = 0; i < 8; i++) {
        ok &= std::isnan(cout[i]);                                       // nothing landed yet
        ok &= i < 4 ? cout[8 + i] == cin[i] : std::isnan(cout[8 + i]);   // the first group only
        ok &= cout[16 + i] == (i < 6 ? cin[i] : 0.0f);                   // both, zeros past 8 bytes
    }
    check(ok, "a cp.async lands at the wait_group that covers it, zero-filled past its source bytes " + e);
    const char* copies[] = {"cp.async of 12 bytes", "cp.async of 16 bytes with 20 from its source", "not both aligned",
                            "not both aligned"};
    alignas(16) float aligned_in[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    float* pain = aligned_in;
    for (int which = 0; which < 4; which++) {
        void* bp[] = {&pain, &which};
        e = run(bad_copy, 1, 1, bp, "bad_copy");
        check(e.find(copies[which]) != std::string::npos, "an undefined cp.async is reported: " + e);
    }

    // GPTRAIN_EMU_BLOCK_ORDER=reverse runs the last block first, so the chain breaks
    float chain[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    for (int reverse = 0; reverse < 2; reverse++) {
        float* pc = chain[reverse];
        void* chp[] = {&pc};
        if (reverse) setenv("GPTRAIN_EMU_BLOCK_ORDER", "reverse", 1);
        else unsetenv("GPTRAIN_EMU_BLOCK_ORDER"); // first first, whatever the caller's setting
        run(block_chain, 4, 32, chp, "block_chain");
        unsetenv("GPTRAIN_EMU_BLOCK_ORDER");
    }
    check(chain[0][3] == 4.0f && chain[1][3] == 1.0f, "GPTRAIN_EMU_BLOCK_ORDER=reverse runs a launch's blocks last first");

    pid_t kid = fork();
    if (kid == 0) {
        run(misaligned, 1, 32, one, "misaligned");
        _exit(0);
    }
    int st = 0;
    waitpid(kid, &st, 0);
    check(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "a misaligned 4-byte access stops the process");

    // the fake driver: a copy out of range is refused, a write past a buffer's end stops the process
    std::string lib = std::string(argv[1]) + "/libcuda.so.1";
    void* h = dlopen(lib.c_str(), RTLD_NOW);
    if (!h) {
        check(false, "open " + lib + ": " + dlerror());
        return 1;
    }
    auto init = (int (*)(unsigned))dlsym(h, "cuInit");
    auto alloc = (int (*)(uintptr_t*, size_t))dlsym(h, "cuMemAlloc_v2");
    auto htod = (int (*)(uintptr_t, const void*, size_t))dlsym(h, "cuMemcpyHtoD_v2");
    uintptr_t p = 0;
    check(init(0) == 0 && alloc(&p, 1000) == 0 && p % 256 == 0, "a device buffer is 256-byte aligned");
    check(htod(p + 900, in, 100) == 0, "a copy inside a buffer is done");
    check(htod(p + 901, in, 100) != 0, "a copy one byte past a buffer's end is refused");
    pid_t child = fork();
    if (child == 0) {
        volatile char* c = reinterpret_cast<volatile char*>(p);
        c[1024] = 1; // the guard page right after the buffer's 256-byte rounding
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    check(WIFEXITED(status) && WEXITSTATUS(status) == 139, "a write past a buffer's end stops the process with exit 139");
    return failures ? 1 : 0;
}
