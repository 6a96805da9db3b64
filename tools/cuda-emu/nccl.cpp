// libnccl.so.2 of gptrain's CUDA emulator: the few NCCL calls gptrain makes (a unique id, a
// communicator per rank, an in-place sum of f32 across ranks, and ZeRO-1's sums to one root and
// copies from one root, in groups), for ranks that are separate
// processes on this machine, each with its own emulated GPU (its "device memory" is its own
// host memory). A communicator is a POSIX shared-memory segment named by the unique id; an
// all-reduce copies every rank's buffer into its slot of a segment of that call, waits for all
// ranks, and adds the slots in rank order (so every rank gets the same bits, as with NCCL).
// Streams are synchronous in the emulator, so the call completes before it returns; a group
// (ncclGroupStart/End) is then the same calls one after another, in the same order on every
// rank, which is what NCCL's grouping asks of its callers anyway.
//
// Faults, for tests: GPTRAIN_EMU_NCCL_INIT_FAIL=1 (below); GPTRAIN_EMU_NCCL_EXIT_AT=K ends this
// rank's process inside its K-th collective (counted from 1), before it arrives, as a rank
// killed mid-sum; GPTRAIN_EMU_NCCL_HANG=K makes this rank's K-th collective, if its ranks have
// not all arrived within 2 s, return as a real one does, its kernel still waiting: the emulated
// driver's stream then stays busy (cuStreamQuery: not ready), and no error is ever reported (a real NCCL
// reports none for a peer on the same machine that died); without it the wait fails after 30 s.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <random>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>

extern "C" {

typedef struct { char internal[128]; } ncclUniqueId;
typedef enum { ncclSuccess = 0, ncclSystemError = 2, ncclInternalError = 3, ncclInvalidArgument = 4, ncclInvalidUsage = 5 } ncclResult_t;

}

namespace {

// The segment every rank of a communicator maps: a barrier counter and the ranks' arrivals.
struct Header {
    std::atomic<uint64_t> arrived; // barrier arrivals so far, over the communicator's life
};

struct Comm {
    std::string name; // of the header segment; each all-reduce's data segment adds "-<seq>"
    int nranks, rank;
    Header* header;
    uint64_t barriers = 0; // barriers this rank has passed
    uint64_t seq = 0;      // all-reduces this rank has made
};

// Arrives at this rank's next barrier and waits at most `limit` for every rank to: whether
// they all did.
bool arrive_and_wait(Comm* c, std::chrono::seconds limit) {
    c->barriers++;
    uint64_t want = c->barriers * (uint64_t)c->nranks;
    c->header->arrived.fetch_add(1);
    auto start = std::chrono::steady_clock::now();
    while (c->header->arrived.load() < want) {
        if (std::chrono::steady_clock::now() - start > limit) return false;
        std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    return true;
}

// Waits until all ranks have arrived at this rank's next barrier (at most 30 s).
ncclResult_t barrier(Comm* c) {
    if (arrive_and_wait(c, std::chrono::seconds(30))) return ncclSuccess;
    std::fprintf(stderr, "cuda-emu nccl: rank %d waited 30 s for the other ranks\n", c->rank);
    return ncclSystemError;
}

// How a collective's wait for the other ranks ended.
enum class Wait { Arrived, Failed, Stuck };

// The emulated driver's stream, left busy by a collective that waits on (GPTRAIN_EMU_NCCL_HANG).
void leave_stream_busy() {
    void* cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (auto stuck = cuda ? reinterpret_cast<void (*)()>(dlsym(cuda, "emu_stream_stuck")) : nullptr) stuck();
}

// [`barrier`] for a collective: in this rank's GPTRAIN_EMU_NCCL_HANG-th (`c->seq` so far, this
// one counted), ranks missing after 2 s leave the stream busy and the call returns (Stuck), as
// a GPU's NCCL kernel waits on for them.
Wait collective_barrier(Comm* c) {
    const char* h = std::getenv("GPTRAIN_EMU_NCCL_HANG");
    if (!h || std::strtoull(h, nullptr, 10) != c->seq) return barrier(c) == ncclSuccess ? Wait::Arrived : Wait::Failed;
    if (arrive_and_wait(c, std::chrono::seconds(2))) return Wait::Arrived;
    leave_stream_busy();
    return Wait::Stuck;
}

// GPTRAIN_EMU_NCCL_EXIT_AT=K: the process ends inside its K-th collective (`c->seq` made so far)
void exit_if_asked(const Comm* c) {
    const char* k = std::getenv("GPTRAIN_EMU_NCCL_EXIT_AT");
    if (k && std::strtoull(k, nullptr, 10) == c->seq + 1) {
        std::fprintf(stderr, "cuda-emu nccl: rank %d ends inside its collective %s (GPTRAIN_EMU_NCCL_EXIT_AT)\n", c->rank, k);
        _exit(3);
    }
}

// Maps segment `name` of `bytes` (created by whichever rank comes first), or null.
void* map(const std::string& name, size_t bytes) {
    int fd = shm_open(name.c_str(), O_RDWR | O_CREAT, 0600);
    if (fd < 0) return nullptr;
    if (ftruncate(fd, (off_t)bytes) != 0) {
        close(fd);
        return nullptr;
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? nullptr : p;
}

// every rank's `send` summed in rank order into `recv` of rank `root`, or of every rank when
// root is -1; ncclFloat32 (7) and ncclSum (0) only: what gptrain sums
ncclResult_t sum_to(const void* send, void* recv, size_t count, int datatype, int op, int root, void* comm) {
    Comm* c = static_cast<Comm*>(comm);
    if (!c || datatype != 7 || op != 0 || root < -1 || root >= c->nranks) return ncclInvalidArgument;
    exit_if_asked(c);
    std::string name = c->name + "-" + std::to_string(c->seq++);
    size_t bytes = count * sizeof(float);
    float* slots = static_cast<float*>(map(name, bytes * (size_t)c->nranks + 1));
    if (!slots) return ncclSystemError;
    std::memcpy(slots + count * (size_t)c->rank, send, bytes);
    Wait w = collective_barrier(c); // every rank's buffer is in its slot
    if (w == Wait::Stuck) return ncclSuccess; // (the segment stays: the "kernel" still uses it)
    ncclResult_t r = w == Wait::Arrived ? ncclSuccess : ncclSystemError;
    if (r == ncclSuccess) {
        if (root == -1 || c->rank == root) {
            float* out = static_cast<float*>(recv);
            for (size_t i = 0; i < count; i++) {
                float s = slots[i];
                for (int k = 1; k < c->nranks; k++) s += slots[count * (size_t)k + i];
                out[i] = s;
            }
        }
        r = barrier(c); // every rank has read the slots
    }
    munmap(slots, bytes * (size_t)c->nranks + 1);
    if (c->rank == 0) shm_unlink(name.c_str());
    return r;
}

} // namespace

extern "C" {

// 2.99.0: a version no real NCCL has
ncclResult_t ncclGetVersion(int* v) {
    *v = 29900;
    return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclSystemError: return "unhandled system error (cuda-emu: shared memory, or a rank that never came)";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    default: return "internal error";
    }
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    std::memset(id->internal, 0, sizeof id->internal);
    std::random_device rd;
    std::snprintf(id->internal, sizeof id->internal, "/gptrain-emu-nccl-%d-%08x%08x", (int)getpid(), rd(), rd());
    return ncclSuccess;
}

// GPTRAIN_EMU_NCCL_INIT_FAIL=1 makes it fail on this rank at once (as a real NCCL may on one
// rank only), while the others wait for it
ncclResult_t ncclCommInitRank(void** comm, int nranks, ncclUniqueId id, int rank) {
    if (nranks < 1 || rank < 0 || rank >= nranks || id.internal[0] != '/') return ncclInvalidArgument;
    if (const char* f = std::getenv("GPTRAIN_EMU_NCCL_INIT_FAIL"); f && std::strcmp(f, "1") == 0) return ncclSystemError;
    Comm* c = new Comm{std::string(id.internal, strnlen(id.internal, sizeof id.internal)), nranks, rank, nullptr};
    c->header = static_cast<Header*>(map(c->name, sizeof(Header))); // zero-filled when created
    if (!c->header) {
        delete c;
        return ncclSystemError;
    }
    if (barrier(c) != ncclSuccess) return ncclSystemError; // every rank is in
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int datatype, int op, void* comm, void* /*stream*/) {
    return sum_to(send, recv, count, datatype, op, -1, comm);
}

ncclResult_t ncclReduce(const void* send, void* recv, size_t count, int datatype, int op, int root, void* comm, void* /*stream*/) {
    return root < 0 ? ncclInvalidArgument : sum_to(send, recv, count, datatype, op, root, comm);
}

// the root's `send` into every rank's `recv`, any datatype (its size from nccl.h's numbering)
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, int datatype, int root, void* comm, void* /*stream*/) {
    Comm* c = static_cast<Comm*>(comm);
    static const size_t sizes[] = {1, 1, 4, 4, 8, 8, 2, 4, 8, 2}; // ncclInt8 .. ncclBfloat16
    if (!c || datatype < 0 || datatype > 9 || root < 0 || root >= c->nranks) return ncclInvalidArgument;
    exit_if_asked(c);
    std::string name = c->name + "-" + std::to_string(c->seq++);
    size_t bytes = count * sizes[datatype];
    char* slot = static_cast<char*>(map(name, bytes + 1));
    if (!slot) return ncclSystemError;
    if (c->rank == root) std::memcpy(slot, send, bytes);
    Wait w = collective_barrier(c);
    if (w == Wait::Stuck) return ncclSuccess;
    ncclResult_t r = w == Wait::Arrived ? ncclSuccess : ncclSystemError;
    if (r == ncclSuccess) {
        std::memmove(recv, slot, bytes);
        r = barrier(c);
    }
    munmap(slot, bytes + 1);
    if (c->rank == 0) shm_unlink(name.c_str());
    return r;
}

// calls are synchronous here: a group is its calls in order
ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }

ncclResult_t ncclCommDestroy(void* comm) {
    Comm* c = static_cast<Comm*>(comm);
    if (!c) return ncclInvalidArgument;
    barrier(c); // nobody still uses the header
    munmap(c->header, sizeof(Header));
    if (c->rank == 0) shm_unlink(c->name.c_str());
    delete c;
    return ncclSuccess;
}

// no background errors: a rank that never comes makes the barrier's wait fail instead (or,
// at GPTRAIN_EMU_NCCL_HANG's collective, leaves the stream busy without an error, as a real NCCL does)
ncclResult_t ncclCommGetAsyncError(void* comm, ncclResult_t* e) {
    if (!comm) return ncclInvalidArgument;
    *e = ncclSuccess;
    return ncclSuccess;
}

ncclResult_t ncclCommAbort(void* comm) {
    Comm* c = static_cast<Comm*>(comm);
    if (!c) return ncclInvalidArgument;
    munmap(c->header, sizeof(Header));
    if (c->rank == 0) shm_unlink(c->name.c_str());
    delete c;
    return ncclSuccess;
}

} // extern "C"
