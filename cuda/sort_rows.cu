// Sorted codes from candidate keys: one block per row sorts the row's keys in shared memory
// (bitonic, descending = value descending, then latent ascending) and writes the first `width`
// (for TopK, relu'd, and re-sorted so that the zeros among them go in latent order).
// Merges the per-chunk top k of the fused TopK encode, and orders the threshold encode's hits.
#include "bitonic.cuh"
#include "launch_util.cuh"

namespace sae_cuda {
namespace {

constexpr int kSortThreads = 256;

__global__ void __launch_bounds__(kSortThreads) sort_rows_kernel(const uint64_t* __restrict__ keys, index_t row_stride, index_t m,
                                 const int64_t* __restrict__ counts, int size, index_t width, bool relu,
                                 float* __restrict__ values, int64_t* __restrict__ indices) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint64_t* s = reinterpret_cast<uint64_t*>(smem);
  const index_t row = blockIdx.x;
  index_t valid = m;
  if (counts != nullptr && counts[row] < valid) valid = counts[row];
  if (valid < 0) valid = 0;
  const uint64_t* src = keys + row * row_stride;
  for (int i = threadIdx.x; i < size; i += blockDim.x) s[i] = i < valid ? src[i] : 0;
  // Only this row's keys need sorting: the zeros after them are already in place. (valid is the
  // same for the whole block, so every thread takes the same barriers.)
  block_sort_desc(s, next_pow2(int(valid)));
  if (relu) {
    // TopK: the k selected by pre-activation are listed by relu(pre), so the selected latents whose
    // pre is <= 0 all tie at value 0 and go in latent order. Re-key them, drop the rest, re-sort.
    for (int i = threadIdx.x; i < size; i += blockDim.x) {
      const uint64_t key = s[i];
      if (i >= width) {
        s[i] = 0;
      } else if (key != 0) {
        const float v = candidate_value(key);
        if (v <= 0.0f) s[i] = candidate_key(0.0f, uint32_t(candidate_latent(key)));
      }
    }
    block_sort_desc(s, next_pow2(int(width)));  // only the first width keys are left
  }
  for (index_t i = threadIdx.x; i < width; i += blockDim.x) {
    const uint64_t key = s[i];
    const index_t o = row * width + i;
    if (key == 0) {
      values[o] = 0.0f;
      indices[o] = -1;
    } else {
      const float v = candidate_value(key);
      values[o] = relu ? relu_keep_nan(v) : v;
      indices[o] = candidate_latent(key);
    }
  }
}

}  // namespace

void load_sort_kernels() { load_kernel(sort_rows_kernel, "sort_rows"); }

void sort_rows(index_t n, const uint64_t* keys, index_t row_stride, index_t m, const int64_t* counts, int size,
               index_t width, bool relu, float* values, int64_t* indices, void* stream) {
  if (size < 1 || size > kSortMax || (size & (size - 1)) != 0 || width > size || m > size || m > row_stride ||
      width < 0 || n < 0)
    throw std::invalid_argument("sae_native._cuda.sort_rows: need size a power of two <= kSortMax, m, width <= size");
  if (n == 0 || width == 0) return;
  const size_t smem = size_t(size) * sizeof(uint64_t);
  allow_smem(sort_rows_kernel, smem, "sort_rows");
  sort_rows_kernel<<<blocks_for(n, 1, 0x7FFFFFFF), kSortThreads, smem, as_stream(stream)>>>(keys, row_stride, m, counts, size,
                                                                                  width, relu, values, indices);
  check_launch("sort_rows");
}

}  // namespace sae_cuda
