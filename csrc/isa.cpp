#include "isa.h"

#include <atomic>

namespace sae {
namespace {

// Variants compiled in (a null entry was not: see CMakeLists.txt).
const IsaKernels* const kAll[] = {&kGenericKernels, kAvx2Kernels, kAvx512Kernels, kAvx512Bf16Kernels,
                                  kAmxKernels, kAmxEmulatedKernels};

const IsaKernels* best_supported() {
  const IsaKernels* best = nullptr;
  for (const IsaKernels* k : kAll)
    if (k != nullptr && k->supported() && (best == nullptr || k->rank > best->rank)) best = k;
  return best;
}

const IsaKernels* find_supported(const std::string& name) {
  for (const IsaKernels* k : kAll)
    if (k != nullptr && name == k->isa && k->supported()) return k;
  return nullptr;
}

// The best supported variant, chosen on first use, never during static initialisation. Python
// applies SAE_NATIVE_ISA at import (select_isa), with a warning for a value it cannot honour.
std::atomic<const IsaKernels*>& active() {
  static std::atomic<const IsaKernels*> chosen{best_supported()};
  return chosen;
}

}  // namespace

#ifndef SAE_NATIVE_X86_KERNELS
const IsaKernels* const kAvx2Kernels = nullptr;
const IsaKernels* const kAvx512Kernels = nullptr;
const IsaKernels* const kAvx512Bf16Kernels = nullptr;
const IsaKernels* const kAmxKernels = nullptr;
const IsaKernels* const kAmxEmulatedKernels = nullptr;
#endif

const IsaKernels& active_kernels() { return *active().load(); }

std::vector<std::string> compiled_isas() {
  std::vector<std::string> names;
  for (const IsaKernels* k : kAll)
    if (k != nullptr) names.push_back(k->isa);
  return names;
}

std::vector<std::string> supported_isas() {
  std::vector<const IsaKernels*> ks;
  for (const IsaKernels* k : kAll)
    if (k != nullptr && k->supported()) ks.push_back(k);
  std::vector<std::string> names;
  while (!ks.empty()) {
    size_t best = 0;
    for (size_t i = 1; i < ks.size(); ++i)
      if (ks[i]->rank > ks[best]->rank) best = i;
    names.push_back(ks[best]->isa);
    ks.erase(ks.begin() + long(best));
  }
  return names;
}

bool select_isa(const std::string& name) {
  const IsaKernels* k = find_supported(name);
  if (k == nullptr) return false;
  active().store(k);
  return true;
}

std::vector<std::string> cpu_features() {
  std::vector<std::string> out;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) out.push_back("sse4.2");
  if (__builtin_cpu_supports("avx")) out.push_back("avx");
  if (__builtin_cpu_supports("avx2")) out.push_back("avx2");
  if (__builtin_cpu_supports("fma")) out.push_back("fma");
  if (__builtin_cpu_supports("f16c")) out.push_back("f16c");
  if (__builtin_cpu_supports("avx512f")) out.push_back("avx512f");
  if (__builtin_cpu_supports("avx512bw")) out.push_back("avx512bw");
  if (__builtin_cpu_supports("avx512vl")) out.push_back("avx512vl");
  if (__builtin_cpu_supports("avx512bf16")) out.push_back("avx512_bf16");
  if (__builtin_cpu_supports("amx-tile")) out.push_back("amx_tile");
  if (__builtin_cpu_supports("amx-bf16")) out.push_back("amx_bf16");
#elif defined(__aarch64__)
  out.push_back("neon");
#endif
  return out;
}

}  // namespace sae
