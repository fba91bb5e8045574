// The pybind11 module sae_native._C. It knows nothing of the math: it turns the tensors Python
// describes (op_args.h: Mat, ClampArgs, built by python/sae_native/backends/native_args.py) into
// typed kernel calls, with the GIL released. The op names and keyword arguments are the CUDA
// module's too (cuda/bindings.cpp), less the stream and the device scratch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "bind_args.h"
#include "encode.h"
#include "epilogue.h"
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
  throw std::invalid_argument("sae_native._C: unsupported dtype pair (activations " + std::to_string(x_dtype) +
                              ", weights " + std::to_string(w_dtype) + ")");
}

template <class W> Strided<W> strided(const Mat& m) {
  return Strided<W>{as<const W>(m.data), m.rows, m.cols, m.row_stride, m.col_stride};
}

template <class T>
EncodeInputs<T> encode_inputs(const Mat& x, const Mat& w, ptr_t b_enc, ptr_t b_dec, ptr_t threshold) {
  EncodeInputs<T> in;
  in.n = x.rows;
  in.d_in = w.rows;
  in.d_sae = w.cols;
  in.x = as<const T>(x.data);
  in.b_enc = as<const T>(b_enc);
  in.b_dec = as<const T>(b_dec);
  in.threshold = as<const T>(threshold);
  return in;
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

// The GEMM path's epilogue (epilogue.h) for float32 or float64 activations. Python keeps the
// threshold tensor alive while this lives.
class Accumulator {
 public:
  Accumulator(int kind, index_t n, index_t k, index_t d_sae, int dtype, ptr_t threshold, bool compact) {
    if (kind < 0 || kind > 2) throw std::invalid_argument("EncodeAccumulator: kind must be 0 (topk), 1 (groupmax) or 2");
    if (n < 0 || d_sae < 1 || (kind != 2 && (k < 1 || k > d_sae)) || (kind == 1 && d_sae % k != 0))
      throw std::invalid_argument("EncodeAccumulator: bad sizes: need n >= 0, d_sae >= 1, 1 <= k <= d_sae (topk), k dividing d_sae (groupmax)");
    if (DType(dtype) == DType::f32)
      acc_ = std::make_unique<EncodeAccumulator<float>>(EncodeKind(kind), n, k, d_sae, as<const float>(threshold),
                                                        compact);
    else if (DType(dtype) == DType::f64)
      acc_ = std::make_unique<EncodeAccumulator<double>>(EncodeKind(kind), n, k, d_sae, as<const double>(threshold),
                                                         compact);
    else
      throw std::invalid_argument("EncodeAccumulator: dtype must be float32 or float64");
    n_ = n;
    d_sae_ = d_sae;
  }
  void add(const Mat& pre, index_t row0, index_t latent0, ptr_t b_enc) {
    if (row0 < 0 || pre.rows < 0 || row0 + pre.rows > n_ || latent0 < 0 || pre.cols < 0 ||
        latent0 + pre.cols > d_sae_ || pre.col_stride != 1 || pre.row_stride < pre.cols)
      throw std::invalid_argument("EncodeAccumulator.add: the block lies outside [n, d_sae] or is not row-major");
    cancellable([&] {
      std::visit([&](auto& a) {
        using T = typename std::decay_t<decltype(*a)>::value_type;
        if (int(dtype_of<T>()) != pre.dtype) throw std::invalid_argument("EncodeAccumulator.add: pre must have the accumulator's dtype");
        a->add(as<T>(pre.data), pre.row_stride, row0, pre.rows, latent0, pre.cols, as<const T>(b_enc));
      }, acc_);
    });
  }
  void finish(ptr_t values, ptr_t indices) {
    cancellable([&] {
      std::visit([&](auto& a) {
        using T = typename std::decay_t<decltype(*a)>::value_type;
        if (a->kind() == EncodeKind::threshold) throw std::invalid_argument("EncodeAccumulator: a threshold accumulator: use finish_threshold");
        a->finish_k(as<T>(values), as<index_t>(indices));
      }, acc_);
    });
  }
  std::unique_ptr<ThresholdResult> finish_threshold() {
    std::unique_ptr<ThresholdResult> out;
    cancellable([&] {
      std::visit([&](auto& a) {
        if (a->kind() != EncodeKind::threshold) throw std::invalid_argument("EncodeAccumulator: a topk or groupmax accumulator: use finish");
        out = std::make_unique<ThresholdResult>(a->finish_threshold());
      }, acc_);
    });
    return out;
  }

 private:
  template <class T> static DType dtype_of() { return std::is_same<T, float>::value ? DType::f32 : DType::f64; }
  std::variant<std::unique_ptr<EncodeAccumulator<float>>, std::unique_ptr<EncodeAccumulator<double>>> acc_;
  index_t n_ = 0, d_sae_ = 0;
};

std::pair<double, double> run_probe(FmaProbeFn probe, index_t iters_per_thread) {
  const int threads = num_threads();
  std::vector<double> flops(size_t(threads), 0.0), sums(size_t(threads), 0.0);
  parallel_for(threads, [&](index_t t) { sums[size_t(t)] = probe(iters_per_thread, &flops[size_t(t)]); });
  double total = 0, check = 0;
  for (int t = 0; t < threads; ++t) { total += flops[size_t(t)]; check += sums[size_t(t)]; }
  return std::make_pair(total, check);
}

// What the sparse kernels return to Python: (number of out-of-range indices, one of them).
using IndexReport = std::pair<index_t, index_t>;
IndexReport report(const IndexCheck& c) { return {c.count(), c.example()}; }

template <class T> Clamp<T> clamp_of(const ClampArgs& a) {
  if (a.mode < 0 || a.mode > 2) throw std::invalid_argument("clamp mode must be 0 (set), 1 (scale) or 2 (add)");
  Clamp<T> c;
  c.count = a.count;
  c.features = as<const index_t>(a.features);
  c.targets = as<const T>(a.targets);
  c.mode = ClampMode(a.mode);
  c.only_active = a.only_active;
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
  bind_op_args(m);

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
  set_interrupt_poll(&poll_python_signals);

  // ---- the runtime ------------------------------------------------------------------------------
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
  // Throughput probes of the active variant, on every thread: (flops, checksum).
  m.def("fma_probe", [](index_t iters_per_thread) { return run_probe(active_kernels().fma_probe, iters_per_thread); },
        nogil);
  m.def("bf16_dot_probe", [](index_t iters_per_thread) -> py::object {
    const FmaProbeFn probe = active_kernels().bf16_dot_probe;
    if (probe == nullptr) return py::none();
    std::pair<double, double> out;
    {
      py::gil_scoped_release release;
      out = run_probe(probe, iters_per_thread);
    }
    return py::cast(out);
  });
  // Whether the active variant rounds u = x - b_dec to bf16 for bf16 weights (dot-product units).
  m.def("bf16_inputs_rounded", [] { return active_kernels().bf16w.bf16_fn != nullptr; });

  // ---- the ops (python/sae_native/_ops.py declares them) -----------------------------------------
  m.def("pack_encoder", [](const Mat& w, ptr_t out) {
    dispatch(w.dtype == int(DType::f64) ? int(DType::f64) : int(DType::f32), w.dtype, [&](auto, auto w_tag) {
      using W = decltype(w_tag);
      pack_panels<W>(strided<W>(w), as<W>(out));
    });
  }, py::kw_only(), py::arg("w"), py::arg("out"), nogil);

  // w: the packed W_enc (pack_encoder), rows d_in, cols d_sae, its dtype.
  m.def("encode_topk", [](const Mat& x, const Mat& w, ptr_t b_enc, ptr_t b_dec, index_t k, ptr_t values,
                          ptr_t indices) {
    dispatch(x.dtype, w.dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      encode_topk<T, W>(encode_inputs<T>(x, w, b_enc, b_dec, 0), as<const W>(w.data), k, as<T>(values),
                        as<index_t>(indices));
    });
  }, py::kw_only(), py::arg("x"), py::arg("w"), py::arg("b_enc"), py::arg("b_dec"), py::arg("k"), py::arg("values"),
     py::arg("indices"), nogil);

  m.def("encode_groupmax", [](const Mat& x, const Mat& w, ptr_t b_enc, ptr_t b_dec, index_t k, ptr_t values,
                              ptr_t indices) {
    if (k < 1 || w.cols % k != 0) throw std::invalid_argument("groupmax: d_sae must be a multiple of k >= 1");
    dispatch(x.dtype, w.dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      encode_groupmax<T, W>(encode_inputs<T>(x, w, b_enc, b_dec, 0), as<const W>(w.data), k, as<T>(values),
                            as<index_t>(indices));
    });
  }, py::kw_only(), py::arg("x"), py::arg("w"), py::arg("b_enc"), py::arg("b_dec"), py::arg("k"), py::arg("values"),
     py::arg("indices"), nogil);

  py::class_<ThresholdResult>(m, "ThresholdResult")
      .def_property_readonly("max_count", &ThresholdResult::max_count)
      .def("write", &ThresholdResult::write, nogil);

  m.def("encode_threshold", [](const Mat& x, const Mat& w, ptr_t b_enc, ptr_t b_dec, ptr_t threshold,
                               bool compact_nonfinite) {
    std::unique_ptr<ThresholdResult> result;
    dispatch(x.dtype, w.dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      result = std::make_unique<ThresholdResult>(encode_threshold<T, W>(
          encode_inputs<T>(x, w, b_enc, b_dec, threshold), as<const W>(w.data), compact_nonfinite));
    });
    return result;
  }, py::kw_only(), py::arg("x"), py::arg("w"), py::arg("b_enc"), py::arg("b_dec"), py::arg("threshold"),
     py::arg("compact_nonfinite"), nogil);

  // The GEMM path's epilogue: kind 0 topk, 1 groupmax, 2 threshold (backends/gemm_path.py).
  py::class_<Accumulator>(m, "EncodeAccumulator")
      .def(py::init<int, index_t, index_t, index_t, int, ptr_t, bool>(), py::kw_only(), py::arg("kind"), py::arg("n"),
           py::arg("k"), py::arg("d_sae"), py::arg("dtype"), py::arg("threshold"), py::arg("compact_nonfinite"))
      .def("add", &Accumulator::add, py::kw_only(), py::arg("pre"), py::arg("row0"), py::arg("latent0"),
           py::arg("b_enc"), nogil)
      .def("finish", &Accumulator::finish, py::kw_only(), py::arg("values"), py::arg("indices"), nogil)
      .def("finish_threshold", &Accumulator::finish_threshold, nogil);

  m.def("decode", [](const Mat& values, const Mat& indices, const Mat& w, ptr_t bias, ptr_t out) {
    IndexCheck check;
    dispatch(values.dtype, w.dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      combine_rows<T, W>(values.rows, values.cols, as<const T>(values.data), as<const index_t>(indices.data),
                         strided<W>(w), as<const T>(bias), as<T>(out), &check);
    });
    return report(check);
  }, py::kw_only(), py::arg("values"), py::arg("indices"), py::arg("w"), py::arg("bias"), py::arg("out"), nogil);

  m.def("sparse_dot", [](const Mat& g, const Mat& indices, const Mat& w, ptr_t out) {
    IndexCheck check;
    dispatch(g.dtype, w.dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      dot_rows<T, W>(indices.rows, indices.cols, as<const T>(g.data), as<const index_t>(indices.data),
                     strided<W>(w), as<T>(out), &check);
    });
    return report(check);
  }, py::kw_only(), py::arg("g"), py::arg("indices"), py::arg("w"), py::arg("out"), nogil);

  // out: the [rows, d] gradient (any strides, zeroed by the caller).
  m.def("sparse_outer", [](const Mat& values, const Mat& indices, const Mat& g, const Mat& out) {
    IndexCheck check;
    dispatch(values.dtype, values.dtype, [&](auto t_tag, auto) {
      using T = decltype(t_tag);
      scatter_rows<T>(values.rows, values.cols, as<const T>(values.data), as<const index_t>(indices.data),
                      as<const T>(g.data), g.cols, as<T>(out.data), out.rows, out.row_stride, out.col_stride, &check);
    });
    return report(check);
  }, py::kw_only(), py::arg("values"), py::arg("indices"), py::arg("g"), py::arg("out"), nogil);

  // Returns the report of clamp features outside [0, d_sae) (skipped, never read).
  m.def("steer_threshold", [](const Mat& x, const Mat& w_enc, ptr_t b_enc, ptr_t threshold, ptr_t b_dec,
                              const Mat& w_dec, const ClampArgs& clamp, ptr_t y, ptr_t z) {
    IndexCheck feature_check;
    dispatch(x.dtype, w_dec.dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      steer_threshold<T, W>(x.rows, as<const T>(x.data), strided<W>(w_enc), as<const T>(b_enc),
                            as<const T>(threshold), as<const T>(b_dec), strided<W>(w_dec), clamp_of<T>(clamp),
                            as<T>(y), as<T>(z), &feature_check);
    });
    return report(feature_check);
  }, py::kw_only(), py::arg("x"), py::arg("w_enc"), py::arg("b_enc"), py::arg("threshold"), py::arg("b_dec"),
     py::arg("w_dec"), py::arg("clamp"), py::arg("y"), py::arg("z"), nogil);

  // Returns (report of the codes' out-of-range indices, report of the clamp's features).
  m.def("steer_codes", [](const Mat& x, const Mat& values, const Mat& indices, const Mat& w_dec, ptr_t b_dec,
                          bool keep_error, const ClampArgs& clamp, ptr_t y, ptr_t z) {
    IndexCheck check, feature_check;
    dispatch(x.dtype, w_dec.dtype, [&](auto t_tag, auto w_tag) {
      using T = decltype(t_tag);
      using W = decltype(w_tag);
      steer_codes<T, W>(x.rows, values.cols, as<const T>(x.data), as<const T>(values.data),
                        as<const index_t>(indices.data), strided<W>(w_dec), as<const T>(b_dec), keep_error,
                        clamp_of<T>(clamp), as<T>(y), as<T>(z), &check, &feature_check);
    });
    return std::make_pair(report(check), report(feature_check));
  }, py::kw_only(), py::arg("x"), py::arg("values"), py::arg("indices"), py::arg("w_dec"), py::arg("b_dec"),
     py::arg("keep_error"), py::arg("clamp"), py::arg("y"), py::arg("z"), nogil);
}
