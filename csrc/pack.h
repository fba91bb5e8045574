// Packing W_enc [d_in, d_sae] (any strides) into the panel layout the encode kernels stream.
#pragma once

#include "common.h"
#include "isa_kernels.h"

namespace sae {

inline index_t num_panels(index_t d_sae) { return (d_sae + kPanel - 1) / kPanel; }
inline index_t packed_size(index_t d_in, index_t d_sae) { return num_panels(d_sae) * d_in * kPanel; }

// out[p][i][l] = W_enc[i][p * kPanel + l], zero past d_sae. `out` holds packed_size() elements.
template <class W> void pack_panels(const Strided<W>& w_enc, W* out);

}  // namespace sae
