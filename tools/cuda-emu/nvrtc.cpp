// gptrain's CUDA emulator: an NVRTC whose "CUBIN" is a host shared library. It compiles a kernel
// source with the host's C++ compiler ($CXX, else c++), emu.h in front, and adds for every
// `extern "C" __global__` kernel an `emu_launch_<name>` entry that the fake driver calls. The
// library is an ELF file, so gptrain's CUBIN checks and kernel cache take it as they are.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <vector>
#include <sstream>
#include <string>
#include <unistd.h>

extern "C" {
typedef int nvrtcResult;
enum { SUCCESS = 0, OUT_OF_MEMORY = 1, INVALID_INPUT = 3, INVALID_PROGRAM = 4, INVALID_OPTION = 5, COMPILATION = 6 };

struct Program {
    std::string src, name, log, bin;
};

static std::string here() {
    Dl_info info;
    dladdr(reinterpret_cast<void*>(&here), &info);
    std::string p = info.dli_fname ? info.dli_fname : "";
    return p.substr(0, p.rfind('/'));
}

static std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// Every static `__shared__ ... a[..], b[..];` declaration followed, on its last line (it may be
// inside a macro), by emu::poison_shared of each array it declares: NaN at each block's start.
// A declarator's name is the last identifier before its first `[` (after any type words and
// `__align__(n)`); `extern __shared__` (the dynamic buffer, rewritten before) is left alone.
static std::string poison_static_shared(const std::string& src) {
    std::regex decl(R"(__shared__([^;{}]*);)");
    std::regex name(R"((\w+)\s*$)");
    std::string out;
    auto last = src.cbegin();
    for (auto it = std::sregex_iterator(src.begin(), src.end(), decl); it != std::sregex_iterator(); ++it) {
        const std::smatch& m = *it;
        out.append(last, m[0].first);
        out += m.str(0);
        last = m[0].second;
        size_t at = (size_t)(m[0].first - src.cbegin()), nl = at == 0 ? std::string::npos : src.rfind('\n', at - 1);
        size_t line = nl == std::string::npos ? 0 : nl + 1;
        if (src.substr(line, at - line).find("extern") != std::string::npos) continue;
        // split the declarators at the commas outside brackets and parentheses
        std::string decls = m.str(1), cur;
        std::vector<std::string> parts;
        int depth = 0;
        for (char c : decls) {
            if (c == '[' || c == '(') depth++;
            if (c == ']' || c == ')') depth--;
            if (c == ',' && depth == 0) {
                parts.push_back(cur);
                cur.clear();
            } else {
                cur += c;
            }
        }
        parts.push_back(cur);
        for (const std::string& d : parts) {
            std::string head = d.substr(0, d.find('['));
            std::smatch id;
            if (std::regex_search(head, id, name)) out += " emu::poison_shared(&" + id.str(1) + ", sizeof(" + id.str(1) + "));";
        }
    }
    out.append(last, src.cend());
    return out;
}

// 12.99 or 13.99 (the CUDA it stands in for, EMU_CUDA): a version no real NVRTC has, so
// gptrain's kernel cache (keyed by it) never hands a real GPU an emulator's "CUBIN", nor the
// emulator a real one
nvrtcResult nvrtcVersion(int* major, int* minor) {
    *major = EMU_CUDA / 1000;
    *minor = 99;
    return SUCCESS;
}

const char* nvrtcGetErrorString(nvrtcResult r) {
    switch (r) {
    case SUCCESS: return "NVRTC_SUCCESS";
    case COMPILATION: return "NVRTC_ERROR_COMPILATION";
    case INVALID_OPTION: return "NVRTC_ERROR_INVALID_OPTION";
    default: return "NVRTC_ERROR (cuda-emu)";
    }
}

nvrtcResult nvrtcCreateProgram(Program** prog, const char* src, const char* name, int headers, const char* const*, const char* const*) {
    if (!src || headers != 0) return INVALID_INPUT;
    *prog = new Program{src, name ? name : "kernel.cu", "", ""};
    return SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(Program** prog) {
    delete *prog;
    *prog = nullptr;
    return SUCCESS;
}

nvrtcResult nvrtcCompileProgram(Program* p, int n, const char* const* options) {
    for (int i = 0; i < n; i++) {
        std::string o = options[i];
        if (o.rfind("--gpu-architecture=", 0) != 0 && o != "--fmad=false" && o.rfind("--std=", 0) != 0) {
            p->log = "cuda-emu NVRTC: option " + o + " is not emulated";
            return INVALID_OPTION;
        }
    }
    char tmpl[] = "/tmp/gptrain-cuda-emu-XXXXXX";
    if (!mkdtemp(tmpl)) return OUT_OF_MEMORY;
    std::string dir = tmpl, cxx = std::getenv("CXX") ? std::getenv("CXX") : "c++";
    // the kernels' names, from the source with its macros expanded
    { std::ofstream(dir + "/src.cu") << p->src; }
    std::string pre = cxx + " -E -P -x c++ -DGPTRAIN_EMU " + dir + "/src.cu -o " + dir + "/src.i 2>" + dir + "/log";
    std::map<std::string, unsigned> kernels; // name -> its __launch_bounds__ (0: none)
    if (std::system(pre.c_str()) == 0) {
        std::string expanded = slurp(dir + "/src.i");
        std::regex k(R"(extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\(\s*(\d+)[^)]*\)\s+)?void\s+(\w+)\s*\()");
        for (auto it = std::sregex_iterator(expanded.begin(), expanded.end(), k); it != std::sregex_iterator(); ++it)
            kernels[(*it)[2]] = (*it)[1].matched ? (unsigned)std::stoul((*it)[1]) : 0u;
    }
    // dynamic shared memory: the block's buffer
    std::string body = std::regex_replace(p->src, std::regex(R"(extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;)"),
                                          "$1* $2 = ($1*)emu_dyn_smem();");
    body = poison_static_shared(body);
    std::ostringstream out;
    out << "#include \"" << here() << "/emu.h\"\n#line 1 \"" << p->name << "\"\n" << body << "\n";
    for (const auto& [k, bound] : kernels) {
        out << "extern \"C\" void emu_launch_" << k << "(emu::Launch* l) { emu::launch(" << k << ", l, \"" << k << "\"); }\n";
        // the driver's MAX_THREADS_PER_BLOCK for it: a GPU refuses a launch past the bound
        if (bound) out << "extern \"C\" const unsigned emu_max_threads_" << k << " = " << bound << ";\n";
    }
    { std::ofstream(dir + "/kernel.cpp") << out.str(); }
    std::string cmd = cxx + " -std=c++17 -O2 -fPIC -shared -ffp-contract=off -fno-fast-math -DGPTRAIN_EMU -o " + dir + "/kernel.so " + dir +
                      "/kernel.cpp >" + dir + "/log 2>&1";
    int rc = std::system(cmd.c_str());
    p->log = slurp(dir + "/log");
    if (rc == 0) p->bin = slurp(dir + "/kernel.so");
    std::system(("rm -rf " + dir).c_str());
    if (rc != 0 || kernels.empty()) {
        if (kernels.empty()) p->log += "cuda-emu NVRTC: no extern \"C\" __global__ kernel found\n";
        return COMPILATION;
    }
    return SUCCESS;
}

nvrtcResult nvrtcGetProgramLogSize(Program* p, size_t* n) { *n = p->log.size() + 1; return SUCCESS; }
nvrtcResult nvrtcGetProgramLog(Program* p, char* out) { std::memcpy(out, p->log.c_str(), p->log.size() + 1); return SUCCESS; }
nvrtcResult nvrtcGetCUBINSize(Program* p, size_t* n) { *n = p->bin.size(); return p->bin.empty() ? INVALID_PROGRAM : SUCCESS; }
nvrtcResult nvrtcGetCUBIN(Program* p, char* out) { std::memcpy(out, p->bin.data(), p->bin.size()); return SUCCESS; }
nvrtcResult nvrtcGetPTXSize(Program*, size_t*) { return INVALID_PROGRAM; }
nvrtcResult nvrtcGetPTX(Program*, char*) { return INVALID_PROGRAM; }
}
