// The obviously-correct reference kernels the tests compare the fast ones against (cuda/reference.cu).
// Built only for the tests: into sae_native._cuda_test (CMake option SAE_NATIVE_CUDA_TEST_KERNELS)
// and into the CPU emulator's module; never into the production sae_native._cuda.
#pragma once

#include "launch.h"

namespace sae_cuda {

void ref_preact(int w_dtype, index_t n, index_t d_in, index_t d_sae, const void* u, const void* w,
                const float* b_enc, float* pre, void* stream);
void ref_select_topk(index_t n, index_t d_sae, index_t k, const float* pre, float* values, int64_t* indices,
                     void* stream);
void ref_select_threshold(index_t n, index_t d_sae, const float* pre, const float* threshold, index_t width,
                          float* values, int64_t* indices, int64_t* counts, void* stream);
void ref_decode(int t_dtype, int w_dtype, index_t n, index_t k, const void* values, const int64_t* indices,
                const void* w, index_t d_sae, index_t d_in, index_t row_stride, index_t col_stride,
                const void* b_dec, void* out, void* stream);

}  // namespace sae_cuda
