// gptrain's CUDA emulator: a cuBLASLt that computes matmuls on the CPU, written from NVIDIA's
// documentation of cublasLtMatmul (column-major; D = alpha op(A) op(B) + beta C, then the
// epilogue), not from gptrain's code, so that it checks how gptrain describes its products.
// It refuses what it does not implement (an epilogue, a type, a layout that does not match
// the operation) with CUBLAS_STATUS_NOT_SUPPORTED or INVALID_VALUE, never computes it wrongly.
//
// Sums are in double and rounded once into D's type; the real library sums in f32.
#include "half.h"
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {
typedef int cublasStatus_t;
enum { OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, NOT_SUPPORTED = 15 };
enum { R_32F = 0, R_16F = 2, R_16BF = 14 };
enum { COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77 };
enum { DESC_COMPUTE_TYPE = 0, DESC_SCALE_TYPE = 1, DESC_POINTER_MODE = 2, DESC_TRANSA = 3, DESC_TRANSB = 4, DESC_EPILOGUE = 7,
       DESC_BIAS_POINTER = 8, DESC_AUX_POINTER = 11, DESC_AUX_LD = 12, DESC_AUX_DATA_TYPE = 22, DESC_BIAS_DATA_TYPE = 26 };
// DGELU: D = the product times gelu'(aux), aux the forward's GELU input; GELU is the tanh form,
// as NVIDIA's samples show it.
enum { EPILOGUE_DEFAULT = 1, EPILOGUE_BIAS = 4, EPILOGUE_DGELU = 192 };

struct Desc {
    int compute, scale, transa = 0, transb = 0, epilogue = EPILOGUE_DEFAULT, bias_type = -1, aux_type = -1;
    const void* bias = nullptr;
    void* aux = nullptr;
    int64_t aux_ld = 0;
};
struct Layout { int type; uint64_t rows, cols; int64_t ld; };
struct Pref { uint64_t workspace = 0; };
struct Algo { uint64_t data[8]; };
struct Heuristic { Algo algo; size_t workspaceSize; cublasStatus_t state; float wavesCount; int reserved[4]; };

static int handles;

cublasStatus_t cublasLtCreate(void** h) { *h = &handles; return OK; }
cublasStatus_t cublasLtDestroy(void*) { return OK; }
// major.0.99 of the CUDA it stands in for (EMU_CUDA, as the driver's)
size_t cublasLtGetVersion() { return EMU_CUDA / 1000 * 10000 + 99; }

cublasStatus_t cublasLtMatmulDescCreate(Desc** d, int compute, int scale) {
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_FAST_TF32) return NOT_SUPPORTED;
    if (scale != R_32F) return NOT_SUPPORTED;
    *d = new Desc{compute, scale};
    return OK;
}
cublasStatus_t cublasLtMatmulDescDestroy(Desc* d) { delete d; return OK; }
cublasStatus_t cublasLtMatmulDescSetAttribute(Desc* d, int attr, const void* buf, size_t n) {
    auto i32 = [&](int* into) { if (n != 4) return INVALID_VALUE; std::memcpy(into, buf, 4); return OK; };
    switch (attr) {
    case DESC_TRANSA: return i32(&d->transa);
    case DESC_TRANSB: return i32(&d->transb);
    case DESC_EPILOGUE: return i32(&d->epilogue);
    case DESC_BIAS_DATA_TYPE: return i32(&d->bias_type);
    case DESC_BIAS_POINTER:
        if (n != sizeof(void*)) return INVALID_VALUE;
        std::memcpy(&d->bias, buf, n);
        return OK;
    case DESC_AUX_POINTER:
        if (n != sizeof(void*)) return INVALID_VALUE;
        std::memcpy(&d->aux, buf, n);
        return OK;
    case DESC_AUX_LD:
        if (n != 8) return INVALID_VALUE;
        std::memcpy(&d->aux_ld, buf, 8);
        return OK;
    case DESC_AUX_DATA_TYPE: return i32(&d->aux_type);
    case DESC_COMPUTE_TYPE: return i32(&d->compute);
    case DESC_SCALE_TYPE: return i32(&d->scale);
    default:
        std::fprintf(stderr, "cuda-emu cuBLASLt: matmul attribute %d is not emulated\n", attr);
        return NOT_SUPPORTED;
    }
}

cublasStatus_t cublasLtMatrixLayoutCreate(Layout** l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
    if (type != R_32F && type != R_16F && type != R_16BF) return NOT_SUPPORTED;
    if ((int64_t)rows > ld && cols > 1) return INVALID_VALUE; // column-major: ld >= rows
    *l = new Layout{type, rows, cols, ld};
    return OK;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(Layout* l) { delete l; return OK; }
cublasStatus_t cublasLtMatrixLayoutSetAttribute(Layout*, int attr, const void*, size_t) {
    std::fprintf(stderr, "cuda-emu cuBLASLt: layout attribute %d is not emulated\n", attr);
    return NOT_SUPPORTED;
}

cublasStatus_t cublasLtMatmulPreferenceCreate(Pref** p) { *p = new Pref; return OK; }
cublasStatus_t cublasLtMatmulPreferenceDestroy(Pref* p) { delete p; return OK; }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(Pref* p, int attr, const void* buf, size_t n) {
    if (attr == 1) { // MAX_WORKSPACE_BYTES
        if (n != 8) return INVALID_VALUE;
        std::memcpy(&p->workspace, buf, 8);
        return OK;
    }
    if (attr >= 5 && attr <= 8) return n == 4 ? OK : INVALID_VALUE; // MIN_ALIGNMENT_{A,B,C,D}_BYTES
    if (attr == 3) { // REDUCTION_SCHEME_MASK (uint32_t, bits of cublasLtReductionScheme_t); no split-K here
        uint32_t mask = 0;
        if (n == 4) std::memcpy(&mask, buf, 4);
        return n == 4 && mask <= 7 ? OK : INVALID_VALUE;
    }
    std::fprintf(stderr, "cuda-emu cuBLASLt: preference attribute %d is not emulated\n", attr);
    return NOT_SUPPORTED;
}

static float read(const void* p, int type, uint64_t i) {
    switch (type) {
    case R_32F: return static_cast<const float*>(p)[i];
    case R_16BF: return halfemu::bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return halfemu::f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    }
}
static void write(void* p, int type, uint64_t i, float v) {
    switch (type) {
    case R_32F: static_cast<float*>(p)[i] = v; break;
    case R_16BF: static_cast<uint16_t*>(p)[i] = halfemu::f32_to_bf16(v); break;
    default: static_cast<uint16_t*>(p)[i] = halfemu::f32_to_f16(v); break;
    }
}

// The shapes: op(A) is m x k, op(B) k x n, C and D m x n; 0 when they do not agree.
static bool shapes(const Desc* d, const Layout* a, const Layout* b, const Layout* c, const Layout* dl, uint64_t* m, uint64_t* n, uint64_t* k) {
    *m = d->transa ? a->cols : a->rows;
    *k = d->transa ? a->rows : a->cols;
    uint64_t kb = d->transb ? b->cols : b->rows;
    *n = d->transb ? b->rows : b->cols;
    if (kb != *k || c->rows != *m || c->cols != *n || dl->rows != *m || dl->cols != *n) {
        std::fprintf(stderr, "cuda-emu cuBLASLt: shapes do not agree: op(A) %llux%llu, op(B) %llux%llu, C %llux%llu, D %llux%llu\n",
                     (unsigned long long)*m, (unsigned long long)*k, (unsigned long long)kb, (unsigned long long)*n,
                     (unsigned long long)c->rows, (unsigned long long)c->cols, (unsigned long long)dl->rows, (unsigned long long)dl->cols);
        return false;
    }
    return true;
}

// GPTRAIN_EMU_TRACE: each heuristic query and each product, with what describes it, on stderr.
static void trace(const char* what, const Desc* d, const Layout* a, const Layout* b, const Layout* dl, uint64_t m, uint64_t n, uint64_t k) {
    static bool on = std::getenv("GPTRAIN_EMU_TRACE") != nullptr;
    if (!on) return;
    // the epilogue pointers' alignments (up to 256 bytes), which the heuristic may choose for
    auto align = [](const void* p) {
        uintptr_t x = reinterpret_cast<uintptr_t>(p);
        return x ? (unsigned)std::min<uintptr_t>(x & (~x + 1), 256) : 0u;
    };
    std::fprintf(stderr, "cuda-emu: cuBLASLt %s %llux%llux%llu ops %d%d types %d/%d/%d lds %lld/%lld/%lld epilogue %d aligns %u/%u\n", what,
                 (unsigned long long)m, (unsigned long long)n, (unsigned long long)k, d->transa, d->transb, a->type, b->type, dl->type,
                 (long long)a->ld, (long long)b->ld, (long long)dl->ld, d->epilogue, align(d->bias), align(d->aux));
}

static bool gelu_epilogue(int e) { return e == EPILOGUE_DGELU; }
static bool known_epilogue(int e) { return e == EPILOGUE_DEFAULT || e == EPILOGUE_BIAS || gelu_epilogue(e); }

// An auxiliary matrix as the documentation asks: given, m x n with ld >= m, ld a multiple of 8.
static bool aux_ok(const Desc* d, uint64_t m) {
    if (!gelu_epilogue(d->epilogue)) return true;
    bool ok = d->aux && d->aux_ld >= (int64_t)m && d->aux_ld % 8 == 0;
    if (!ok) std::fprintf(stderr, "cuda-emu cuBLASLt: GELU epilogue without a valid auxiliary matrix (ld %lld)\n", (long long)d->aux_ld);
    return ok;
}

static double gelu_grad(double x) {
    double th = std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + th) + x * 0.5 * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
}

/// GPTRAIN_EMU_NO_EPILOGUE's value (0 when unset): how the GELU epilogue is refused.
static int no_epilogue() {
    const char* v = std::getenv("GPTRAIN_EMU_NO_EPILOGUE");
    return v && v[0] >= '1' && v[0] <= '3' ? v[0] - '0' : 0;
}

// The rows of cublasLtMatmul's "Datatypes Supported" table gptrain could use, for compute type
// 32F with scale type 32F: A and B of one type, C (= D) of that type or f32 for the 16-bit ones;
// FAST_TF32 only with everything f32. Anything else a real cuBLASLt answers NOT_SUPPORTED.
static bool types_ok(const Desc* d, const Layout* a, const Layout* b, const Layout* dl) {
    if (a->type != b->type) return false;
    if (d->compute == COMPUTE_32F_FAST_TF32) return a->type == R_32F && dl->type == R_32F;
    return dl->type == a->type || (a->type != R_32F && dl->type == R_32F);
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(void*, Desc* d, Layout* a, Layout* b, Layout* c, Layout* dl, Pref*, int requested,
                                              Heuristic* out, int* returned) {
    uint64_t m, n, k;
    if (!shapes(d, a, b, c, dl, &m, &n, &k) || requested < 1) return INVALID_VALUE;
    trace("heuristic", d, a, b, dl, m, n, k);
    if (!types_ok(d, a, b, dl)) {
        std::fprintf(stderr, "cuda-emu cuBLASLt: types A %d, B %d, D %d with compute %d are not in cuBLASLt's table\n", a->type, b->type,
                     dl->type, d->compute);
        return NOT_SUPPORTED;
    }
    if (!known_epilogue(d->epilogue)) {
        std::fprintf(stderr, "cuda-emu cuBLASLt: epilogue %d is not emulated\n", d->epilogue);
        return NOT_SUPPORTED;
    }
    // GPTRAIN_EMU_NO_EPILOGUE: a library or card without the GELU epilogue (the caller's
    // fallback), refused here as NOT_SUPPORTED (1) or INVALID_VALUE (2), or at the product (3)
    int no = no_epilogue();
    if (gelu_epilogue(d->epilogue) && no == 1) return NOT_SUPPORTED;
    if (gelu_epilogue(d->epilogue) && no == 2) return INVALID_VALUE;
    if (!aux_ok(d, m)) return INVALID_VALUE;
    // GPTRAIN_EMU_NO_BIAS_VECTOR=1: the heuristic answers INVALID_VALUE for a biased product
    // with one row or column, as PyTorch reports of cuBLASLt (aten/src/ATen/native/cuda/Blas.cpp)
    const char* nbv = std::getenv("GPTRAIN_EMU_NO_BIAS_VECTOR");
    if (nbv && nbv[0] == '1' && d->epilogue == EPILOGUE_BIAS && (m == 1 || n == 1)) return INVALID_VALUE;
    std::memset(out, 0, sizeof *out);
    out->state = OK;
    out->wavesCount = 1.0f;
    *returned = 1;
    return OK;
}

cublasStatus_t cublasLtMatmul(void*, Desc* d, const void* alpha, const void* A, Layout* la, const void* B, Layout* lb, const void* beta,
                              const void* C, Layout* lc, void* D, Layout* ld, const Algo*, void*, size_t, void*) {
    uint64_t m, n, k;
    if (!shapes(d, la, lb, lc, ld, &m, &n, &k)) return INVALID_VALUE;
    trace("matmul", d, la, lb, ld, m, n, k);
    bool biased = d->epilogue == EPILOGUE_BIAS;
    if (biased && !d->bias) return INVALID_VALUE;
    if (!known_epilogue(d->epilogue)) return NOT_SUPPORTED;
    if (!aux_ok(d, m)) return INVALID_VALUE;
    if (gelu_epilogue(d->epilogue) && no_epilogue() == 3) return INVALID_VALUE;
    int bias_type = d->bias_type < 0 ? ld->type : d->bias_type;
    int aux_type = d->aux_type < 0 ? ld->type : d->aux_type;
    float al, be;
    std::memcpy(&al, alpha, 4);
    std::memcpy(&be, beta, 4);
    std::vector<float> out(m * n);
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) {
            double s = 0.0;
            for (uint64_t p = 0; p < k; p++) {
                float x = d->transa ? read(A, la->type, p + i * la->ld) : read(A, la->type, i + p * la->ld);
                float y = d->transb ? read(B, lb->type, j + p * lb->ld) : read(B, lb->type, p + j * lb->ld);
                s += (double)x * (double)y;
            }
            double v = (double)al * s;
            if (be != 0.0f) v += (double)be * read(C, lc->type, i + j * lc->ld);
            if (biased) v += read(d->bias, bias_type, i);
            if (d->epilogue == EPILOGUE_DGELU) {
                v *= gelu_grad(read(d->aux, aux_type, i + j * d->aux_ld));
            }
            out[i + j * m] = (float)v;
        }
    for (uint64_t j = 0; j < n; j++)
        for (uint64_t i = 0; i < m; i++) write(D, ld->type, i + j * ld->ld, out[i + j * m]);
    return OK;
}
}
