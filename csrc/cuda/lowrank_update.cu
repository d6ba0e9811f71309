// Fused low-rank update W += P Qᵀ in place, with optional Kahan compensation (see
// kernels/lowrank_update.py for the arithmetic; this is the same, element by element).
//
// One block per 32 × 128 tile of W; rank chunks of P and Q are staged in shared memory and each
// thread accumulates 8 rows × 2 columns of ΔW in registers, so no m × n temporary exists.
#include "common.cuh"
#include "launchers.h"

namespace fastedit {
namespace cuda {
namespace {

using detail::from_compute;
using detail::to_compute;

constexpr int kTm = 32;
constexpr int kTn = 128;
constexpr int kRc = 16;
constexpr int kThreads = 256;
constexpr int kRowsPerThread = kTm / (kThreads / (kTn / 2));  // 8
constexpr int kColsPerThread = 2;

template <typename TW, typename TC, typename Acc, bool HAS_COMP>
__global__ void __launch_bounds__(kThreads)
    lowrank_update_kernel(TW* __restrict__ W, int64_t m, int64_t n, int64_t ldw, const Acc* __restrict__ P,
                          const Acc* __restrict__ Q, int64_t r, TC* __restrict__ C, int64_t ldc) {
  __shared__ Acc p_s[kTm][kRc];
  __shared__ Acc q_s[kRc][kTn];
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTm;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kTn;
  const int col = threadIdx.x % (kTn / 2);   // this thread's columns: col, col + kTn / 2
  const int group = threadIdx.x / (kTn / 2); // this thread's rows: group * 8 .. group * 8 + 7

  Acc delta[kRowsPerThread][kColsPerThread];
#pragma unroll
  for (int a = 0; a < kRowsPerThread; ++a)
#pragma unroll
    for (int b = 0; b < kColsPerThread; ++b) delta[a][b] = Acc(0);

  for (int64_t r0 = 0; r0 < r; r0 += kRc) {
    for (int e = threadIdx.x; e < kTm * kRc; e += kThreads) {
      const int tm = e / kRc;
      const int rc = e % kRc;
      const int64_t i = i0 + tm;
      p_s[tm][rc] = (i < m && r0 + rc < r) ? P[i * r + r0 + rc] : Acc(0);
    }
    for (int e = threadIdx.x; e < kRc * kTn; e += kThreads) {
      const int tn = e % kTn;
      const int rc = e / kTn;
      const int64_t j = j0 + tn;
      q_s[rc][tn] = (j < n && r0 + rc < r) ? Q[j * r + r0 + rc] : Acc(0);
    }
    __syncthreads();
#pragma unroll
    for (int rc = 0; rc < kRc; ++rc) {
      const Acc q0 = q_s[rc][col];
      const Acc q1 = q_s[rc][col + kTn / 2];
#pragma unroll
      for (int a = 0; a < kRowsPerThread; ++a) {
        const Acc p = p_s[group * kRowsPerThread + a][rc];
        delta[a][0] += p * q0;
        delta[a][1] += p * q1;
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int a = 0; a < kRowsPerThread; ++a) {
    const int64_t i = i0 + group * kRowsPerThread + a;
    if (i >= m) continue;
#pragma unroll
    for (int b = 0; b < kColsPerThread; ++b) {
      const int64_t j = j0 + col + b * (kTn / 2);
      if (j >= n) continue;
      TW* wp = W + i * ldw + j;
      const Acc w = to_compute<Acc>(*wp);
      if constexpr (HAS_COMP) {
        TC* cp = C + i * ldc + j;
        const Acc y = delta[a][b] + to_compute<Acc>(*cp);
        const TW s = from_compute<TW>(w + y);
        // s - w is exact (both are close numbers of W's precision); what the rounding lost stays in C
        *cp = from_compute<TC>(y - (to_compute<Acc>(s) - w));
        *wp = s;
      } else {
        *wp = from_compute<TW>(w + delta[a][b]);
      }
    }
  }
}

template <typename TW, typename TC, typename Acc, bool HAS_COMP>
cudaError_t launch_typed(void* W, int64_t m, int64_t n, int64_t ldw, const void* P, const void* Q, int64_t r,
                         void* C, int64_t ldc, cudaStream_t stream) {
  const int64_t grid_x = detail::ceil_div(n, kTn);
  const int64_t grid_y = detail::ceil_div(m, kTm);
  if (grid_x > 0x7fffffffLL || grid_y > 65535) return cudaErrorInvalidValue;
  dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  lowrank_update_kernel<TW, TC, Acc, HAS_COMP><<<grid, kThreads, 0, stream>>>(
      static_cast<TW*>(W), m, n, ldw, static_cast<const Acc*>(P), static_cast<const Acc*>(Q), r,
      static_cast<TC*>(C), ldc);
  return cudaGetLastError();
}

template <typename TW, typename Acc>
cudaError_t launch_comp(void* W, int64_t m, int64_t n, int64_t ldw, const void* P, const void* Q, int64_t r,
                        void* C, DType c_dtype, DType w_dtype, int64_t ldc, cudaStream_t stream) {
  if (C == nullptr) return launch_typed<TW, TW, Acc, false>(W, m, n, ldw, P, Q, r, nullptr, ldc, stream);
  if (c_dtype == w_dtype) return launch_typed<TW, TW, Acc, true>(W, m, n, ldw, P, Q, r, C, ldc, stream);
  if (c_dtype == DType::kFloat32) return launch_typed<TW, float, Acc, true>(W, m, n, ldw, P, Q, r, C, ldc, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t lowrank_update(void* W, DType w_dtype, int64_t m, int64_t n, int64_t w_ld, const void* P, const void* Q,
                           DType pq_dtype, int64_t r, void* C, DType c_dtype, int64_t c_ld, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  const DType want_pq = w_dtype == DType::kFloat64 ? DType::kFloat64 : DType::kFloat32;
  if (pq_dtype != want_pq) return cudaErrorInvalidValue;
  switch (w_dtype) {
    case DType::kFloat16:
      return launch_comp<__half, float>(W, m, n, w_ld, P, Q, r, C, c_dtype, w_dtype, c_ld, stream);
    case DType::kBFloat16:
      return launch_comp<__nv_bfloat16, float>(W, m, n, w_ld, P, Q, r, C, c_dtype, w_dtype, c_ld, stream);
    case DType::kFloat32:
      return launch_comp<float, float>(W, m, n, w_ld, P, Q, r, C, c_dtype, w_dtype, c_ld, stream);
    case DType::kFloat64:
      return launch_comp<double, double>(W, m, n, w_ld, P, Q, r, C, c_dtype, w_dtype, c_ld, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace fastedit
