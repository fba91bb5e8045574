// The pybind11 module sae_native._cuda. Like csrc/bindings.cpp it knows nothing of the math: it
// turns the raw device pointers, sizes, dtype codes and stream handles that
// python/sae_native/backends/cuda.py passes into launcher calls (cuda/launch.h), with the GIL
// released. Launches are asynchronous on the caller's stream.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "keys.h"
#include "launch.h"

namespace py = pybind11;
using namespace sae_cuda;
using ptr_t = std::uintptr_t;

namespace {

template <class T> T* as(ptr_t p) { return reinterpret_cast<T*>(p); }
void* stream_of(ptr_t s) { return reinterpret_cast<void*>(s); }

std::vector<std::string> archs() {
  std::vector<std::string> out;
  std::string all = SAE_NATIVE_CUDA_ARCHS;  // "80-real,90a-real,90-virtual": CMake's list
  size_t start = 0;
  while (start <= all.size()) {
    const size_t end = all.find(',', start);
    const std::string item = all.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!item.empty()) out.push_back(item);
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}


EncodeLaunch encode_launch(int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t u, ptr_t w, ptr_t b_enc,
                           index_t chunk_latents, int chunks, bool vec, ptr_t stream) {
  return EncodeLaunch{w_dtype, n, d_in, d_sae, as<const void>(u), as<const void>(w), as<const float>(b_enc),
                      chunk_latents, chunks, vec, stream_of(stream)};
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "sae-native CUDA kernels (raw pointers; use sae_native's Python API)";
  m.attr("ARCHS") = archs();
  m.attr("TILE_M") = kTileM;
  m.attr("TILE_N") = kTileN;
  m.attr("CAPS") = std::vector<int>(std::begin(kCaps), std::end(kCaps));
  m.attr("SORT_MAX") = kSortMax;
  // The driver, the runtime linked in, the devices, and why none is usable (build_info reports it).
  m.def("runtime_info", [] {
    const RuntimeInfo r = runtime_info();
    py::dict d;
    d["driver_version"] = r.driver_version;
    d["runtime_version"] = r.runtime_version;
    d["device_count"] = r.device_count;
    d["error"] = r.error;
    return d;
  });
  m.def("device_count", [] { return runtime_info().device_count; });
  m.def("device_limits", [] {
    const DeviceLimits l = device_limits();
    py::dict d;
    d["sm_count"] = l.sm_count;
    d["smem_optin"] = l.smem_optin;
    d["smem_per_sm"] = l.smem_per_sm;
    d["compute_capability"] = py::make_tuple(l.major, l.minor);
    return d;
  });
  m.def("load_kernels", &load_kernels);
  m.def("topk_smem_bytes", &topk_smem_bytes);
  m.def("topk_blocks_per_sm", &topk_blocks_per_sm);
  m.def("threshold_blocks_per_sm", &threshold_blocks_per_sm);
  using rel = py::call_guard<py::gil_scoped_release>;

  m.def("encode_topk",
        [](int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t u, ptr_t w, ptr_t b_enc, int k, int cap,
           index_t chunk_latents, int chunks, ptr_t cand, bool vec, ptr_t stream) {
          encode_topk(encode_launch(w_dtype, n, d_in, d_sae, u, w, b_enc, chunk_latents, chunks, vec, stream), k, cap,
                      as<uint64_t>(cand));
        },
        rel());
  m.def("encode_threshold",
        [](int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t u, ptr_t w, ptr_t b_enc, ptr_t threshold,
           index_t cap, index_t chunk_latents, int chunks, ptr_t counts, ptr_t hits, ptr_t nonfinite, bool vec,
           ptr_t stream) {
          encode_threshold(encode_launch(w_dtype, n, d_in, d_sae, u, w, b_enc, chunk_latents, chunks, vec, stream),
                           as<const float>(threshold), cap, as<int64_t>(counts), as<uint64_t>(hits),
                           as<uint64_t>(nonfinite));
        },
        rel());
  m.def("sort_rows",
        [](index_t n, ptr_t keys, index_t row_stride, index_t m_, ptr_t counts, int size, index_t width, bool relu,
           ptr_t values, ptr_t indices, ptr_t stream) {
          sort_rows(n, as<const uint64_t>(keys), row_stride, m_, as<const int64_t>(counts), size, width, relu,
                    as<float>(values), as<int64_t>(indices), stream_of(stream));
        },
        rel());
  m.def("decode",
        [](int t_dtype, int w_dtype, index_t n, index_t k, ptr_t values, ptr_t indices, ptr_t w, index_t d_sae,
           index_t d_in, index_t rs, index_t cs, ptr_t b_dec, ptr_t out, ptr_t report, ptr_t stream) {
          decode(t_dtype, w_dtype, n, k, as<const void>(values), as<const int64_t>(indices), as<const void>(w), d_sae,
                 d_in, rs, cs, as<const void>(b_dec), as<void>(out), as<unsigned long long>(report),
                 stream_of(stream));
        },
        rel());
  m.def("sparse_dot",
        [](int t_dtype, int w_dtype, index_t n, index_t k, ptr_t g, ptr_t indices, ptr_t w, index_t rows, index_t d,
           index_t rs, index_t cs, ptr_t out, ptr_t report, ptr_t stream) {
          sparse_dot(t_dtype, w_dtype, n, k, as<const void>(g), as<const int64_t>(indices), as<const void>(w), rows, d,
                     rs, cs, as<void>(out), as<unsigned long long>(report), stream_of(stream));
        },
        rel());
  m.def("sparse_outer",
        [](int t_dtype, index_t n, index_t k, ptr_t values, ptr_t indices, ptr_t g, index_t d, ptr_t out, index_t rows,
           index_t rs, index_t cs, ptr_t report, ptr_t stream) {
          sparse_outer(t_dtype, n, k, as<const void>(values), as<const int64_t>(indices), as<const void>(g), d,
                       as<void>(out), rows, rs, cs, as<unsigned long long>(report), stream_of(stream));
        },
        rel());
  m.def("steer_codes",
        [](int t_dtype, index_t n, index_t d, index_t k, ptr_t base, ptr_t values, ptr_t indices, index_t d_sae,
           index_t count, ptr_t features, ptr_t targets, ptr_t dec_rows, int mode, bool only_active, ptr_t y, ptr_t z,
           ptr_t report, ptr_t stream) {
          steer_codes(t_dtype, n, d, k, as<const void>(base), as<const void>(values), as<const int64_t>(indices),
                      d_sae, count, as<const int64_t>(features), as<const void>(targets), as<const void>(dec_rows),
                      mode, only_active, as<void>(y), as<void>(z), as<unsigned long long>(report), stream_of(stream));
        },
        rel());
  m.def("gather_clamp",
        [](int t_dtype, int w_dtype, index_t d, index_t d_sae, index_t count, ptr_t features, ptr_t w_enc,
           index_t enc_rs, index_t enc_cs, ptr_t b_enc, ptr_t threshold, ptr_t w_dec, index_t dec_rs, index_t dec_cs,
           ptr_t enc_cols, ptr_t b_f, ptr_t thr_f, ptr_t dec_rows, ptr_t report, ptr_t stream) {
          gather_clamp(t_dtype, w_dtype, d, d_sae, count, as<const int64_t>(features), as<const void>(w_enc), enc_rs,
                       enc_cs, as<const void>(b_enc), as<const void>(threshold), as<const void>(w_dec), dec_rs, dec_cs,
                       as<void>(enc_cols), as<void>(b_f), as<void>(thr_f), as<void>(dec_rows),
                       as<unsigned long long>(report), stream_of(stream));
        },
        rel());
  m.def("steer_threshold",
        [](int t_dtype, index_t n, index_t d, ptr_t x, ptr_t b_dec, index_t count, ptr_t features, index_t d_sae,
           ptr_t enc_cols, ptr_t b_enc_f, ptr_t threshold_f, ptr_t dec_rows, ptr_t targets, int mode,
           bool only_active, ptr_t y, ptr_t z, ptr_t stream) {
          steer_threshold(t_dtype, n, d, as<const void>(x), as<const void>(b_dec), count,
                          as<const int64_t>(features), d_sae, as<const void>(enc_cols),
                          as<const void>(b_enc_f), as<const void>(threshold_f), as<const void>(dec_rows),
                          as<const void>(targets), mode, only_active, as<void>(y), as<void>(z), stream_of(stream));
        },
        rel());

  // Reference kernels (tests only).
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

  // The candidate-key encoding, host side, so the CPU tests can check the Python decoder of keys
  // (backends/cuda_keys.py) against the very functions the kernels use.
  m.def("candidate_key", [](float value, uint32_t latent) { return candidate_key(value, latent); });
  m.def("candidate_value", [](uint64_t key) { return candidate_value(key); });
  m.def("candidate_latent", [](uint64_t key) { return candidate_latent(key); });
  // The bitonic network the kernels run, pass by pass on the host (n a power of two).
  m.def("bitonic_sort_desc", [](std::vector<uint64_t> a) {
    const int n = int(a.size());
    if (n == 0 || (n & (n - 1)) != 0) throw std::invalid_argument("bitonic_sort_desc: size must be a power of two");
    for (int size = 2; size <= n; size <<= 1)
      for (int stride = size >> 1; stride > 0; stride >>= 1)
        for (int i = 0; i < n / 2; ++i) bitonic_pass(a.data(), i, size, stride);
    return a;
  });
}
