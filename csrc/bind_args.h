// Binds the structs of op_args.h and the shared constants into a pybind11 module. Both native
// modules include this; the types are module-local, so each module has its own copy.
#pragma once

#include <pybind11/pybind11.h>

#include "clamp.h"
#include "dtype.h"
#include "op_args.h"

namespace sae {

inline void bind_op_args(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<Mat>(m, "Mat", py::module_local())
      .def(py::init([](std::uintptr_t data, int dtype, int64_t rows, int64_t cols, int64_t row_stride,
                       int64_t col_stride) { return Mat{data, dtype, rows, cols, row_stride, col_stride}; }),
           py::kw_only(), py::arg("data"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
           py::arg("col_stride"))
      .def_readonly("data", &Mat::data)
      .def_readonly("dtype", &Mat::dtype)
      .def_readonly("rows", &Mat::rows)
      .def_readonly("cols", &Mat::cols);
  py::class_<ClampArgs>(m, "ClampArgs", py::module_local())
      .def(py::init([](std::uintptr_t features, std::uintptr_t targets, int64_t count, int mode, bool only_active) {
             return ClampArgs{features, targets, count, mode, only_active};
           }),
           py::kw_only(), py::arg("features"), py::arg("targets"), py::arg("count"), py::arg("mode"),
           py::arg("only_active"));
  py::dict dtypes;
  dtypes["float32"] = int(DType::f32);
  dtypes["float64"] = int(DType::f64);
  dtypes["bfloat16"] = int(DType::bf16);
  dtypes["float16"] = int(DType::f16);
  m.attr("DTYPES") = dtypes;
  py::dict modes;
  modes["set"] = int(ClampMode::set);
  modes["scale"] = int(ClampMode::scale);
  modes["add"] = int(ClampMode::add);
  m.attr("CLAMP_MODES") = modes;
}

}  // namespace sae
