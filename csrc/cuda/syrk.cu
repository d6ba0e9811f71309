// Second-moment accumulation on the lower triangle of tiles: acc += Xᵀ X over the valid rows of X.
//
// One thread block per 64 × 64 tile (bi, bj) with bj <= bi; the grid enumerates the lower triangle
// only, so half the product is never computed. bf16/fp16 inputs use tensor cores through WMMA
// (sm_80 and newer) with float32 accumulation; float32/float64 inputs, and older GPUs, use a tiled
// SIMT kernel. Each block owns its tile, so the final read-modify-write of acc needs no atomics.
#include <cmath>
#include <type_traits>

#include <mma.h>

#include "common.cuh"
#include "launchers.h"

namespace fastedit {
namespace cuda {
namespace {

using detail::Convert;
using detail::to_compute;

constexpr int kTile = 64;     // output tile edge
constexpr int kChunk = 32;    // rows of X staged per step (WMMA kernel)
constexpr int kPad = 8;       // shared-memory row padding, in 16-bit elements (keeps ldm % 8 == 0)
constexpr int kSimtChunk = 16;

// Block index p -> (bi, bj) in row-major order over the lower triangle: p = bi (bi + 1) / 2 + bj.
__device__ __forceinline__ void lower_tile(int64_t p, int64_t& bi, int64_t& bj) {
  int64_t i = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(p) + 1.0) - 1.0) * 0.5);
  while (i > 0 && i * (i + 1) / 2 > p) --i;
  while ((i + 1) * (i + 2) / 2 <= p) ++i;
  bi = i;
  bj = p - i * (i + 1) / 2;
}

__device__ __forceinline__ bool row_ok(int64_t row, int64_t n, const uint8_t* valid) {
  return row < n && (valid == nullptr || valid[row] != 0);
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel for 16-bit inputs: 4 warps, each computing a 32 × 32 quarter of the tile
// as 2 × 2 WMMA fragments of 16 × 16.
template <typename In, typename Acc>
__global__ void __launch_bounds__(128)
    syrk_wmma_kernel(const In* __restrict__ x, int64_t n, int64_t d, int64_t ldx,
                     const uint8_t* __restrict__ valid, Acc* __restrict__ acc, int64_t ldacc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  constexpr int kLd = kTile + kPad;
  constexpr int kCLd = kTile + 4;
  __shared__ __align__(32) In a_s[kChunk][kLd];
  __shared__ __align__(32) In b_s[kChunk][kLd];
  __shared__ __align__(32) float c_s[kTile][kCLd];

  int64_t bi, bj;
  lower_tile(blockIdx.x, bi, bj);
  const int64_t i0 = bi * kTile;
  const int64_t j0 = bj * kTile;
  const bool diagonal = bi == bj;
  const int warp = threadIdx.x / 32;
  const int wm = warp / 2;
  const int wn = warp % 2;
  const In zero = Convert<In>::zero();

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int u = 0; u < 2; ++u) wmma::fill_fragment(c[t][u], 0.0f);

  for (int64_t r0 = 0; r0 < n; r0 += kChunk) {
    for (int e = threadIdx.x; e < kChunk * kTile; e += blockDim.x) {
      const int rr = e / kTile;
      const int cc = e % kTile;
      const int64_t row = r0 + rr;
      const bool ok = row_ok(row, n, valid);
      const int64_t ci = i0 + cc;
      a_s[rr][cc] = (ok && ci < d) ? x[row * ldx + ci] : zero;
      if (!diagonal) {
        const int64_t cj = j0 + cc;
        b_s[rr][cc] = (ok && cj < d) ? x[row * ldx + cj] : zero;
      }
    }
    __syncthreads();
    const In* b_base = diagonal ? &a_s[0][0] : &b_s[0][0];
#pragma unroll
    for (int kk = 0; kk < kChunk; kk += 16) {
      // A = (rows of X)ᵀ: element (m, k) sits at a_s[kk + k][m], i.e. column-major with ld kLd.
      wmma::fragment<wmma::matrix_a, 16, 16, 16, In, wmma::col_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, In, wmma::row_major> b[2];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        wmma::load_matrix_sync(a[t], &a_s[kk][wm * 32 + t * 16], kLd);
        wmma::load_matrix_sync(b[t], b_base + kk * kLd + wn * 32 + t * 16, kLd);
      }
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int u = 0; u < 2; ++u) wmma::mma_sync(c[t][u], a[t], b[u], c[t][u]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int u = 0; u < 2; ++u)
      wmma::store_matrix_sync(&c_s[wm * 32 + t * 16][wn * 32 + u * 16], c[t][u], kCLd, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
    const int rr = e / kTile;
    const int cc = e % kTile;
    const int64_t gi = i0 + rr;
    const int64_t gj = j0 + cc;
    if (gi < d && gj < d) acc[gi * ldacc + gj] += static_cast<Acc>(c_s[rr][cc]);
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// SIMT kernel: 256 threads as 16 × 16, each accumulating a 4 × 4 strided sub-tile in registers.
template <typename In, typename Acc, typename Compute>
__global__ void __launch_bounds__(256)
    syrk_simt_kernel(const In* __restrict__ x, int64_t n, int64_t d, int64_t ldx,
                     const uint8_t* __restrict__ valid, Acc* __restrict__ acc, int64_t ldacc) {
  __shared__ Compute a_s[kSimtChunk][kTile];
  __shared__ Compute b_s[kSimtChunk][kTile];

  int64_t bi, bj;
  lower_tile(blockIdx.x, bi, bj);
  const int64_t i0 = bi * kTile;
  const int64_t j0 = bj * kTile;
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;

  Compute sum[4][4];
#pragma unroll
  for (int p = 0; p < 4; ++p)
#pragma unroll
    for (int q = 0; q < 4; ++q) sum[p][q] = Compute(0);

  for (int64_t r0 = 0; r0 < n; r0 += kSimtChunk) {
    for (int e = threadIdx.x; e < kSimtChunk * kTile; e += blockDim.x) {
      const int rr = e / kTile;
      const int cc = e % kTile;
      const int64_t row = r0 + rr;
      const bool ok = row_ok(row, n, valid);
      const int64_t ci = i0 + cc;
      const int64_t cj = j0 + cc;
      a_s[rr][cc] = (ok && ci < d) ? to_compute<Compute>(x[row * ldx + ci]) : Compute(0);
      b_s[rr][cc] = (ok && cj < d) ? to_compute<Compute>(x[row * ldx + cj]) : Compute(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kSimtChunk; ++k) {
      Compute a[4];
      Compute b[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        a[p] = a_s[k][ty + 16 * p];
        b[p] = b_s[k][tx + 16 * p];
      }
#pragma unroll
      for (int p = 0; p < 4; ++p)
#pragma unroll
        for (int q = 0; q < 4; ++q) sum[p][q] += a[p] * b[q];
    }
    __syncthreads();
  }

#pragma unroll
  for (int p = 0; p < 4; ++p) {
    const int64_t gi = i0 + ty + 16 * p;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t gj = j0 + tx + 16 * q;
      if (gi < d && gj < d) acc[gi * ldacc + gj] += static_cast<Acc>(sum[p][q]);
    }
  }
}

template <typename In, typename Acc>
cudaError_t launch_typed(const void* x, int64_t n, int64_t d, int64_t x_ld, const uint8_t* valid, void* acc,
                         int64_t acc_ld, cudaStream_t stream) {
  const int64_t nb = detail::ceil_div(d, kTile);
  const int64_t blocks = nb * (nb + 1) / 2;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
  const In* xp = static_cast<const In*>(x);
  Acc* ap = static_cast<Acc*>(acc);
  using Compute = typename std::conditional<sizeof(In) == 8, double, float>::type;
  if constexpr (sizeof(In) == 2) {
    int device = 0;
    int major = 0;
    cudaError_t err = cudaGetDevice(&device);
    if (err != cudaSuccess) return err;
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (err != cudaSuccess) return err;
    if (major >= 8) {
      syrk_wmma_kernel<In, Acc><<<static_cast<unsigned>(blocks), 128, 0, stream>>>(xp, n, d, x_ld, valid, ap, acc_ld);
      return cudaGetLastError();
    }
  }
  syrk_simt_kernel<In, Acc, Compute><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(xp, n, d, x_ld, valid, ap,
                                                                                        acc_ld);
  return cudaGetLastError();
}

template <typename In>
cudaError_t launch_acc(DType acc_dtype, const void* x, int64_t n, int64_t d, int64_t x_ld, const uint8_t* valid,
                       void* acc, int64_t acc_ld, cudaStream_t stream) {
  switch (acc_dtype) {
    case DType::kFloat32:
      return launch_typed<In, float>(x, n, d, x_ld, valid, acc, acc_ld, stream);
    case DType::kFloat64:
      return launch_typed<In, double>(x, n, d, x_ld, valid, acc, acc_ld, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t syrk_accumulate(const void* x, DType x_dtype, int64_t n, int64_t d, int64_t x_ld, const uint8_t* valid,
                            void* acc, DType acc_dtype, int64_t acc_ld, cudaStream_t stream) {
  if (n <= 0 || d <= 0) return cudaSuccess;
  switch (x_dtype) {
    case DType::kFloat16:
      return launch_acc<__half>(acc_dtype, x, n, d, x_ld, valid, acc, acc_ld, stream);
    case DType::kBFloat16:
      return launch_acc<__nv_bfloat16>(acc_dtype, x, n, d, x_ld, valid, acc, acc_ld, stream);
    case DType::kFloat32:
      return launch_acc<float>(acc_dtype, x, n, d, x_ld, valid, acc, acc_ld, stream);
    case DType::kFloat64:
      return launch_acc<double>(acc_dtype, x, n, d, x_ld, valid, acc, acc_ld, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastedit
