// gptrain's CUDA emulator, kernel side: what a kernel source of src/backend/cuda/kernels needs
// to compile with the host's C++ compiler and run on the CPU, one block at a time, each CUDA
// thread a fiber. The fake NVRTC (nvrtc.cpp) puts this header in front of every source it
// "compiles"; the fake driver (driver.cpp) calls each kernel's `emu_launch_<name>`.
//
// What it checks as it runs, beyond computing the same results (a check that fires fails the
// launch with an error naming the kernel and block, unless said otherwise):
// - `__syncthreads()` reached by only part of a block, or a warp shuffle/`__syncwarp()` that
//   some lanes of a warp never reach: a deadlock;
// - lanes of one warp at different warp collectives (a shuffle and a `__syncwarp()`, an ldmatrix
//   and an mma, ldmatrix .x4 and .x2...): PTX has every lane execute the same one, with the same
//   qualifiers; a shuffle that reads a lane that exited (the value is undefined on a GPU); an mma
//   or ldmatrix without all 32 lanes; a mask other than the full warp (the emulator models no
//   other), a shuffle width other than 32;
// - a `cp.async` that PTX leaves undefined: a size not 4, 8 or 16, more source bytes than that,
//   an address not aligned to the size;
// - a misaligned access through common.cuh's checked loads: stops the process;
// - dynamic shared memory read before it is written: it starts as NaN bytes (0xff) in every block;
// - a launch shape no GPU takes (over 1024 threads, zero dimensions, over 227 KiB of shared);
// - shared memory read before the `cp.async` that fills it is waited for: the copy lands only
//   at the thread's `cp.async.wait_group` that covers it, and until then its bytes are NaN.
//
// What it cannot check: races between blocks (blocks run one after another; with
// GPTRAIN_EMU_BLOCK_ORDER=reverse last first, so that a block reading another's output shows),
// the memory model, timing. Exited threads count as arrived at a barrier, as on Volta and later.
#pragma once
#include "half.h"
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

struct uint3 { unsigned x, y, z; };

namespace emu {

// One CUDA thread: its saved stack pointer, its index, where it waits and, at a warp collective,
// which (FAILED: it stopped the block, with Block::fault saying why).
enum State : int { RUN, AT_BLOCK, AT_WARP, DONE, FAILED };
// A warp collective and its qualifiers, the same in every lane that meets there: shuffle: the
// value's bytes (8 are two shfl.b32); mma: bf16 (else f16); ldmatrix: num and trans.
enum Op : unsigned char { SYNCWARP, SHFL_XOR, BALLOT, MMA, LDMATRIX };
struct Collective {
    Op op;
    unsigned char a, b;
    bool operator==(const Collective& o) const { return op == o.op && a == o.a && b == o.b; }
};
struct Thread {
    void* sp;
    uint3 tid;
    unsigned linear;
    State state;
    Collective at;
};

// What the fake driver passes to `emu_launch_<name>` (its layout is repeated in driver.cpp).
struct Launch {
    unsigned grid[3], block[3];
    unsigned shared;      // dynamic shared memory, bytes
    void** params;        // cuLaunchKernel's kernelParams
    char error[256];      // empty on success
};

constexpr unsigned MAX_THREADS = 1024;
// Each fiber's stack. Kernels keep little on it; the tops are skewed by a cache line per
// thread so that switching between fibers does not hit the same cache sets every time.
constexpr size_t STACK = 16 << 10;

// A `cp.async` not yet landed: `bytes` at dst, the first `from_src` of them from src, the rest
// zeros; `group` is the thread's commit group it belongs to (the one still open when issued).
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes, from_src, group;
};

struct Block {
    uint3 bid, bdim, gdim;
    Thread threads[MAX_THREADS];
    unsigned n;
    unsigned char* dyn;
    unsigned dyn_bytes;
    void* sched_sp;
    uint64_t slot[MAX_THREADS]; // shuffle values, one per thread
    uint32_t frag[MAX_THREADS][6]; // an mma's operands, one set per thread: A (4 words), B (2)
    std::vector<AsyncCopy> copies[MAX_THREADS]; // each thread's cp.async in flight, oldest first
    unsigned groups[MAX_THREADS];               // each thread's committed groups so far
    Thread* cur;
    void (*body)();
    unsigned char* stacks;
    uint64_t serial; // this block's run, counted over the module's launches (from 1)
    char fault[160]; // why the thread that FAILED stopped the block
};

inline Block& blk() {
    static Block* b = [] {
        Block* p = new Block();
        p->stacks = static_cast<unsigned char*>(std::malloc(STACK * MAX_THREADS));
        return p;
    }();
    return *b;
}

// Switches stacks: saves the callee-saved registers on the current stack, stores its pointer
// in *from, loads `to` and restores the registers saved there (System V x86-64).
extern "C" void emu_switch(void** from, void* to);
asm(R"(
.text
.p2align 4
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");

[[noreturn]] inline void trampoline() {
    Block& b = blk();
    b.body();
    b.cur->state = DONE;
    emu_switch(&b.cur->sp, b.sched_sp);
    std::abort(); // a finished thread is never resumed
}

// A fresh stack for thread i that "returns" into the trampoline with six zero registers.
inline void* fresh_stack(unsigned i) {
    Block& b = blk();
    uintptr_t top = reinterpret_cast<uintptr_t>(b.stacks + STACK * (i + 1)) - (i % 48) * 64;
    top &= ~uintptr_t(15);
    void** sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;                                    // the trampoline's "return address" slot: keeps rsp % 16 == 8 at its entry
    *--sp = reinterpret_cast<void*>(&trampoline);       // popped by `ret`
    for (int r = 0; r < 6; r++) *--sp = nullptr;        // rbp rbx r12..r15
    return sp;
}

inline void wait(State s) {
    Block& b = blk();
    b.cur->state = s;
    emu_switch(&b.cur->sp, b.sched_sp);
}

inline void warp_barrier(Collective c) {
    blk().cur->at = c;
    wait(AT_WARP);
}
inline void block_barrier() { wait(AT_BLOCK); }

// Stops the block: the launch fails with the message (printf-style), as on a deadlock. The
// thread is never resumed; its stack is dropped with the block.
[[noreturn]] inline void fail(const char* format, ...) {
    Block& b = blk();
    va_list args;
    va_start(args, format);
    std::vsnprintf(b.fault, sizeof b.fault, format, args);
    va_end(args);
    wait(FAILED);
    std::abort(); // a failed thread is never resumed
}

// A collective as an error names it; snprintf's count.
inline int describe(char* out, size_t len, Collective c) {
    switch (c.op) {
    case SYNCWARP: return std::snprintf(out, len, "__syncwarp");
    case SHFL_XOR: return std::snprintf(out, len, "__shfl_xor_sync of %u bytes", c.a);
    case BALLOT: return std::snprintf(out, len, "__ballot_sync");
    case MMA: return std::snprintf(out, len, "mma.sync .%s", c.a ? "bf16" : "f16");
    case LDMATRIX: return std::snprintf(out, len, "ldmatrix .x%u%s", c.a, c.b ? ".trans" : "");
    }
    return 0;
}

// Releases warp w once every live lane waits at a warp collective: RELEASED, or BROKEN (with
// `why`) where they wait at different ones or an mma/ldmatrix misses lanes; NOT_YET while some
// lane still runs or waits for the block.
enum Release { NOT_YET, RELEASED, BROKEN };
inline Release release_warp(unsigned w, char* why, size_t why_len) {
    Block& b = blk();
    unsigned first = w * 32, end = first + 32 < b.n ? first + 32 : b.n, waiting = 0, live = 0;
    for (unsigned k = first; k < end; k++) {
        live += b.threads[k].state != DONE;
        waiting += b.threads[k].state == AT_WARP;
    }
    if (waiting == 0 || waiting != live) return NOT_YET;
    unsigned lead = first;
    while (b.threads[lead].state != AT_WARP) lead++;
    const Collective c = b.threads[lead].at;
    int at = std::snprintf(why, why_len, "in block (%u,%u,%u), warp %u: ", b.bid.x, b.bid.y, b.bid.z, w);
    for (unsigned k = lead + 1; k < end; k++) {
        if (b.threads[k].state != AT_WARP || b.threads[k].at == c) continue;
        at += std::snprintf(why + at, why_len - at, "lane %u at ", lead - first);
        at += describe(why + at, why_len - at, c);
        at += std::snprintf(why + at, why_len - at, ", lane %u at ", k - first);
        describe(why + at, why_len - at, b.threads[k].at);
        return BROKEN;
    }
    // mma and ldmatrix read operands of every lane (PTX's .aligned: all threads of the warp)
    if ((c.op == MMA || c.op == LDMATRIX) && live < 32) {
        at += describe(why + at, why_len - at, c);
        std::snprintf(why + at, why_len - at, " with %u of the warp's 32 lanes (the others exited or do not exist)", live);
        return BROKEN;
    }
    for (unsigned k = first; k < end; k++) if (b.threads[k].state == AT_WARP) b.threads[k].state = RUN;
    return RELEASED;
}

// The order warps run in: by default each warp runs on as soon as all its lanes reach a warp
// operation (a shuffle, an mma, an ldmatrix, a cp.async wait), so one warp races ahead of the
// others to its next __syncthreads: the order most likely to expose a missing barrier between
// warps (a read of shared memory another warp has not yet filled, or a write over data another
// warp still reads; cp.async destinations are NaN until waited for). GPTRAIN_EMU_SCHEDULE=lockstep
// instead lets every warp advance to its next warp operation before any goes further.
inline bool eager_warps() {
    static const bool eager = !(std::getenv("GPTRAIN_EMU_SCHEDULE") && std::strcmp(std::getenv("GPTRAIN_EMU_SCHEDULE"), "lockstep") == 0);
    return eager;
}

// Runs every thread of the current block to its end; false (with `why`) on a deadlock or a
// broken rule of warp collectives.
inline bool run_block(char* why, size_t why_len) {
    Block& b = blk();
    for (;;) {
        bool ran = false;
        for (unsigned i = 0; i < b.n; i++) {
            Thread& t = b.threads[i];
            if (t.state != RUN) continue;
            b.cur = &t;
            emu_switch(&b.sched_sp, t.sp);
            ran = true;
            if (t.state == FAILED) {
                std::snprintf(why, why_len, "in block (%u,%u,%u), thread %u: %s", b.bid.x, b.bid.y, b.bid.z, i, b.fault);
                return false;
            }
            if (!eager_warps()) continue;
            Release r = release_warp(i / 32, why, why_len);
            if (r == BROKEN) return false;
            if (r == RELEASED) i = i / 32 * 32 - 1; // this warp again, from its first lane (for warp 0 the ++i wraps to 0)
        }
        if (ran) continue;
        // nobody can run: release a barrier every live thread (or warp lane) has reached
        unsigned done = 0, at_block = 0;
        for (unsigned i = 0; i < b.n; i++) {
            done += b.threads[i].state == DONE;
            at_block += b.threads[i].state == AT_BLOCK;
        }
        if (done == b.n) return true;
        if (at_block + done == b.n) {
            for (unsigned i = 0; i < b.n; i++) if (b.threads[i].state == AT_BLOCK) b.threads[i].state = RUN;
            continue;
        }
        bool released = false;
        for (unsigned w = 0; w * 32 < b.n; w++) {
            Release r = release_warp(w, why, why_len);
            if (r == BROKEN) return false;
            released |= r == RELEASED;
        }
        if (released) continue;
        std::snprintf(why, why_len, "deadlock in block (%u,%u,%u): %u of %u threads wait at __syncthreads, the others at a warp barrier or exited",
                      b.bid.x, b.bid.y, b.bid.z, at_block, b.n);
        return false;
    }
}

// The kernel's arguments, read from cuLaunchKernel's array of pointers to them.
template <class... A, size_t... I>
inline void call(void (*k)(A...), void** p, std::index_sequence<I...>) {
    k(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}

template <class... A>
inline void launch(void (*k)(A...), Launch* L, const char* name) {
    Block& b = blk();
    L->error[0] = 0;
    unsigned n = L->block[0] * L->block[1] * L->block[2];
    if (n == 0 || n > MAX_THREADS || L->grid[0] == 0 || L->grid[1] == 0 || L->grid[2] == 0) {
        std::snprintf(L->error, sizeof L->error, "%s: launch of %ux%ux%u blocks of %ux%ux%u threads", name, L->grid[0], L->grid[1],
                      L->grid[2], L->block[0], L->block[1], L->block[2]);
        return;
    }
    if (L->shared > (227u << 10)) {
        std::snprintf(L->error, sizeof L->error, "%s: %u bytes of dynamic shared memory (a GPU has at most 227 KiB)", name, L->shared);
        return;
    }
    static void** params;
    static void (*kernel)(A...);
    params = L->params;
    kernel = k;
    b.body = [] { call(kernel, params, std::index_sequence_for<A...>{}); };
    b.n = n;
    b.bdim = {L->block[0], L->block[1], L->block[2]};
    b.gdim = {L->grid[0], L->grid[1], L->grid[2]};
    b.dyn_bytes = L->shared;
    b.dyn = static_cast<unsigned char*>(std::malloc(L->shared ? L->shared : 1));
    // GPTRAIN_EMU_BLOCK_ORDER=reverse runs the blocks last first: a GPU runs them in any
    // order, so a kernel whose block reads what another block of the launch wrote gives other
    // results then
    const char* order = std::getenv("GPTRAIN_EMU_BLOCK_ORDER");
    const bool reverse = order && std::strcmp(order, "reverse") == 0;
    const uint64_t blocks = (uint64_t)L->grid[0] * L->grid[1] * L->grid[2];
    for (uint64_t at = 0; at < blocks; at++) {
        uint64_t k = reverse ? blocks - 1 - at : at, plane = (uint64_t)L->grid[0] * L->grid[1];
        b.bid = {(unsigned)(k % L->grid[0]), (unsigned)(k / L->grid[0] % L->grid[1]), (unsigned)(k / plane)};
        b.serial++;
        std::memset(b.dyn, 0xff, L->shared); // NaN until written
        for (unsigned i = 0; i < n; i++) {
            Thread& t = b.threads[i];
            t.linear = i;
            t.tid = {i % b.bdim.x, i / b.bdim.x % b.bdim.y, i / (b.bdim.x * b.bdim.y)};
            t.state = RUN;
            t.sp = fresh_stack(i);
            b.copies[i].clear();
            b.groups[i] = 0;
        }
        char why[200];
        if (!run_block(why, sizeof why)) {
            std::snprintf(L->error, sizeof L->error, "%s: %s", name, why);
            std::free(b.dyn);
            return;
        }
    }
    std::free(b.dyn);
}

// The warp is modelled whole: a member mask naming part of it would need the lanes outside to
// be told apart, so any other mask is refused rather than ignored (gptrain's kernels pass ~0u).
inline void full_mask(const char* what, unsigned mask) {
    if (mask != 0xffffffffu) fail("%s with mask %#x (the emulator takes only the full warp, 0xffffffff)", what, mask);
}

// PTX's shfl.sync waits only for the lanes that have not exited; a lane that reads one that has
// gets an undefined value (CUDA's programming guide: "If the target thread is inactive, the
// retrieved value is undefined"), so that read fails the launch.
template <class T> inline T shfl_xor(T v, int mask) {
    static_assert(sizeof(T) <= 8, "a shuffle of at most 8 bytes");
    Block& b = blk();
    unsigned me = b.cur->linear, lane = me % 32, from = me - lane + ((lane ^ (unsigned)mask) & 31);
    const Collective c{SHFL_XOR, (unsigned char)sizeof(T), 0};
    std::memcpy(&b.slot[me], &v, sizeof(T));
    warp_barrier(c);
    if (from >= b.n || b.threads[from].state == DONE)
        fail("__shfl_xor_sync by lane %u reads lane %u, which exited or is past the block's end", lane, from % 32);
    T r;
    std::memcpy(&r, &b.slot[from], sizeof(T));
    warp_barrier(c); // nobody overwrites a slot before every lane has read
    return r;
}

// The warp's predicates as a mask: bit i is lane i's (lanes that exited count as false, as
// vote.sync defines it).
inline unsigned ballot(bool pred) {
    Block& b = blk();
    unsigned me = b.cur->linear, first = me - me % 32;
    b.slot[me] = pred;
    warp_barrier({BALLOT, 0, 0});
    // read after the barrier: a higher lane may exit only after this one posted, its slot stale
    unsigned mask = 0;
    for (unsigned i = first; i < first + 32 && i < b.n; i++) mask |= (b.threads[i].state != DONE && b.slot[i] ? 1u : 0u) << (i - first);
    warp_barrier({BALLOT, 0, 0});
    return mask;
}

// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.f32` with D = C (in `d`): the warp's
// D(16x8) += A(16x16) B(16x8), from the fragment layout of PTX ISA's "Matrix Fragments for
// mma.m16n8k16 with floating point type". Lane 4g + t holds, each word two 16-bit values with
// the lower column (A) or row (B) in its low half:
//   a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1], a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9]
//   b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g]
//   d[0], d[1] = D[g][2t], D[g][2t+1];  d[2], d[3] = D[g+8][2t], D[g+8][2t+1]
// The products are exact in double, summed over k in order and added to C, rounded once: the
// hardware's order and rounding are unspecified, so a kernel may not depend on them. Every lane
// of the warp must take part (a GPU requires it): an exited lane fails the launch.
inline void mma16816(float* d, const uint32_t* a, const uint32_t* b, bool bf16) {
    Block& bl = blk();
    unsigned me = bl.cur->linear, lane = me % 32, first = me - lane;
    const Collective c{MMA, bf16, 0};
    for (int i = 0; i < 4; i++) bl.frag[me][i] = a[i];
    bl.frag[me][4] = b[0];
    bl.frag[me][5] = b[1];
    warp_barrier(c);
    auto value = [&](unsigned l, unsigned reg, unsigned hi) {
        uint32_t w = bl.frag[first + l][reg];
        uint16_t v = (uint16_t)(hi ? w >> 16 : w & 0xffffu);
        return (double)(bf16 ? halfemu::bf16_to_f32(v) : halfemu::f16_to_f32(v));
    };
    auto A = [&](unsigned r, unsigned k) { return value((r % 8) * 4 + (k % 8) / 2, r / 8 + 2 * (k / 8), k % 2); };
    auto B = [&](unsigned k, unsigned n) { return value(n * 4 + (k % 8) / 2, 4 + k / 8, k % 2); };
    unsigned g = lane / 4, t = lane % 4;
    float r[4];
    for (unsigned i = 0; i < 4; i++) {
        unsigned row = g + 8 * (i / 2), col = 2 * t + i % 2;
        double acc = 0.0;
        for (unsigned k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        r[i] = (float)((double)d[i] + acc);
    }
    warp_barrier(c); // nobody overwrites its operands before every lane has read them
    for (int i = 0; i < 4; i++) d[i] = r[i];
}

// `ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16`, from PTX ISA's description: lane
// 8m + r gives the address of row r (eight 16-bit values, 16-byte aligned) of matrix m (m <
// num); lane 4i + j receives in out[m] the matrix's [i][2j] (low half) and [i][2j+1], or with
// trans its [2j][i] and [2j+1][i] (the matrix read as column-major). Every lane must take part.
inline void aligned(const void* p, unsigned bytes);
inline void ldmatrix(uint32_t* out, const void* p, unsigned num, bool trans) {
    Block& bl = blk();
    unsigned me = bl.cur->linear, lane = me % 32, first = me - lane;
    const Collective c{LDMATRIX, (unsigned char)num, trans};
    if (lane < 8 * num) aligned(p, 16);
    bl.slot[me] = reinterpret_cast<uint64_t>(p);
    warp_barrier(c);
    unsigned i = lane / 4, j = lane % 4;
    for (unsigned m = 0; m < num; m++) {
        auto at = [&](unsigned r, unsigned c) { return reinterpret_cast<const uint16_t*>(bl.slot[first + 8 * m + r])[c]; };
        uint16_t lo = trans ? at(2 * j, i) : at(i, 2 * j), hi = trans ? at(2 * j + 1, i) : at(i, 2 * j + 1);
        out[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
    warp_barrier(c); // nobody posts a new address before every lane has read
}

// `cp.async.ca.shared.global [dst], [src], bytes, from_src` (4, 8 or 16 bytes, both addresses
// aligned to it; past `from_src` bytes, zeros): recorded, not done; it lands at the thread's
// `cp.async.wait_group` that covers its group (PTX: the copy's completion is only guaranteed
// then). Until then dst holds NaN bytes (0xff), so a kernel that reads before waiting reads
// NaN, not last block's tile that may happen to be the same. What PTX leaves undefined fails the
// launch: another size, `from_src` past it, and an address off its alignment, src included when
// none of it is read (it is an operand all the same; "Addresses as Operands" exempts none).
inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned from_src) {
    if (bytes != 4 && bytes != 8 && bytes != 16) fail("cp.async of %u bytes (PTX: 4, 8 or 16)", bytes);
    if (from_src > bytes) fail("cp.async of %u bytes with %u from its source (PTX: undefined past it)", bytes, from_src);
    if (reinterpret_cast<uintptr_t>(dst) % bytes || reinterpret_cast<uintptr_t>(src) % bytes)
        fail("cp.async of %u bytes from %p to %p, not both aligned to it", bytes, src, dst);
    std::memset(dst, 0xff, bytes);
    Block& b = blk();
    unsigned me = b.cur->linear;
    b.copies[me].push_back({dst, src, bytes, from_src, b.groups[me]});
}
// `cp.async.commit_group`: the copies issued since the last one form a group.
inline void cp_commit() {
    Block& b = blk();
    b.groups[b.cur->linear]++;
}
// `cp.async.wait_group n`: every committed group but the newest n lands, in issue order.
inline void cp_wait(unsigned n) {
    Block& b = blk();
    unsigned me = b.cur->linear, below = b.groups[me] > n ? b.groups[me] - n : 0;
    std::vector<AsyncCopy>& q = b.copies[me];
    size_t kept = 0;
    for (size_t i = 0; i < q.size(); i++) {
        AsyncCopy c = q[i];
        if (c.group < below) {
            if (c.from_src) std::memcpy(c.dst, c.src, c.from_src);
            std::memset(static_cast<char*>(c.dst) + c.from_src, 0, c.bytes - c.from_src);
        } else {
            q[kept++] = c;
        }
    }
    q.resize(kept);
}

// A GPU faults on an access not aligned to its size; x86 does not, so kernels that read wider
// than their element type say so through this check (common.cuh's ld32/st32).
inline void aligned(const void* p, unsigned bytes) {
    if (reinterpret_cast<uintptr_t>(p) % bytes == 0) return;
    Block& b = blk();
    std::fprintf(stderr, "cuda-emu: misaligned %u-byte access at %p by thread %u of block (%u,%u,%u)\n", bytes, p, b.cur->linear,
                 b.bid.x, b.bid.y, b.bid.z);
    std::abort();
}

using halfemu::bits_float;
using halfemu::float_bits;
using halfemu::f16_to_f32;
using halfemu::f32_to_f16;

} // namespace emu

#define __global__
#define __launch_bounds__(...)
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __align__(n) __attribute__((aligned(n)))
// one copy per block: blocks run one after another, their threads as fibers of one OS thread
#define __shared__ static

namespace emu {
// A static __shared__ array is NaN (0xff bytes) at the start of every block, as dynamic shared
// memory is, so a read before any thread of the block wrote it shows (else it would read the
// previous block's values). The fake NVRTC puts a call after each declaration; the first thread
// of a block to pass it poisons the array, before any thread can write it (a writer passes the
// declaration first).
inline void poison_shared(void* p, size_t n) {
    static std::unordered_map<void*, uint64_t> last; // array -> the block run it was poisoned for
    uint64_t& at = last[p];
    if (at != blk().serial) {
        std::memset(p, 0xff, n);
        at = blk().serial;
    }
}
} // namespace emu
#define threadIdx (emu::blk().cur->tid)
#define blockIdx (emu::blk().bid)
#define blockDim (emu::blk().bdim)
#define gridDim (emu::blk().gdim)
#define emu_dyn_smem() ((void*)emu::blk().dyn)

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::full_mask("__syncwarp", mask);
    emu::warp_barrier({emu::SYNCWARP, 0, 0});
}
template <class T> inline T __shfl_xor_sync(unsigned members, T v, int mask, int width = 32) {
    emu::full_mask("__shfl_xor_sync", members);
    if (width != 32) emu::fail("__shfl_xor_sync of width %d (the emulator shuffles whole warps only)", width);
    return emu::shfl_xor(v, mask);
}
inline unsigned __ballot_sync(unsigned members, bool pred) {
    emu::full_mask("__ballot_sync", members);
    return emu::ballot(pred);
}
inline int __ffs(unsigned x) { return __builtin_ffs((int)x); }
inline float __int_as_float(int i) { return emu::bits_float((uint32_t)i); }
inline float __uint_as_float(unsigned u) { return emu::bits_float(u); }
inline unsigned __float_as_uint(float f) { return emu::float_bits(f); }
inline int __float_as_int(float f) { return (int)emu::float_bits(f); }
