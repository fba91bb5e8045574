// The pybind11 module sae_native._C. It knows nothing of the math: it turns the raw pointers,
// sizes and dtype codes that python/sae_native/backends/cpu.py passes into typed kernel calls,
// with the GIL released. Python has already validated shapes, dtypes and contiguity.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "encode.h"
#include "interrupt.h"
#include "isa.h"
#include "pack.h"
#include "sparse_rows.h"
#include "steer.h"
#include "thread_pool.h"

namespace py = pybind11;
using namespace sae;
using ptr_t = std::uintptr_t;

namespace {

template <class T> T* as(ptr_t p) { return reinterpret_cast<T*>(p); }

// ---- Ctrl-C during a native call (interrupt.h) -------------------------------------------------
// Python runs signal handlers only on its main thread, between bytecodes. A kernel call holds that
// thread for as long as it runs, so the kernels poll: every 100 ms the calling thread takes the GIL
// for a moment and runs the handlers. A handler that raises (KeyboardInterrupt) stops the call,
// and the exception is raised from it. Other threads never poll (their calls cannot get signals),
// so they never wait for the GIL.
unsigned long g_main_thread = 0;

bool poll_python_signals() {
  if (PyThread_get_thread_ident() != g_main_thread) return false;
  py::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

void raise_if_interrupted(const CancelScope& scope) {
  if (!scope.cancelled()) return;
  py::gil_scoped_acquire gil;
  if (PyErr_Occurred() == nullptr) PyErr_SetString(PyExc_KeyboardInterrupt, "sae_native: interrupted");
  throw py::error_already_set();
}

// Runs one kernel call under a CancelScope and raises what interrupted it, if anything did.
template <class F> void cancellable(F&& f) {
  CancelScope scope;
  f();
  raise_if_interrupted(scope);
}

// Calls f(T{}, W{}) for the supported (activation, weight) dtype pairs: fp32 activations with
// fp32 / bf16 / fp16 weights, and fp64 with fp64 (the float64 path gradcheck uses); interruptible.
template <class F> void dispatch(int x_dtype, int w_dtype, F&& f) {
  const auto xd = DType(x_dtype), wd = DType(w_dtype);
  if (xd == DType::f32 && wd == DType::f32) return cancellable([&] { f(float{}, float{}); });
  if (xd == DType::f32 && wd == DType::bf16) return cancellable([&] { f(float{}, bf16{}); });
  if (xd == DType::f32 && wd == DType::f16) return cancellable([&] { f(float{}, f16{}); });
  if (xd == DType::f64 && wd == DType::f64) return cancellable([&] { f(double{}, double{}); });
  throw std::invalid_argument("sae_native._C: unsupported dtype pair (activations " +
                              std::to_string(x_dtype) + ", weights " + std::to_string(w_dtype) + ")");
}

template <class T> void dispatch_acc(int x_dtype, T&& f) {
  if (DType(x_dtype) == DType::f32) return cancellable([&] { f(float{}); });
  if (DType(x_dtype) == DType::f64) return cancellable([&] { f(double{}); });
  throw std::invalid_argument("sae_native._C: activations must be float32 or float64");
}

template <class W> Strided<W> strided(ptr_t p, index_t rows, index_t cols, index_t rs, index_t cs) {
  return Strided<W>{as<const W>(p), rows, cols, rs, cs};
}

// Threshold codes computed by encode_threshold, held until Python has allocated the padded
// output tensors (their width is the batch's largest count, known only now).
class ThresholdResult {
 public:
  explicit ThresholdResult(ThresholdCodes<float> c) : codes_(std::move(c)) {}
  explicit ThresholdResult(ThresholdCodes<double> c) : codes_(std::move(c)) {}
  index_t max_count() const {
    return std::visit([](const auto& c) { return c.max_count; }, codes_);
  }
  void write(index_t width, ptr_t values, ptr_t indices, ptr_t counts) const {
    if (width < max_count()) throw std::invalid_argument("width is smaller than max_count");
    std::visit([&](const auto& c) {
      using T = std::decay_t<decltype(c.entries[0].key)>;
      c.write(width, as<T>(values), as<index_t>(indices), as<index_t>(counts));
    }, codes_);
  }

 private:
  std::variant<ThresholdCodes<float>, ThresholdCodes<double>> codes_;
};

template <class T>
EncodeInputs<T> encode_inputs(index_t n, index_t d_in, index_t d_sae, ptr_t x, ptr_t b_enc, ptr_t b_dec,
                              ptr_t threshold) {
  EncodeInputs<T> in;
  in.n = n;
  in.d_in = d_in;
  in.d_sae = d_sae;
  in.x = as<const T>(x);
  in.b_enc = as<const T>(b_enc);
  in.b_dec = as<const T>(b_dec);
  in.threshold = as<const T>(threshold);
  return in;
}

// What the sparse kernels return to Python: (number of out-of-range latents, one of them).
using IndexReport = std::pair<index_t, index_t>;
IndexReport report(const IndexCheck& c) { return {c.count(), c.example()}; }

template <class T> Clamp<T> make_clamp(index_t count, ptr_t features, ptr_t targets, int mode, bool only_active) {
  if (mode < 0 || mode > 2) throw std::invalid_argument("clamp mode must be 0 (set), 1 (scale) or 2 (add)");
  Clamp<T> c;
  c.count = count;
  c.features = as<const index_t>(features);
  c.targets = as<const T>(targets);
  c.mode = ClampMode(mode);
  c.only_active = only_active;
  return c;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sae_native CPU kernels (raw-pointer interface; use the sae_native package instead)";
  m.attr("PANEL") = kPanel;
#ifdef SAE_NATIVE_VERSION
  m.attr("__version__") = SAE_NATIVE_VERSION;
#endif
#if defined(__clang__)
  m.attr("COMPILER") = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  m.attr("COMPILER") = std::string("gcc ") + __VERSION__;
#else
  m.attr("COMPILER") = "unknown";
#endif

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  set_interrupt_poll(&poll_python_signals);

  m.def("set_num_threads", &set_num_threads, nogil);
  m.def("num_threads", &num_threads);
  m.def("use_openmp_runtime", &use_openmp_runtime);
  m.def("using_openmp_runtime", &using_openmp_runtime);
  m.def("cpu_isa", [] { return std::string(active_kernels().isa); });
  m.def("supported_isas", &supported_isas);
  m.def("compiled_isas", &compiled_isas);
  m.def("select_isa", &select_isa);
  m.def("cpu_features", &cpu_features);
  m.def("packed_size", &packed_size);
  // FMA probe on every pool thread at once: returns the flops done (time it from Python).
  m.def("fma_probe", [](index_t iters_per_thread) {
    const int threads = num_threads();
    std::vector<double> flops(size_t(threads), 0.0), sums(size_t(threads), 0.0);
    const FmaProbeFn probe = active_kernels().fma_probe;
    parallel_for(threads, [&](index_t t) { sums[size_t(t)] = probe(iters_per_thread, &flops[size_t(t)]); });
    double total = 0, check = 0;
    for (int t = 0; t < threads; ++t) { total += flops[size_t(t)]; check += sums[size_t(t)]; }
    return std::make_pair(total, check);
  }, nogil);

  m.def("pack", [](int w_dtype, ptr_t w, index_t d_in, index_t d_sae, index_t rs, index_t cs, ptr_t out) {
    dispatch(w_dtype == int(DType::f64) ? int(DType::f64) : int(DType::f32), w_dtype, [&](auto, auto w_tag) {
      using W = decltype(w_tag);
      pack_panels<W>(strided<W>(w, d_in, d_sae, rs, cs), as<W>(out));
    });
  }, nogil);

  m.def("encode_topk", [](int x_dtype, int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t x,
                          ptr_t packed, ptr_t b_enc, ptr_t b_dec, index_t k, ptr_t values, ptr_t indices) {
    dispatch(x_dtype, w_dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      const auto in = encode_inputs<T>(n, d_in, d_sae, x, b_enc, b_dec, 0);
      encode_topk<T, W>(in, as<const W>(packed), k, as<T>(values), as<index_t>(indices));
    });
  }, nogil);

  m.def("encode_groupmax", [](int x_dtype, int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t x,
                              ptr_t packed, ptr_t b_enc, ptr_t b_dec, index_t k, ptr_t values, ptr_t indices) {
    if (k < 1 || d_sae % k != 0) throw std::invalid_argument("groupmax: d_sae must be a multiple of k >= 1");
    dispatch(x_dtype, w_dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      const auto in = encode_inputs<T>(n, d_in, d_sae, x, b_enc, b_dec, 0);
      encode_groupmax<T, W>(in, as<const W>(packed), k, as<T>(values), as<index_t>(indices));
    });
  }, nogil);

  py::class_<ThresholdResult>(m, "ThresholdResult")
      .def_property_readonly("max_count", &ThresholdResult::max_count)
      .def("write", &ThresholdResult::write, nogil);

  m.def("encode_threshold", [](int x_dtype, int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t x,
                               ptr_t packed, ptr_t b_enc, ptr_t b_dec, ptr_t threshold, bool compact_nonfinite) {
    std::unique_ptr<ThresholdResult> result;
    dispatch(x_dtype, w_dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      const auto in = encode_inputs<T>(n, d_in, d_sae, x, b_enc, b_dec, threshold);
      result = std::make_unique<ThresholdResult>(encode_threshold<T, W>(in, as<const W>(packed), compact_nonfinite));
    });
    return result;
  }, nogil);

  m.def("combine_rows", [](int x_dtype, int w_dtype, index_t n, index_t k, ptr_t values, ptr_t indices,
                           ptr_t w, index_t rows, index_t cols, index_t rs, index_t cs, ptr_t bias, ptr_t out) {
    IndexCheck check;
    dispatch(x_dtype, w_dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      combine_rows<T, W>(n, k, as<const T>(values), as<const index_t>(indices),
                         strided<W>(w, rows, cols, rs, cs), as<const T>(bias), as<T>(out), &check);
    });
    return report(check);
  }, nogil);

  m.def("dot_rows", [](int x_dtype, int w_dtype, index_t n, index_t k, ptr_t g, ptr_t indices,
                       ptr_t w, index_t rows, index_t cols, index_t rs, index_t cs, ptr_t out) {
    IndexCheck check;
    dispatch(x_dtype, w_dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      dot_rows<T, W>(n, k, as<const T>(g), as<const index_t>(indices),
                     strided<W>(w, rows, cols, rs, cs), as<T>(out), &check);
    });
    return report(check);
  }, nogil);

  m.def("scatter_rows", [](int x_dtype, index_t n, index_t k, ptr_t values, ptr_t indices, ptr_t g,
                           index_t d, ptr_t grad, index_t rows, index_t rs, index_t cs) {
    IndexCheck check;
    dispatch_acc(x_dtype, [&](auto t_tag) {
      using T = decltype(t_tag);
      scatter_rows<T>(n, k, as<const T>(values), as<const index_t>(indices), as<const T>(g), d,
                      as<T>(grad), rows, rs, cs, &check);
    });
    return report(check);
  }, nogil);

  m.def("steer_threshold", [](int x_dtype, int w_dtype, index_t n, index_t d_in, index_t d_sae, ptr_t x,
                              ptr_t w_enc, index_t enc_rs, index_t enc_cs, ptr_t b_enc, ptr_t threshold,
                              ptr_t b_dec, ptr_t w_dec, index_t dec_rs, index_t dec_cs,
                              index_t count, ptr_t features, ptr_t targets, int mode, bool only_active,
                              ptr_t y, ptr_t z) {
    IndexCheck feature_check;
    dispatch(x_dtype, w_dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      steer_threshold<T, W>(n, as<const T>(x), strided<W>(w_enc, d_in, d_sae, enc_rs, enc_cs),
                            as<const T>(b_enc), as<const T>(threshold), as<const T>(b_dec),
                            strided<W>(w_dec, d_sae, d_in, dec_rs, dec_cs),
                            make_clamp<T>(count, features, targets, mode, only_active),
                            as<T>(y), as<T>(z), &feature_check);
    });
    return report(feature_check);
  }, nogil);

  m.def("steer_codes", [](int x_dtype, int w_dtype, index_t n, index_t d_in, index_t d_sae, index_t k,
                          ptr_t x, ptr_t values, ptr_t indices, ptr_t w_dec, index_t dec_rs,
                          index_t dec_cs, ptr_t b_dec, bool keep_error, index_t count, ptr_t features,
                          ptr_t targets, int mode, bool only_active, ptr_t y, ptr_t z) {
    IndexCheck check, feature_check;
    dispatch(x_dtype, w_dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      steer_codes<T, W>(n, k, as<const T>(x), as<const T>(values), as<const index_t>(indices),
                        strided<W>(w_dec, d_sae, d_in, dec_rs, dec_cs), as<const T>(b_dec),
                        keep_error, make_clamp<T>(count, features, targets, mode, only_active),
                        as<T>(y), as<T>(z), &check, &feature_check);
    });
    return std::make_pair(report(check), report(feature_check));
  }, nogil);
}
