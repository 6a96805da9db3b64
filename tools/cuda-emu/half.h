// bf16 and IEEE f16 <-> f32, round to nearest even: the host side of gptrain's CUDA emulator.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace halfemu {
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float bf16_to_f32(uint16_t b) { return bits_float((uint32_t)b << 16); }
inline uint16_t f32_to_bf16(float f) {
    uint32_t b = float_bits(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40u);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

inline float f16_to_f32(uint16_t h) {
    uint32_t s = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return bits_float(s | 0x7f800000u | (m << 13) | (m ? 0x400000u : 0));
    if (e == 0) {
        float f = std::ldexp((float)m, -24);
        return s ? -f : f;
    }
    return bits_float(s | ((e + 112) << 23) | (m << 13));
}
inline uint16_t f32_to_f16(float f) {
    uint32_t x = float_bits(f), s = (x >> 16) & 0x8000, a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(s | 0x7e00 | ((a >> 13) & 0x3ff)); // NaN stays a quiet NaN
    if (a >= 0x477ff000u) return (uint16_t)(s | 0x7c00);                        // rounds to infinity
    if (a < 0x38800000u) return (uint16_t)(s | (uint16_t)std::nearbyint(bits_float(a) * 16777216.0f)); // subnormal: units of 2^-24
    uint32_t r = a - 0x38000000u;                                              // rebias the exponent (127 -> 15)
    return (uint16_t)(s | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
}
} // namespace halfemu
