// Which SIMD path the CPU kernels run: detected once by cpuid, capped by SPARSEYOLO_CPU_ISA so tests and A/B runs
// can take every path on one machine. Torch-free. One build runs everywhere: the fast paths are compiled with
// per-function target attributes and only called when this says the CPU (and the OS, through XCR0, which GCC's
// __builtin_cpu_supports checks for AVX-512) has them.
#pragma once

#include <cstdlib>
#include <cstring>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace sparseyolo {
namespace kernels {

// Ordered: a path may use everything of the ones below it.
enum class CpuIsa : int {
  kPortable = 0,    // plain C++ (the compiler's baseline, SSE2 on x86-64)
  kAvx2 = 1,        // AVX2 + FMA
  kAvx512 = 2,      // AVX-512 F/BW/VL (+ AVX2/FMA)
  kAvx512Bf16 = 3,  // the above + AVX-512 BF16 (vdpbf16ps, vcvtneps2bf16)
  kAmx = 4,         // the above + AMX-TILE/AMX-BF16 with the OS's permission (Linux arch_prctl)
};

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAmx: return "amx";
    case CpuIsa::kAvx512Bf16: return "avx512_bf16";
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "portable";
  }
}

// Parses a name of cpu_isa_name(); false for anything else.
inline bool cpu_isa_parse(const char* name, CpuIsa* out) {
  for (CpuIsa isa : {CpuIsa::kPortable, CpuIsa::kAvx2, CpuIsa::kAvx512, CpuIsa::kAvx512Bf16, CpuIsa::kAmx}) {
    if (std::strcmp(name, cpu_isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

// AMX tiles: the CPU has AMX-TILE and AMX-BF16 (cpuid leaf 7: EDX bits 24, 22) and Linux lets this process use
// the tile data state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), once per process).
inline bool cpu_has_amx_bf16() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!((d >> 24) & 1) || !((d >> 22) & 1)) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// The best path this CPU supports (cached).
inline CpuIsa cpu_isa_detected() {
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
  static const CpuIsa isa = [] {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return CpuIsa::kPortable;
    if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
          __builtin_cpu_supports("avx512vl"))) {
      return CpuIsa::kAvx2;
    }
    if (!__builtin_cpu_supports("avx512bf16")) return CpuIsa::kAvx512;
    return cpu_has_amx_bf16() ? CpuIsa::kAmx : CpuIsa::kAvx512Bf16;
  }();
  return isa;
#else
  return CpuIsa::kPortable;
#endif
}

// The environment's cap: SPARSEYOLO_CPU_ISA unset or empty -> no cap (true, *cap = kAmx); a valid name ->
// that cap; anything else -> false (the caller reports the bad value).
inline bool cpu_isa_env_cap(CpuIsa* cap) {
  const char* v = std::getenv("SPARSEYOLO_CPU_ISA");
  if (v == nullptr || *v == '\0') {
    *cap = CpuIsa::kAmx;
    return true;
  }
  return cpu_isa_parse(v, cap);
}

inline CpuIsa cpu_isa_min(CpuIsa a, CpuIsa b) { return static_cast<int>(a) < static_cast<int>(b) ? a : b; }

}  // namespace kernels
}  // namespace sparseyolo
