// The host-side entry points of the CUDA kernels, called by cuda/bindings.cpp. Plain C++ types
// only: raw device pointers, sizes, dtype codes and the caller's stream (cudaStream_t as void*).
// Python (backends/cuda.py) has validated shapes, dtypes, devices and contiguity; every launcher
// throws std::runtime_error if the launch fails. Nothing here synchronises or allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace sae_cuda {

using index_t = int64_t;

// Element type codes shared with Python (python/sae_native/backends/_dtypes.py).
enum class DType : int { f32 = 0, f64 = 1, bf16 = 2, f16 = 3 };

// ---- the device (cuda/device.cu) --------------------------------------------------------------
struct RuntimeInfo {
  int driver_version = 0;   // e.g. 13000 for CUDA 13.0 (0: no driver)
  int runtime_version = 0;  // of the runtime linked into the module
  int device_count = 0;
  std::string error;        // why no device is usable ("" when device_count > 0)
};
RuntimeInfo runtime_info();

struct DeviceLimits {       // of the current device
  int sm_count = 0, smem_optin = 0, smem_per_sm = 0, major = 0, minor = 0;
};
DeviceLimits device_limits();

// Makes the driver load every kernel of the module now. With lazy module loading (the default
// since CUDA 12.2) a kernel is loaded at its first launch, and that launch may be inside a CUDA
// graph capture, where loading is not allowed.
void load_kernels();
void load_encode_kernels();
void load_sort_kernels();
void load_sparse_row_kernels();
void load_steer_kernels();

// ---- fused encode (cuda/encode.cu) ----------------------------------------------------------
struct EncodeLaunch {
  int w_dtype;                 // of u and W_enc: bf16 / f16 (tensor cores) or f32 (FMA)
  index_t n, d_in, d_sae;
  const void* u;               // [n, d_in] row-major: x - b_dec, already in w_dtype
  const void* w;               // W_enc [d_in, d_sae] row-major
  const float* b_enc;          // [d_sae]
  index_t chunk_latents;       // latents per CTA column (a multiple of kTileN)
  int chunks;                  // CTA columns: ceil(d_sae / chunk_latents)
  bool vec;                    // 16-byte loads allowed (see GemmArgs)
  void* stream;
};

constexpr int kTileM = 64, kTileN = 128;   // rows and latents per CTA tile (gemm_tiles.cuh)
constexpr int kCaps[] = {64, 128, 256};    // per-row candidate buffer sizes; needs cap >= k + 32

// Shared memory of one fused TopK CTA with this weight dtype and candidate buffer (for the tests).
size_t topk_smem_bytes(int w_dtype, int cap);
// CTAs of the fused encode that fit on one multiprocessor of the current device at once (registers,
// threads and shared memory, by cudaOccupancyMaxActiveBlocksPerMultiprocessor); 0 when one CTA
// needs more shared memory than the device lets a block opt in to.
int topk_blocks_per_sm(int w_dtype, int cap);
int threshold_blocks_per_sm(int w_dtype);

// Per row and chunk, the chunk's k best candidate keys, sorted: cand[n][chunks][k].
void encode_topk(const EncodeLaunch& a, int k, int cap, uint64_t* cand);
// Appends every active latent's key to hits[row][0, cap) and counts all of them (counts[n], zeroed
// by the caller; a count above cap means the row's hits past cap were dropped: rerun wider).
// nonfinite (null: keep every active latent, the dense formula) is [n], filled with ~0 by the
// caller: a row with a non-finite active latent then keeps only its lowest such latent (hits[row][0],
// count 1), as the CPU's compact_nonfinite (csrc/encode.h).
void encode_threshold(const EncodeLaunch& a, const float* threshold, index_t cap, int64_t* counts, uint64_t* hits,
                      uint64_t* nonfinite);

// ---- sorted codes from candidate keys (cuda/sort_rows.cu) -------------------------------------
constexpr int kSortMax = 8192;  // keys per row one block sorts in shared memory
// Row r sorts keys[r * row_stride + (0 .. min(m, counts[r]))) (counts may be null) padded to
// `size` (a power of two <= kSortMax, >= width) and writes the first `width` as values (relu'd
// when `relu`) and int64 latents; empty slots become value 0, index -1.
void sort_rows(index_t n, const uint64_t* keys, index_t row_stride, index_t m, const int64_t* counts, int size,
               index_t width, bool relu, float* values, int64_t* indices, void* stream);

// ---- gathers and scatters over code rows (cuda/sparse_rows.cu) ---------------------------------
// report: 2 device uint64 (count, example) of indices outside [-1, rows), skipped; may be null.
// t_dtype: f32 or f64 (values, outputs); w_dtype: f32 / bf16 / f16 with f32, f64 with f64.
void decode(int t_dtype, int w_dtype, index_t n, index_t k, const void* values, const int64_t* indices,
            const void* w, index_t d_sae, index_t d_in, index_t row_stride, index_t col_stride, const void* b_dec,
            void* out, unsigned long long* report, void* stream);
void sparse_dot(int t_dtype, int w_dtype, index_t n, index_t k, const void* g, const int64_t* indices,
                const void* w, index_t rows, index_t d, index_t row_stride, index_t col_stride, void* out,
                unsigned long long* report, void* stream);
void sparse_outer(int t_dtype, index_t n, index_t k, const void* values, const int64_t* indices, const void* g,
                  index_t d, void* out, index_t rows, index_t row_stride, index_t col_stride,
                  unsigned long long* report, void* stream);

// ---- steering (cuda/steer.cu); t_dtype f32 or f64, every tensor in it -------------------------
// gather_clamp widens the clamped features' W_enc columns (w_enc may be null: steer_codes), b_enc
// and threshold entries (either may be null) and W_dec rows into enc_cols / dec_rows [count, d],
// b_f / thr_f [count]. A feature outside [0, d_sae) is gathered as zeros and reported; the steer
// kernels give it z = 0 and add nothing for it.
void gather_clamp(int t_dtype, int w_dtype, index_t d, index_t d_sae, index_t count, const int64_t* features,
                  const void* w_enc, index_t enc_rs, index_t enc_cs, const void* b_enc, const void* threshold,
                  const void* w_dec, index_t dec_rs, index_t dec_cs, void* enc_cols, void* b_f, void* thr_f,
                  void* dec_rows, unsigned long long* report, void* stream);
void steer_codes(int t_dtype, index_t n, index_t d, index_t k, const void* base, const void* values,
                 const int64_t* indices, index_t d_sae, index_t count, const int64_t* features, const void* targets,
                 const void* dec_rows, int mode, bool only_active, void* y, void* z, unsigned long long* report,
                 void* stream);
void steer_threshold(int t_dtype, index_t n, index_t d, const void* x, const void* b_dec, index_t count,
                     const int64_t* features, index_t d_sae, const void* enc_cols, const void* b_enc_f, const void* threshold_f, const void* dec_rows,
                     const void* targets, int mode, bool only_active, void* y, void* z, void* stream);

// ---- the obviously-correct reference kernels the tests compare against (cuda/reference.cu) ----
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
