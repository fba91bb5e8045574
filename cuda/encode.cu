// Fused encode: each CTA computes BM x BN tiles of u @ W_enc (gemm_tiles.cuh) across one chunk of
// the latents and filters every tile straight out of shared memory. Nothing N x d_sae is written.
//
// TopK epilogue: one warp per row keeps the row's best candidates of the chunk in a shared buffer
// of CAP keys (keys.h: value descending, then latent ascending, as one uint64). A latent is a
// candidate only if its key beats the row's bar, the k-th best key seen so far in the chunk; the
// warp ballots the hits of 32 latents at once and appends them compacted. When the buffer would
// overflow, the warp sorts it (bitonic), keeps k and raises the bar to the k-th. At the end each
// chunk writes its sorted top k; sort_rows.cu merges the chunks into the row's top k.
//
// Threshold epilogue: active latents (relu(pre) * (pre > threshold) != 0, or NaN) are appended to
// the row's slice of a global hit buffer through one atomic per warp and 32 latents.
#include "bitonic.cuh"
#include "gemm_tiles.cuh"
#include "launch_util.cuh"

namespace sae_cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

template <int CAP> __host__ __device__ constexpr size_t topk_smem_bytes(size_t tile_bytes) {
  return tile_bytes + size_t(BM) * CAP * sizeof(uint64_t) + BM * sizeof(uint64_t) + BM * sizeof(int);
}

template <class Tile, int CAP>
__global__ void __launch_bounds__(THREADS)
encode_topk_kernel(GemmArgs g, const float* __restrict__ b_enc, int k, index_t chunk_latents, int chunks,
                   uint64_t* __restrict__ cand) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* Cs = reinterpret_cast<float*>(smem);
  uint64_t* buf = reinterpret_cast<uint64_t*>(smem + tile_smem_bytes<Tile>());  // [BM][CAP]
  uint64_t* bar = buf + BM * CAP;                                                // [BM]
  int* count = reinterpret_cast<int*>(bar + BM);                                 // [BM]

  const index_t row0 = index_t(blockIdx.x) * BM;
  const int chunk = blockIdx.y;
  const index_t lat0 = index_t(chunk) * chunk_latents;
  const index_t lat1 = min(g.d_sae, lat0 + chunk_latents);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1u;
  for (int r = threadIdx.x; r < BM; r += THREADS) {
    bar[r] = 0;  // key 0 is below every real key: the first CAP candidates all get in
    count[r] = 0;
  }

  for (index_t col0 = lat0; col0 < lat1; col0 += BN) {
    Tile::tile(g, row0, col0, smem, Cs);  // begins and ends with __syncthreads
    // Row r always belongs to warp r % WARPS, so its bar, count and buffer need no block sync.
    for (int r = warp; r < BM && row0 + r < g.n; r += WARPS) {
      uint64_t* rb = buf + r * CAP;
      uint64_t t = bar[r];
      int c = count[r];
      for (int s = 0; s < BN; s += 32) {
        const index_t j = col0 + s + lane;
        const uint64_t key = j < lat1 ? candidate_key(Cs[r * LDC + s + lane] + b_enc[j], uint32_t(j)) : 0;
        bool hit = key > t;
        unsigned mask = __ballot_sync(kFull, hit);
        if (mask == 0) continue;
        if (c + __popc(mask) > CAP) {
          // c > CAP - 32 >= k here, so the buffer holds at least k keys: keep the k best.
          for (int i = c + lane; i < CAP; i += 32) rb[i] = 0;
          warp_sort_desc<CAP>(rb, lane);
          t = rb[k - 1];
          c = k;
          hit = key > t;
          mask = __ballot_sync(kFull, hit);
        }
        if (hit) rb[c + __popc(mask & below)] = key;
        c += __popc(mask);
      }
      if (lane == 0) {
        bar[r] = t;
        count[r] = c;
      }
      __syncwarp();
    }
  }
  __syncthreads();

  for (int r = warp; r < BM && row0 + r < g.n; r += WARPS) {
    uint64_t* rb = buf + r * CAP;
    for (int i = count[r] + lane; i < CAP; i += 32) rb[i] = 0;
    warp_sort_desc<CAP>(rb, lane);
    uint64_t* out = cand + ((row0 + r) * chunks + chunk) * index_t(k);
    for (int i = lane; i < k; i += 32) out[i] = rb[i];  // key 0 where the chunk had under k latents
  }
}

template <class Tile>
__global__ void __launch_bounds__(THREADS)
encode_threshold_kernel(GemmArgs g, const float* __restrict__ b_enc, const float* __restrict__ threshold,
                        index_t chunk_latents, index_t cap, unsigned long long* __restrict__ counts,
                        uint64_t* __restrict__ hits, unsigned long long* __restrict__ nonfinite) {
  extern __shared__ __align__(128) unsigned char smem[];
  float* Cs = reinterpret_cast<float*>(smem);
  const index_t row0 = index_t(blockIdx.x) * BM;
  const index_t lat0 = index_t(blockIdx.y) * chunk_latents;
  const index_t lat1 = min(g.d_sae, lat0 + chunk_latents);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const unsigned below = (1u << lane) - 1u;

  for (index_t col0 = lat0; col0 < lat1; col0 += BN) {
    Tile::tile(g, row0, col0, smem, Cs);
    for (int r = warp; r < BM && row0 + r < g.n; r += WARPS) {
      const index_t row = row0 + r;
      for (int s = 0; s < BN; s += 32) {
        const index_t j = col0 + s + lane;
        bool active = false;
        uint64_t key = 0;
        if (j < lat1) {
          const float pre = Cs[r * LDC + s + lane] + b_enc[j];
          const float t = threshold != nullptr ? threshold[j] : 0.0f;
          // relu(pre) * (pre > t) is non-zero, or NaN (the same rule as the CPU kernels)
          active = pre != pre || (pre > 0.0f && pre > t);
          key = candidate_key(pre, uint32_t(j));
          if (active && nonfinite != nullptr && (float_bits(pre) & 0x7F800000u) == 0x7F800000u) {  // NaN / inf
            // Compact rule: the row's lowest non-finite latent, kept aside (latent high, so the
            // minimum is the lowest), instead of one hit per latent of a NaN row.
            atomicMin(&nonfinite[row], (static_cast<unsigned long long>(j) << 32) | float_bits(pre));
            active = false;
          }
        }
        const unsigned mask = __ballot_sync(kFull, active);
        if (mask == 0) continue;
        unsigned long long base = 0;
        if (lane == 0) base = atomicAdd(&counts[row], static_cast<unsigned long long>(__popc(mask)));
        base = __shfl_sync(kFull, base, 0);
        if (active) {
          const unsigned long long slot = base + __popc(mask & below);
          if (slot < static_cast<unsigned long long>(cap)) hits[row * cap + index_t(slot)] = key;
        }
      }
    }
  }
}

// One fused encode launch, as the kernels see it.
struct EncodeLaunch {
  int w_dtype;
  index_t n, d_in, d_sae;
  const void* u;
  const void* w;
  const float* b_enc;
  index_t chunk_latents;
  int chunks;
  bool vec;
  void* stream;
};

EncodeLaunch launch_of(const Mat& u, const Mat& w, const float* b_enc, EncodeGrid grid, bool vec, void* stream,
                       const char* op) {
  if (u.dtype != w.dtype || u.cols != w.rows || u.col_stride != 1 || u.row_stride != u.cols || w.col_stride != 1 ||
      w.row_stride != w.cols)
    throw std::invalid_argument(std::string("sae_native._cuda.") + op +
                                ": u and w must be row-major, of the same dtype, with u.cols == w.rows");
  return EncodeLaunch{w.dtype, u.rows, u.cols, w.cols, reinterpret_cast<const void*>(u.data),
                      reinterpret_cast<const void*>(w.data), b_enc, grid.chunk_latents, grid.chunks, vec, stream};
}

GemmArgs gemm_args(const EncodeLaunch& a) { return GemmArgs{a.u, a.w, a.n, a.d_in, a.d_sae, a.vec}; }

dim3 encode_grid(const EncodeLaunch& a) { return dim3(blocks_for(a.n, BM, 0x7FFFFFFF), unsigned(a.chunks)); }

template <class Tile, int CAP> void launch_topk(const EncodeLaunch& a, int k, uint64_t* cand) {
  const size_t smem = topk_smem_bytes<CAP>(tile_smem_bytes<Tile>());
  auto kernel = encode_topk_kernel<Tile, CAP>;
  allow_smem(kernel, smem, "encode_topk");
  kernel<<<encode_grid(a), THREADS, smem, as_stream(a.stream)>>>(gemm_args(a), a.b_enc, k, a.chunk_latents,
                                                                  a.chunks, cand);
  check_launch("encode_topk");
}

template <class Tile> void launch_topk_cap(const EncodeLaunch& a, int k, int cap, uint64_t* cand) {
  switch (cap) {
    case 64: return launch_topk<Tile, 64>(a, k, cand);
    case 128: return launch_topk<Tile, 128>(a, k, cand);
    case 256: return launch_topk<Tile, 256>(a, k, cand);
  }
  throw std::invalid_argument("sae_native._cuda.encode_topk: cap must be 64, 128 or 256");
}

// Rows with a non-finite active latent become that one entry: hits[row][0] and count 1.
__global__ void collapse_nonfinite_kernel(index_t n, const unsigned long long* __restrict__ nonfinite, index_t cap,
                                          unsigned long long* __restrict__ counts, uint64_t* __restrict__ hits) {
  const index_t row = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= n || nonfinite[row] == ~0ull) return;
  const unsigned long long v = nonfinite[row];
  hits[row * cap] = candidate_key(float_of_bits(uint32_t(v & 0xFFFFFFFFull)), uint32_t(v >> 32));
  counts[row] = 1;
}

template <class Tile>
void launch_threshold(const EncodeLaunch& a, const float* threshold, index_t cap, int64_t* counts, uint64_t* hits,
                      uint64_t* nonfinite) {
  const size_t smem = tile_smem_bytes<Tile>();
  auto kernel = encode_threshold_kernel<Tile>;
  allow_smem(kernel, smem, "encode_threshold");
  auto* nf = reinterpret_cast<unsigned long long*>(nonfinite);
  kernel<<<encode_grid(a), THREADS, smem, as_stream(a.stream)>>>(
      gemm_args(a), a.b_enc, threshold, a.chunk_latents, cap, reinterpret_cast<unsigned long long*>(counts), hits, nf);
  check_launch("encode_threshold");
  if (nf != nullptr) {
    collapse_nonfinite_kernel<<<blocks_for(a.n, 256), 256, 0, as_stream(a.stream)>>>(
        a.n, nf, cap, reinterpret_cast<unsigned long long*>(counts), hits);
    check_launch("encode_threshold (collapse_nonfinite)");
  }
}

template <class Tile> size_t topk_smem_for_cap(int cap) {
  switch (cap) {
    case 64: return topk_smem_bytes<64>(tile_smem_bytes<Tile>());
    case 128: return topk_smem_bytes<128>(tile_smem_bytes<Tile>());
    case 256: return topk_smem_bytes<256>(tile_smem_bytes<Tile>());
  }
  throw std::invalid_argument("sae_native._cuda: cap must be 64, 128 or 256");
}

void check_encode(const EncodeLaunch& a, const char* op) {
  if (a.n < 0 || a.d_in < 0 || a.d_sae < 1 || a.d_sae > 0x7FFFFFFF || a.chunks < 1 || a.chunks > 65535 ||
      a.chunk_latents < BN || a.chunk_latents % BN != 0 || index_t(a.chunks) * a.chunk_latents < a.d_sae)
    throw std::invalid_argument(std::string("sae_native._cuda.") + op + ": bad sizes or chunking");
}

}  // namespace

namespace {

// The epilogue-only kernels (PreactTile) stand under this pseudo weight dtype in the host API.
constexpr int kPreacts = kEpilogueDtype;

template <class Tile> int topk_blocks_for_cap(int cap) {
  switch (cap) {
    case 64: return blocks_per_sm(encode_topk_kernel<Tile, 64>, THREADS, topk_smem_bytes<64>(tile_smem_bytes<Tile>()),
                                  "encode_topk occupancy");
    case 128: return blocks_per_sm(encode_topk_kernel<Tile, 128>, THREADS,
                                   topk_smem_bytes<128>(tile_smem_bytes<Tile>()), "encode_topk occupancy");
    case 256: return blocks_per_sm(encode_topk_kernel<Tile, 256>, THREADS,
                                   topk_smem_bytes<256>(tile_smem_bytes<Tile>()), "encode_topk occupancy");
  }
  throw std::invalid_argument("sae_native._cuda: cap must be 64, 128 or 256");
}

template <class Tile> void load_tile_kernels() {
  load_kernel(encode_topk_kernel<Tile, 64>, "encode_topk");
  load_kernel(encode_topk_kernel<Tile, 128>, "encode_topk");
  load_kernel(encode_topk_kernel<Tile, 256>, "encode_topk");
  load_kernel(encode_threshold_kernel<Tile>, "encode_threshold");
}

}  // namespace

int topk_blocks_per_sm(int w_dtype, int cap) {
  if (w_dtype == kPreacts) return topk_blocks_for_cap<PreactTile>(cap);
  switch (DType(w_dtype)) {
    case DType::bf16: return topk_blocks_for_cap<TensorCoreTile<__nv_bfloat16>>(cap);
    case DType::f16: return topk_blocks_for_cap<TensorCoreTile<__half>>(cap);
    case DType::f32: return topk_blocks_for_cap<SimtTile>(cap);
    default: break;
  }
  throw std::invalid_argument("sae_native._cuda.topk_blocks_per_sm: weights must be float32, bfloat16 or float16");
}

int threshold_blocks_per_sm(int w_dtype) {
  if (w_dtype == kPreacts)
    return blocks_per_sm(encode_threshold_kernel<PreactTile>, THREADS, tile_smem_bytes<PreactTile>(),
                         "encode_threshold occupancy");
  switch (DType(w_dtype)) {
    case DType::bf16:
      return blocks_per_sm(encode_threshold_kernel<TensorCoreTile<__nv_bfloat16>>, THREADS,
                           tile_smem_bytes<TensorCoreTile<__nv_bfloat16>>(), "encode_threshold occupancy");
    case DType::f16:
      return blocks_per_sm(encode_threshold_kernel<TensorCoreTile<__half>>, THREADS,
                           tile_smem_bytes<TensorCoreTile<__half>>(), "encode_threshold occupancy");
    case DType::f32:
      return blocks_per_sm(encode_threshold_kernel<SimtTile>, THREADS, tile_smem_bytes<SimtTile>(),
                           "encode_threshold occupancy");
    default: break;
  }
  throw std::invalid_argument("sae_native._cuda.threshold_blocks_per_sm: weights must be float32, bfloat16 or float16");
}

void load_encode_kernels() {
  load_tile_kernels<TensorCoreTile<__nv_bfloat16>>();
  load_tile_kernels<TensorCoreTile<__half>>();
  load_tile_kernels<SimtTile>();
  load_tile_kernels<PreactTile>();
  load_kernel(collapse_nonfinite_kernel, "collapse_nonfinite");
}

size_t topk_smem_bytes(int w_dtype, int cap) {
  if (w_dtype == kPreacts) return topk_smem_for_cap<PreactTile>(cap);
  switch (DType(w_dtype)) {
    case DType::bf16: return topk_smem_for_cap<TensorCoreTile<__nv_bfloat16>>(cap);
    case DType::f16: return topk_smem_for_cap<TensorCoreTile<__half>>(cap);
    case DType::f32: return topk_smem_for_cap<SimtTile>(cap);
    default: break;
  }
  throw std::invalid_argument("sae_native._cuda.topk_smem_bytes: weights must be float32, bfloat16 or float16");
}

void encode_topk(const Mat& u, const Mat& w, const float* b_enc, int k, int cap, EncodeGrid grid, bool vec,
                 uint64_t* cand, void* stream) {
  const EncodeLaunch a = launch_of(u, w, b_enc, grid, vec, stream, "encode_topk");
  check_encode(a, "encode_topk");
  if (k < 1 || k + 32 > cap || k > a.d_sae) throw std::invalid_argument("sae_native._cuda.encode_topk: need 1 <= k <= cap - 32");
  if (a.n == 0) return;
  switch (DType(a.w_dtype)) {
    case DType::bf16: return launch_topk_cap<TensorCoreTile<__nv_bfloat16>>(a, k, cap, cand);
    case DType::f16: return launch_topk_cap<TensorCoreTile<__half>>(a, k, cap, cand);
    case DType::f32: return launch_topk_cap<SimtTile>(a, k, cap, cand);
    default: break;
  }
  throw std::invalid_argument("sae_native._cuda.encode_topk: weights must be float32, bfloat16 or float16");
}

void encode_threshold(const Mat& u, const Mat& w, const float* b_enc, const float* threshold, index_t cap,
                      EncodeGrid grid, bool vec, int64_t* counts, uint64_t* hits, uint64_t* nonfinite, void* stream) {
  const EncodeLaunch a = launch_of(u, w, b_enc, grid, vec, stream, "encode_threshold");
  check_encode(a, "encode_threshold");
  if (cap < 1) throw std::invalid_argument("sae_native._cuda.encode_threshold: cap must be >= 1");
  if (a.n == 0) return;
  switch (DType(a.w_dtype)) {
    case DType::bf16: return launch_threshold<TensorCoreTile<__nv_bfloat16>>(a, threshold, cap, counts, hits, nonfinite);
    case DType::f16: return launch_threshold<TensorCoreTile<__half>>(a, threshold, cap, counts, hits, nonfinite);
    case DType::f32: return launch_threshold<SimtTile>(a, threshold, cap, counts, hits, nonfinite);
    default: break;
  }
  throw std::invalid_argument("sae_native._cuda.encode_threshold: weights must be float32, bfloat16 or float16");
}

namespace {

EncodeLaunch epilogue_launch(const Mat& pre, const float* b_enc, EncodeGrid grid, void* stream, const char* op) {
  if (pre.dtype != int(DType::f32) || pre.col_stride != 1 || pre.row_stride != pre.cols)
    throw std::invalid_argument(std::string("sae_native._cuda.") + op + ": pre must be row-major float32 [n, d_sae]");
  return EncodeLaunch{kPreacts, pre.rows, 0, pre.cols, reinterpret_cast<const void*>(pre.data), nullptr, b_enc,
                      grid.chunk_latents, grid.chunks, false, stream};
}

}  // namespace

void epilogue_topk(const Mat& pre, const float* b_enc, int k, int cap, EncodeGrid grid, uint64_t* cand, void* stream) {
  const EncodeLaunch a = epilogue_launch(pre, b_enc, grid, stream, "epilogue_topk");
  check_encode(a, "epilogue_topk");
  if (k < 1 || k + 32 > cap || k > a.d_sae) throw std::invalid_argument("sae_native._cuda.epilogue_topk: need 1 <= k <= cap - 32");
  if (a.n == 0) return;
  launch_topk_cap<PreactTile>(a, k, cap, cand);
}

void epilogue_threshold(const Mat& pre, const float* b_enc, const float* threshold, index_t cap, EncodeGrid grid,
                        int64_t* counts, uint64_t* hits, uint64_t* nonfinite, void* stream) {
  const EncodeLaunch a = epilogue_launch(pre, b_enc, grid, stream, "epilogue_threshold");
  check_encode(a, "epilogue_threshold");
  if (cap < 1) throw std::invalid_argument("sae_native._cuda.epilogue_threshold: cap must be >= 1");
  if (a.n == 0) return;
  launch_threshold<PreactTile>(a, threshold, cap, counts, hits, nonfinite);
}

}  // namespace sae_cuda
