// The host-side entry points of the CUDA kernels, called by cuda/bindings.cpp. Tensors come as the
// shared descriptors of csrc/op_args.h (Mat, ClampArgs), the same Python builds for the CPU
// module; device pointers inside them, plus the caller's stream (cudaStream_t as void*) and any
// device scratch the caller allocated. Python (backends/cuda/ops.py) has checked shapes, dtypes,
// devices and contiguity against the op contract; index and clamp-feature values are never
// trusted (out-of-range ones are skipped and counted). Every launcher throws std::runtime_error if
// a launch fails. Nothing here synchronises or allocates.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "dtype.h"
#include "op_args.h"

namespace sae_cuda {

using index_t = int64_t;
using sae::ClampArgs;
using sae::DType;
using sae::Mat;

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
// u: [n, d_in] row-major, x - b_dec already in w's dtype: bf16 / f16 (tensor cores) or f32 (FMA).
// w: W_enc [d_in, d_sae] row-major. b_enc: float32 [d_sae].
struct EncodeGrid {
  index_t chunk_latents;       // latents per CTA column (a multiple of kTileN)
  int chunks;                  // CTA columns: ceil(d_sae / chunk_latents)
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

// Per row and chunk, the chunk's k best candidate keys, sorted: cand[n][chunks][k]. vec: 16-byte
// loads allowed (d_in and d_sae multiples of 8, both pointers 16-byte aligned, 16-bit weights).
void encode_topk(const Mat& u, const Mat& w, const float* b_enc, int k, int cap, EncodeGrid grid, bool vec,
                 uint64_t* cand, void* stream);
// Appends every active latent's key to hits[row][0, cap) and counts all of them (counts[n], zeroed
// by the caller; a count above cap means the row's hits past cap were dropped: rerun wider).
// nonfinite (null: keep every active latent, the dense formula) is [n], filled with ~0 by the
// caller: a row with a non-finite active latent then keeps only its lowest such latent (hits[row][0],
// count 1), as the CPU's compact_nonfinite (csrc/encode.h).
void encode_threshold(const Mat& u, const Mat& w, const float* b_enc, const float* threshold, index_t cap,
                      EncodeGrid grid, bool vec, int64_t* counts, uint64_t* hits, uint64_t* nonfinite, void* stream);

// ---- the cuBLAS path's epilogue (cuda/encode.cu, PreactTile) ------------------------------------
// The same as encode_topk / encode_threshold, on pre-activations a GEMM already computed: pre is
// row-major float32 [n, d_sae] without the bias (n: a block of rows; the caller offsets cand,
// counts, hits and nonfinite to the block's first row). The occupancy queries and topk_smem_bytes
// take kEpilogueDtype for these kernels.
constexpr int kEpilogueDtype = -1;
void epilogue_topk(const Mat& pre, const float* b_enc, int k, int cap, EncodeGrid grid, uint64_t* cand, void* stream);
void epilogue_threshold(const Mat& pre, const float* b_enc, const float* threshold, index_t cap, EncodeGrid grid,
                        int64_t* counts, uint64_t* hits, uint64_t* nonfinite, void* stream);

// ---- sorted codes from candidate keys (cuda/sort_rows.cu) -------------------------------------
constexpr int kSortMax = 8192;  // keys per row one block sorts in shared memory
// Row r sorts keys[r * row_stride + (0 .. min(m, counts[r]))) (counts may be null) padded to
// `size` (a power of two <= kSortMax, >= width) and writes the first `width` as values (relu'd
// when `relu`) and int64 latents; empty slots become value 0, index -1.
void sort_rows(index_t n, const uint64_t* keys, index_t row_stride, index_t m, const int64_t* counts, int size,
               index_t width, bool relu, float* values, int64_t* indices, void* stream);

// ---- gathers and scatters over code rows (cuda/sparse_rows.cu) ---------------------------------
// values / g / out: f32 or f64 (the activations' dtype T); w: f32 / bf16 / f16 with f32, f64 with
// f64, any strides. report: 2 device uint64 (count, example) of indices outside [-1, w.rows),
// which are skipped; may be null.
void decode(const Mat& values, const Mat& indices, const Mat& w, const void* bias, void* out,
            unsigned long long* report, void* stream);
void sparse_dot(const Mat& g, const Mat& indices, const Mat& w, void* out, unsigned long long* report,
                void* stream);
// out: the [rows, d] weight gradient, zeroed by the caller, any strides (atomics: not bitwise
// reproducible, like torch's index_add_ on CUDA).
void sparse_outer(const Mat& values, const Mat& indices, const Mat& g, const Mat& out, unsigned long long* report,
                  void* stream);

// ---- steering (cuda/steer.cu) -----------------------------------------------------------------
// Both first gather the clamped features' W_dec rows (and for steer_threshold their W_enc columns,
// b_enc and threshold entries) into `scratch`, widened to T: steer_scratch_elements(count, d) of
// T. A feature outside [0, d_sae) is gathered as zeros, reported in feature_report and adds
// nothing (its z is 0). y and z: [n, d] and [n, count] of T.
index_t steer_scratch_elements(index_t count, index_t d);
void steer_threshold(const Mat& x, const Mat& w_enc, const void* b_enc, const void* threshold, const void* b_dec,
                     const Mat& w_dec, const ClampArgs& clamp, void* y, void* z, void* scratch,
                     unsigned long long* feature_report, void* stream);
// Without keep_error, y = decode(codes) + b_dec first (report: its out-of-range indices).
void steer_codes(const Mat& x, const Mat& values, const Mat& indices, const Mat& w_dec, const void* b_dec,
                 bool keep_error, const ClampArgs& clamp, void* y, void* z, void* scratch, unsigned long long* report,
                 unsigned long long* feature_report, void* stream);

}  // namespace sae_cuda
