// AMX (Intel Sapphire Rapids and later): the bf16-weight encode on tile instructions
// (amx_tile.h). Compiled with -mamx-tile -mamx-bf16 and the avx512_bf16 variant's flags
// (CMakeLists.txt).
//
// Off by default: nobody has run it on an AMX CPU yet, so `auto` never picks it (its rank is below
// avx512_bf16's); SAE_NATIVE_ISA=amx chooses it where the CPU has AMX. Its code runs on every
// machine in the test suite as the amx_emulated variant (isa_amx_emulated.cpp).
#include <sys/syscall.h>
#include <unistd.h>

#include "amx_tile.h"

namespace sae {
namespace {

#define SAE_TILE_SWITCH(t, op) \
  switch (t) {                 \
    case 0: op(0); break;      \
    case 1: op(1); break;      \
    case 2: op(2); break;      \
    case 3: op(3); break;      \
    case 4: op(4); break;      \
    case 5: op(5); break;      \
    default: op(6); break;     \
  }

#define SAE_ACC_SWITCH(t, op) \
  switch (t) {                \
    case 0: op(0); break;     \
    case 1: op(1); break;     \
    case 2: op(2); break;     \
    default: op(3); break;    \
  }

struct RealTiles {
  static void load_config(const amx::Config* c) { _tile_loadconfig(c); }
  static void zero(int t) {
#define SAE_ZERO(n) _tile_zero(n)
    SAE_TILE_SWITCH(t, SAE_ZERO)
#undef SAE_ZERO
  }
  static void load(int t, const void* p, index_t stride) {
#define SAE_LOAD(n) _tile_loadd(n, p, stride)
    SAE_TILE_SWITCH(t, SAE_LOAD)
#undef SAE_LOAD
  }
  static void store(int t, void* p, index_t stride) {
#define SAE_STORE(n) _tile_stored(n, p, stride)
    SAE_TILE_SWITCH(t, SAE_STORE)
#undef SAE_STORE
  }
  // c += tile 4 (u) x b, b tile 5 or 6
  static void dot(int c, int b) {
#define SAE_DOT5(n) _tile_dpbf16ps(n, 4, 5)
#define SAE_DOT6(n) _tile_dpbf16ps(n, 4, 6)
    if (b == amx::kB0) {
      SAE_ACC_SWITCH(c, SAE_DOT5)
    } else {
      SAE_ACC_SWITCH(c, SAE_DOT6)
    }
#undef SAE_DOT5
#undef SAE_DOT6
  }
};

#undef SAE_TILE_SWITCH
#undef SAE_ACC_SWITCH

// Linux hands a process the tile registers' state only on request (once; the answer is kept).
bool permitted() {
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  static const bool ok = syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  return ok;
}

bool supported() {
  __builtin_cpu_init();
  return kAvx512Kernels != nullptr && kAvx512Kernels->supported() && __builtin_cpu_supports("avx512bf16") &&
         __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && permitted();
}

const IsaKernels kTable = amx::table<RealTiles>("amx", 25, supported);

}  // namespace

const IsaKernels* const kAmxKernels = &kTable;

}  // namespace sae
