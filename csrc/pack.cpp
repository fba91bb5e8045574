#include "pack.h"

#include <algorithm>

#include "thread_pool.h"

namespace sae {

template <class W> void pack_panels(const Strided<W>& w, W* out) {
  const index_t d_in = w.rows, d_sae = w.cols;
  const index_t panels = num_panels(d_sae);
  W zero;
  std::memset(&zero, 0, sizeof zero);
  parallel_range(panels, 16, [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      W* dst = out + p * d_in * kPanel;
      const index_t first = p * kPanel;
      const index_t width = std::min(kPanel, d_sae - first);
      for (index_t i = 0; i < d_in; ++i) {
        const W* src = w.row(i) + first * w.col_stride;
        for (index_t l = 0; l < width; ++l) dst[i * kPanel + l] = src[l * w.col_stride];
        for (index_t l = width; l < kPanel; ++l) dst[i * kPanel + l] = zero;
      }
    }
  });
}

template void pack_panels<float>(const Strided<float>&, float*);
template void pack_panels<double>(const Strided<double>&, double*);
template void pack_panels<bf16>(const Strided<bf16>&, bf16*);
template void pack_panels<f16>(const Strided<f16>&, f16*);

}  // namespace sae
