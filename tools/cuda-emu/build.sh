#!/usr/bin/env bash
# Builds gptrain's CUDA emulator (a CPU stand-in for libcuda, cuBLASLt and NVRTC) into DIR:
#     tools/cuda-emu/build.sh DIR
# then runs gptrain against it:
#     LD_LIBRARY_PATH=DIR GPTRAIN_CUDA_LIB_DIR=DIR gptrain check --device cuda
# It needs a C++17 compiler ($CXX, else c++), at build time and when kernels are compiled.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh DIR}
mkdir -p "$out"
cxx=${CXX:-c++}
flags=(-std=c++17 -O2 -fPIC -shared -Wall -Wno-unused-function)
"$cxx" "${flags[@]}" -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so.1" "$here/driver.cpp" -ldl
ln -sf libcuda.so.1 "$out/libcuda.so"
"$cxx" "${flags[@]}" -Wl,-soname,libcublasLt.so.13 -o "$out/libcublasLt.so.13" "$here/cublaslt.cpp"
"$cxx" "${flags[@]}" -Wl,-soname,libnvrtc.so.13 -o "$out/libnvrtc.so.13" "$here/nvrtc.cpp" -ldl
cp "$here/emu.h" "$here/half.h" "$out/"
# kernels cached under DIR/cache (the tests' XDG_CACHE_HOME) were built against the previous
# emu.h, whose structures the new driver may lay out differently: never reuse them
rm -rf "$out/cache"
