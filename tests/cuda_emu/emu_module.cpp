// The emulator's test controls, added to the emulated sae_native._cuda module (build.py inserts
// the call into the module's init).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "emu_runtime.h"

std::vector<int64_t> emu_selftest(const std::string& name, size_t smem_bytes, bool set_limit);  // selftest.cu
void bind_test_kernels(pybind11::module_& m);  // cuda/test_bindings.cpp: the reference kernels join too

void emu_register(pybind11::module_& m) {
  m.attr("EMULATED") = true;
  bind_test_kernels(m);
  m.def("set_schedule_seed", &emu::set_schedule_seed,
        "Order in which the threads of a block resume after each sync point: 0 = thread order, "
        "else a permutation drawn from this seed.");
  m.def("set_warp_greedy", &emu::set_warp_greedy,
        "Run one warp at a time up to each block barrier instead of all warps in step.");
  m.def("set_copies_at_issue", &emu::set_copies_at_issue,
        "cp.async data lands at issue as well as at the wait (exposes refills of a stage still in use).");
  m.def("set_smem_ceiling", &emu::set_smem_ceiling, "The device's dynamic shared memory per block, in bytes.");
  m.def("set_device", &emu::set_device, pybind11::arg("sm_count"), pybind11::arg("smem_per_sm"),
        "The device's multiprocessors and shared memory per multiprocessor (bytes).");
  m.def("launches", &emu::launches, "Kernel launches that passed the configuration checks so far.");
  m.def("reset_kernel_attributes", &emu::reset_kernel_attributes,
        "Forgets every cudaFuncSetAttribute (each kernel back to 48 KiB of dynamic shared memory).");
  m.def("selftest", &emu_selftest, pybind11::arg("name"), pybind11::arg("smem_bytes") = 0,
        pybind11::arg("set_limit") = false, "Runs one of the emulator's self-test kernels (selftest.cu).");
}
