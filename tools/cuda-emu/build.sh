#!/usr/bin/env bash
# Builds gptrain's CUDA emulator (a CPU stand-in for libcuda, cuBLASLt, NVRTC and NCCL) into DIR:
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
# one set of libraries standing in for CUDA version $2 (13000: 13.0) in folder $1
build_set() {
    local dir=$1 cuda=$2 major=$(($2 / 1000))
    mkdir -p "$dir"
    "$cxx" "${flags[@]}" -DEMU_CUDA="$cuda" -Wl,-soname,libcuda.so.1 -o "$dir/libcuda.so.1" "$here/driver.cpp" -ldl
    ln -sf libcuda.so.1 "$dir/libcuda.so"
    "$cxx" "${flags[@]}" -DEMU_CUDA="$cuda" -Wl,-soname,libcublasLt.so.$major -o "$dir/libcublasLt.so.$major" "$here/cublaslt.cpp"
    "$cxx" "${flags[@]}" -DEMU_CUDA="$cuda" -Wl,-soname,libnvrtc.so.$major -o "$dir/libnvrtc.so.$major" "$here/nvrtc.cpp" -ldl
    "$cxx" "${flags[@]}" -Wl,-soname,libnccl.so.2 -o "$dir/libnccl.so.2" "$here/nccl.cpp" -lrt -pthread -ldl
    cp "$here/emu.h" "$here/half.h" "$dir/"
}
# DIR: a CUDA 13.0 driver and libraries; DIR/cuda12: a CUDA 12.4 driver (no
# cuEventElapsedTime_v2) with CUDA 12 libraries, for the tests of older drivers
build_set "$out" 13000 & p13=$!
build_set "$out/cuda12" 12040 & p12=$!
wait $p13
wait $p12
# kernels cached under DIR/cache (the tests' XDG_CACHE_HOME) were built against the previous
# emu.h, whose structures the new driver may lay out differently: never reuse them
rm -rf "$out/cache" "$out/cuda12/cache"
