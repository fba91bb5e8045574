// Generic encode tile: plain C++ the compiler auto-vectorises for the baseline ISA.
#include "encode_tile.h"

namespace sae {
namespace {

template <class T, class W, int R>
void tile_rows(const T* u, index_t ldu, const W* panel, index_t d_in, T* acc) {
  T a[R][kPanel] = {};
  for (index_t i = 0; i < d_in; ++i) {
    const W* w = panel + i * kPanel;
    T wv[kPanel];
    for (index_t l = 0; l < kPanel; ++l) wv[l] = widen<T>(w[l]);
    for (int r = 0; r < R; ++r) {
      const T ur = u[r * ldu + i];
      for (index_t l = 0; l < kPanel; ++l) a[r][l] += ur * wv[l];
    }
  }
  for (int r = 0; r < R; ++r)
    for (index_t l = 0; l < kPanel; ++l) acc[r * kPanel + l] = a[r][l];
}

template <class T, class W>
void tile(const T* u, index_t ldu, int rows, const W* panel, index_t d_in, T* acc) {
  switch (rows) {
    case 1: return tile_rows<T, W, 1>(u, ldu, panel, d_in, acc);
    case 2: return tile_rows<T, W, 2>(u, ldu, panel, d_in, acc);
    case 3: return tile_rows<T, W, 3>(u, ldu, panel, d_in, acc);
    default: return tile_rows<T, W, 4>(u, ldu, panel, d_in, acc);
  }
}

bool always() { return true; }

}  // namespace

const EncodeKernels kGenericKernels = {
    "generic", 0, always, 4,
    tile<float, float>, tile<float, bf16>, tile<float, f16>, tile<double, double>,
};

}  // namespace sae
