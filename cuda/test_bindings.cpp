// sae_native._cuda_test: what only the tests need from the CUDA side, kept out of the production
// module: the reference kernels (cuda/reference.cu), the candidate-key encoding on the host (so the
// CPU tests can check the Python decoder of keys against the very functions the kernels use), and
// the bitonic network the kernels sort with, pass by pass on the host. Built with
// -DSAE_NATIVE_CUDA_TEST_KERNELS=ON; the CPU emulator adds the same functions to its module.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "bind_util.h"
#include "keys.h"
#include "reference.h"

namespace py = pybind11;
using namespace sae_cuda;

void bind_test_kernels(py::module_& m) {
  using rel = py::call_guard<py::gil_scoped_release>;
  m.def("ref_preact",
        [](int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t u, ptr_t w, ptr_t b_enc, ptr_t pre,
           ptr_t stream) {
          ref_preact(w_dtype, n, d_in, d_sae, as<const void>(u), as<const void>(w), as<const float>(b_enc),
                     as<float>(pre), stream_of(stream));
        },
        rel());
  m.def("ref_select_topk",
        [](index_t n, index_t d_sae, index_t k, ptr_t pre, ptr_t values, ptr_t indices, ptr_t stream) {
          ref_select_topk(n, d_sae, k, as<const float>(pre), as<float>(values), as<int64_t>(indices),
                          stream_of(stream));
        },
        rel());
  m.def("ref_select_threshold",
        [](index_t n, index_t d_sae, ptr_t pre, ptr_t threshold, index_t width, ptr_t values, ptr_t indices,
           ptr_t counts, ptr_t stream) {
          ref_select_threshold(n, d_sae, as<const float>(pre), as<const float>(threshold), width, as<float>(values),
                               as<int64_t>(indices), as<int64_t>(counts), stream_of(stream));
        },
        rel());
  m.def("ref_decode",
        [](int t_dtype, int w_dtype, index_t n, index_t k, ptr_t values, ptr_t indices, ptr_t w, index_t d_sae,
           index_t d_in, index_t rs, index_t cs, ptr_t b_dec, ptr_t out, ptr_t stream) {
          ref_decode(t_dtype, w_dtype, n, k, as<const void>(values), as<const int64_t>(indices), as<const void>(w),
                     d_sae, d_in, rs, cs, as<const void>(b_dec), as<void>(out), stream_of(stream));
        },
        rel());
  m.def("candidate_key", [](float value, uint32_t latent) { return candidate_key(value, latent); });
  m.def("candidate_value", [](uint64_t key) { return candidate_value(key); });
  m.def("candidate_latent", [](uint64_t key) { return candidate_latent(key); });
  m.def("bitonic_sort_desc", [](std::vector<uint64_t> a) {
    const int n = int(a.size());
    if (n == 0 || (n & (n - 1)) != 0) throw std::invalid_argument("bitonic_sort_desc: size must be a power of two");
    for (int size = 2; size <= n; size <<= 1)
      for (int stride = size >> 1; stride > 0; stride >>= 1)
        for (int i = 0; i < n / 2; ++i) bitonic_pass(a.data(), i, size, stride);
    return a;
  });
}

#ifndef SAE_CUDA_EMULATOR
PYBIND11_MODULE(_cuda_test, m) {
  m.doc() = "sae-native CUDA test kernels (reference kernels and host copies of device helpers)";
  bind_test_kernels(m);
}
#endif
