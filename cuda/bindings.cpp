// The pybind11 module sae_native._cuda. Like csrc/bindings.cpp it knows nothing of the math: it turns
// the tensors Python describes (csrc/op_args.h: Mat, ClampArgs, the CPU module's structs) into
// launcher calls (cuda/launch.h), with the GIL released. The op names and keyword arguments are
// the CPU module's, plus the device scratch, the out-of-range reports and the stream. Launches are
// asynchronous on the caller's stream.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "bind_args.h"
#include "bind_util.h"
#include "launch.h"

namespace py = pybind11;
using namespace sae_cuda;

namespace {

unsigned long long* report_of(ptr_t p) { return reinterpret_cast<unsigned long long*>(p); }

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

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "sae-native CUDA kernels (raw pointers; use sae_native's Python API)";
  sae::bind_op_args(m);
  m.attr("ARCHS") = archs();
  m.attr("TILE_M") = kTileM;
  m.attr("TILE_N") = kTileN;
  m.attr("CAPS") = std::vector<int>(std::begin(kCaps), std::end(kCaps));
  m.attr("SORT_MAX") = kSortMax;
  using rel = py::call_guard<py::gil_scoped_release>;

  // ---- the device ---------------------------------------------------------------------------------
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

  // ---- the ops (python/sae_native/_ops.py declares them) -----------------------------------------
  m.def("encode_topk",
        [](const Mat& u, const Mat& w, ptr_t b_enc, int k, int cap, index_t chunk_latents, int chunks, bool vec,
           ptr_t cand, ptr_t stream) {
          encode_topk(u, w, as<const float>(b_enc), k, cap, EncodeGrid{chunk_latents, chunks}, vec, as<uint64_t>(cand),
                      stream_of(stream));
        },
        py::kw_only(), py::arg("u"), py::arg("w"), py::arg("b_enc"), py::arg("k"), py::arg("cap"),
        py::arg("chunk_latents"), py::arg("chunks"), py::arg("vec"), py::arg("cand"), py::arg("stream"), rel());
  m.def("encode_threshold",
        [](const Mat& u, const Mat& w, ptr_t b_enc, ptr_t threshold, index_t cap, index_t chunk_latents, int chunks,
           bool vec, ptr_t counts, ptr_t hits, ptr_t nonfinite, ptr_t stream) {
          encode_threshold(u, w, as<const float>(b_enc), as<const float>(threshold), cap,
                           EncodeGrid{chunk_latents, chunks}, vec, as<int64_t>(counts), as<uint64_t>(hits),
                           as<uint64_t>(nonfinite), stream_of(stream));
        },
        py::kw_only(), py::arg("u"), py::arg("w"), py::arg("b_enc"), py::arg("threshold"), py::arg("cap"),
        py::arg("chunk_latents"), py::arg("chunks"), py::arg("vec"), py::arg("counts"), py::arg("hits"),
        py::arg("nonfinite"), py::arg("stream"), rel());
  m.attr("EPILOGUE_DTYPE") = kEpilogueDtype;
  m.def("epilogue_topk",
        [](const Mat& pre, ptr_t b_enc, int k, int cap, index_t chunk_latents, int chunks, ptr_t cand, ptr_t stream) {
          epilogue_topk(pre, as<const float>(b_enc), k, cap, EncodeGrid{chunk_latents, chunks}, as<uint64_t>(cand),
                        stream_of(stream));
        },
        py::kw_only(), py::arg("pre"), py::arg("b_enc"), py::arg("k"), py::arg("cap"), py::arg("chunk_latents"),
        py::arg("chunks"), py::arg("cand"), py::arg("stream"), rel());
  m.def("epilogue_threshold",
        [](const Mat& pre, ptr_t b_enc, ptr_t threshold, index_t cap, index_t chunk_latents, int chunks, ptr_t counts,
           ptr_t hits, ptr_t nonfinite, ptr_t stream) {
          epilogue_threshold(pre, as<const float>(b_enc), as<const float>(threshold), cap,
                             EncodeGrid{chunk_latents, chunks}, as<int64_t>(counts), as<uint64_t>(hits),
                             as<uint64_t>(nonfinite), stream_of(stream));
        },
        py::kw_only(), py::arg("pre"), py::arg("b_enc"), py::arg("threshold"), py::arg("cap"),
        py::arg("chunk_latents"), py::arg("chunks"), py::arg("counts"), py::arg("hits"), py::arg("nonfinite"),
        py::arg("stream"), rel());
  m.def("sort_rows",
        [](index_t n, ptr_t keys, index_t row_stride, index_t m_, ptr_t counts, int size, index_t width, bool relu,
           ptr_t values, ptr_t indices, ptr_t stream) {
          sort_rows(n, as<const uint64_t>(keys), row_stride, m_, as<const int64_t>(counts), size, width, relu,
                    as<float>(values), as<int64_t>(indices), stream_of(stream));
        },
        py::kw_only(), py::arg("n"), py::arg("keys"), py::arg("row_stride"), py::arg("m"), py::arg("counts"),
        py::arg("size"), py::arg("width"), py::arg("relu"), py::arg("values"), py::arg("indices"), py::arg("stream"),
        rel());
  m.def("decode",
        [](const Mat& values, const Mat& indices, const Mat& w, ptr_t bias, ptr_t out, ptr_t report, ptr_t stream) {
          decode(values, indices, w, as<const void>(bias), as<void>(out), report_of(report), stream_of(stream));
        },
        py::kw_only(), py::arg("values"), py::arg("indices"), py::arg("w"), py::arg("bias"), py::arg("out"),
        py::arg("report"), py::arg("stream"), rel());
  m.def("sparse_dot",
        [](const Mat& g, const Mat& indices, const Mat& w, ptr_t out, ptr_t report, ptr_t stream) {
          sparse_dot(g, indices, w, as<void>(out), report_of(report), stream_of(stream));
        },
        py::kw_only(), py::arg("g"), py::arg("indices"), py::arg("w"), py::arg("out"), py::arg("report"),
        py::arg("stream"), rel());
  m.def("sparse_outer",
        [](const Mat& values, const Mat& indices, const Mat& g, const Mat& out, ptr_t report, ptr_t stream) {
          sparse_outer(values, indices, g, out, report_of(report), stream_of(stream));
        },
        py::kw_only(), py::arg("values"), py::arg("indices"), py::arg("g"), py::arg("out"), py::arg("report"),
        py::arg("stream"), rel());
  m.def("steer_scratch_elements", &steer_scratch_elements);
  m.def("steer_threshold",
        [](const Mat& x, const Mat& w_enc, ptr_t b_enc, ptr_t threshold, ptr_t b_dec, const Mat& w_dec,
           const ClampArgs& clamp, ptr_t y, ptr_t z, ptr_t scratch, ptr_t feature_report, ptr_t stream) {
          steer_threshold(x, w_enc, as<const void>(b_enc), as<const void>(threshold), as<const void>(b_dec), w_dec,
                          clamp, as<void>(y), as<void>(z), as<void>(scratch), report_of(feature_report),
                          stream_of(stream));
        },
        py::kw_only(), py::arg("x"), py::arg("w_enc"), py::arg("b_enc"), py::arg("threshold"), py::arg("b_dec"),
        py::arg("w_dec"), py::arg("clamp"), py::arg("y"), py::arg("z"), py::arg("scratch"),
        py::arg("feature_report"), py::arg("stream"), rel());
  m.def("steer_codes",
        [](const Mat& x, const Mat& values, const Mat& indices, const Mat& w_dec, ptr_t b_dec, bool keep_error,
           const ClampArgs& clamp, ptr_t y, ptr_t z, ptr_t scratch, ptr_t report, ptr_t feature_report,
           ptr_t stream) {
          steer_codes(x, values, indices, w_dec, as<const void>(b_dec), keep_error, clamp, as<void>(y), as<void>(z),
                      as<void>(scratch), report_of(report), report_of(feature_report), stream_of(stream));
        },
        py::kw_only(), py::arg("x"), py::arg("values"), py::arg("indices"), py::arg("w_dec"), py::arg("b_dec"),
        py::arg("keep_error"), py::arg("clamp"), py::arg("y"), py::arg("z"), py::arg("scratch"), py::arg("report"),
        py::arg("feature_report"), py::arg("stream"), rel());
}
