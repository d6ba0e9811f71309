// Rank-k Cholesky update L ← chol(L Lᵀ + K Kᵀ) in place (the algorithm and its conventions:
// kernels/chol_update.py), two kernels per panel of kPanel columns:
//
//  - panel_kernel, one block of kPanel threads, thread i owning the panel's diagonal row j0 + i in
//    shared memory: step j, thread j makes reflector j from its row, then every later row takes it
//    (one barrier per step); writes the reflectors (w, tau, sign) to the workspace;
//  - apply_kernel, one thread per row below the panel, kApplyRows rows a block: the block's panel
//    columns are staged through shared memory (coalesced loads and stores), each thread keeps its
//    row's keys in registers and takes the panel's reflectors in order.
//
// Keys are taken kKeys columns at a time (successive updates by column chunks of K, the same update).
#include <cmath>

#include "common.cuh"
#include "launchers.h"

namespace fastedit {
namespace cuda {
namespace {

constexpr int kPanel = 32;
constexpr int kApplyRows = 128;
constexpr int kKeys = 16;

// The reflector of column j from its diagonal entry and keys, computed in double: LAPACK's sign
// (alpha - beta never cancels), then the sign that makes the new diagonal positive.
template <typename T, int KC>
__device__ void make_reflector(T* diag, T* kap, int k, T* w, T* tau, T* sign) {
  const double alpha = static_cast<double>(*diag);
  double sigma = 0.0;
  for (int q = 0; q < k; ++q) sigma += static_cast<double>(kap[q]) * static_cast<double>(kap[q]);
  const double norm = sqrt(alpha * alpha + sigma);
  if (!(norm > 0.0)) {
    for (int q = 0; q < KC; ++q) w[q] = T(0);
    *tau = T(0);
    *sign = T(1);
    return;
  }
  const double beta = alpha >= 0.0 ? -norm : norm;
  const double inv_v0 = 1.0 / (alpha - beta);
  for (int q = 0; q < KC; ++q) {
    w[q] = q < k ? static_cast<T>(static_cast<double>(kap[q]) * inv_v0) : T(0);
    kap[q] = T(0);
  }
  *tau = static_cast<T>((beta - alpha) / beta);
  *sign = beta < 0.0 ? T(-1) : T(1);
  *diag = static_cast<T>(norm);
}

// L: row stride ld; K: this chunk's first column, row stride kld, k <= KC columns.
// work: w (kPanel × KC), tau (kPanel), sign (kPanel).
template <typename T, int KC>
__global__ void panel_kernel(T* __restrict__ L, int64_t ld, T* __restrict__ K, int64_t kld, int64_t d, int k,
                             int64_t j0, T* __restrict__ work) {
  __shared__ T rows_s[kPanel][kPanel + 1];
  __shared__ T keys_s[kPanel][KC + 1];
  __shared__ T w_s[kPanel][KC];
  __shared__ T tau_s[kPanel];
  __shared__ T sign_s[kPanel];
  const int i = threadIdx.x;
  const int width = static_cast<int>(d - j0 < kPanel ? d - j0 : kPanel);
  const int64_t c = j0 + i;
  for (int j = 0; j < kPanel; ++j) rows_s[i][j] = (i < width && j <= i) ? L[c * ld + j0 + j] : T(0);
  for (int q = 0; q < KC; ++q) keys_s[i][q] = (i < width && q < k) ? K[c * kld + q] : T(0);
  tau_s[i] = T(0);
  sign_s[i] = T(1);
  for (int q = 0; q < KC; ++q) w_s[i][q] = T(0);
  __syncthreads();
  for (int j = 0; j < width; ++j) {
    if (i == j) make_reflector<T, KC>(&rows_s[j][j], keys_s[j], k, w_s[j], &tau_s[j], &sign_s[j]);
    __syncthreads();
    if (i > j && i < width) {
      T s = rows_s[i][j];
      for (int q = 0; q < KC; ++q) s += w_s[j][q] * keys_s[i][q];
      s *= tau_s[j];
      rows_s[i][j] = (rows_s[i][j] - s) * sign_s[j];
      for (int q = 0; q < KC; ++q) keys_s[i][q] -= s * w_s[j][q];
    }
  }
  __syncthreads();
  if (i < width) {
    for (int j = 0; j <= i; ++j) L[c * ld + j0 + j] = rows_s[i][j];
    for (int q = 0; q < k; ++q) K[c * kld + q] = keys_s[i][q];
  }
  for (int q = 0; q < KC; ++q) work[i * KC + q] = w_s[i][q];
  work[kPanel * KC + i] = tau_s[i];
  work[kPanel * KC + kPanel + i] = sign_s[i];
}

// Rows j0 + kPanel + blockIdx.x * kApplyRows + threadIdx.x take the panel's kPanel reflectors.
template <typename T, int KC>
__global__ void __launch_bounds__(kApplyRows) apply_kernel(T* __restrict__ L, int64_t ld, T* __restrict__ K,
                                                           int64_t kld, int64_t d, int k, int64_t j0,
                                                           const T* __restrict__ work) {
  __shared__ T tile[kApplyRows][kPanel + 1];
  __shared__ T w_s[kPanel][KC];
  __shared__ T tau_s[kPanel];
  __shared__ T sign_s[kPanel];
  const int t = threadIdx.x;
  const int64_t r0 = j0 + kPanel + static_cast<int64_t>(blockIdx.x) * kApplyRows;
  for (int e = t; e < kPanel * KC; e += kApplyRows) w_s[e / KC][e % KC] = work[e];
  if (t < kPanel) {
    tau_s[t] = work[kPanel * KC + t];
    sign_s[t] = work[kPanel * KC + kPanel + t];
  }
  for (int e = t; e < kApplyRows * kPanel; e += kApplyRows) {  // consecutive threads, consecutive columns
    const int r = e / kPanel;
    const int j = e % kPanel;
    tile[r][j] = r0 + r < d ? L[(r0 + r) * ld + j0 + j] : T(0);
  }
  const int64_t row = r0 + t;
  T kap[KC];
#pragma unroll
  for (int q = 0; q < KC; ++q) kap[q] = (row < d && q < k) ? K[row * kld + q] : T(0);
  __syncthreads();
  for (int j = 0; j < kPanel; ++j) {
    T s = tile[t][j];
#pragma unroll
    for (int q = 0; q < KC; ++q) s += w_s[j][q] * kap[q];
    s *= tau_s[j];
    tile[t][j] = (tile[t][j] - s) * sign_s[j];
#pragma unroll
    for (int q = 0; q < KC; ++q) kap[q] -= s * w_s[j][q];
  }
  if (row < d) {
#pragma unroll
    for (int q = 0; q < KC; ++q) {
      if (q < k) K[row * kld + q] = kap[q];
    }
  }
  __syncthreads();
  for (int e = t; e < kApplyRows * kPanel; e += kApplyRows) {
    const int r = e / kPanel;
    const int j = e % kPanel;
    if (r0 + r < d) L[(r0 + r) * ld + j0 + j] = tile[r][j];
  }
}

template <typename T, int KC>
cudaError_t run_chunk(T* L, int64_t d, int64_t ld, T* K, int64_t kld, int k, T* work, cudaStream_t stream) {
  for (int64_t j0 = 0; j0 < d; j0 += kPanel) {
    panel_kernel<T, KC><<<1, kPanel, 0, stream>>>(L, ld, K, kld, d, k, j0, work);
    const int64_t below = d - j0 - kPanel;
    if (below > 0) {
      const int64_t blocks = detail::ceil_div(below, kApplyRows);
      apply_kernel<T, KC><<<static_cast<unsigned>(blocks), kApplyRows, 0, stream>>>(L, ld, K, kld, d, k, j0, work);
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <typename T>
cudaError_t run(T* L, int64_t d, int64_t ld, T* K, int64_t k, T* work, cudaStream_t stream) {
  for (int64_t c0 = 0; c0 < k; c0 += kKeys) {
    const int kc = static_cast<int>(k - c0 < kKeys ? k - c0 : kKeys);
    cudaError_t err;
    if (kc == 1) {
      err = run_chunk<T, 1>(L, d, ld, K + c0, k, kc, work, stream);
    } else if (kc <= 4) {
      err = run_chunk<T, 4>(L, d, ld, K + c0, k, kc, work, stream);
    } else {
      err = run_chunk<T, kKeys>(L, d, ld, K + c0, k, kc, work, stream);
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int64_t chol_update_workspace_elements() { return static_cast<int64_t>(kPanel) * (kKeys + 2); }

cudaError_t chol_update(void* L, DType dtype, int64_t d, int64_t l_ld, void* K, int64_t k, void* work,
                        cudaStream_t stream) {
  if (d <= 0 || k <= 0) return cudaSuccess;
  if (d > 0x7fffffffLL * kApplyRows) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32:
      return run<float>(static_cast<float*>(L), d, l_ld, static_cast<float*>(K), k, static_cast<float*>(work), stream);
    case DType::kFloat64:
      return run<double>(static_cast<double*>(L), d, l_ld, static_cast<double*>(K), k, static_cast<double*>(work),
                         stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace fastedit
