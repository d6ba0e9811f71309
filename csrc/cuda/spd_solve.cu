// Batched Cholesky factorisation and triangular solves: one thread block per matrix.
//
// The working matrix sits in shared memory when it fits (n × n elements, up to the device's opt-in
// limit: n <= 238 in float32, n <= 168 in float64 on an H100), else in the output buffer in global
// memory. The factorisation is right-looking, one column per step and one barrier per step: at step
// j every thread reads the pivot a_jj (final since the last barrier), applies the trailing update
// a_ic -= a_ij a_cj / a_jj (j < c <= i) with column j still unscaled, and scales column j - 1 by
// 1 / sqrt(a_{j-1,j-1}), which nothing reads in this step. The forward and backward substitutions
// use the same deferred-scaling trick on the rows of X.
//
// A pivot that is <= 0, NaN or infinite stops that matrix's factorisation and records its 1-based
// order in info[b]; every thread reads the same pivot, so the whole block leaves the loop together.
#include <cmath>

#include "common.cuh"
#include "launchers.h"

namespace fastedit {
namespace cuda {
namespace {

template <typename T>
__device__ __forceinline__ bool good_pivot(T v) {
  return v > T(0) && isfinite(v);
}

// Factor (FACTOR) and/or solve (SOLVE) matrix blockIdx.x.
//   L: batch × n × n; with FACTOR it holds A on entry and L on exit, else it is the given factor.
//   X: batch × n × k, B on entry, the solution on exit.
template <typename T, bool FACTOR, bool SOLVE>
__global__ void potrf_potrs_kernel(T* __restrict__ L, int64_t n, T* __restrict__ X, int64_t k,
                                   int32_t* __restrict__ info, bool in_shared) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ int failed;
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const int nthreads = blockDim.x;
  T* Lb = L + b * n * n;
  T* W = in_shared ? reinterpret_cast<T*>(smem_raw) : Lb;

  if (tid == 0) failed = 0;
  if (in_shared) {
    for (int64_t e = tid; e < n * n; e += nthreads) {
      const int64_t i = e / n;
      const int64_t c = e % n;
      W[e] = c <= i ? Lb[e] : T(0);
    }
  }
  __syncthreads();

  if (FACTOR) {
    T prev_s = T(0);
    T prev_inv_s = T(0);
    int64_t j = 0;
    for (; j < n; ++j) {
      const T d = W[j * n + j];
      if (!good_pivot(d)) {
        if (tid == 0) {
          failed = 1;
          info[b] = static_cast<int32_t>(j + 1);
        }
        break;
      }
      const T s = sqrt(d);
      const T inv_d = T(1) / d;
      if (j > 0) {
        // finish column j - 1: its sub-diagonal entries and its diagonal
        for (int64_t i = j + tid; i < n; i += nthreads) W[i * n + (j - 1)] *= prev_inv_s;
        if (tid == 0) W[(j - 1) * n + (j - 1)] = prev_s;
      }
      const int64_t m = n - j - 1;
      for (int64_t e = tid; e < m * m; e += nthreads) {
        const int64_t i = j + 1 + e / m;
        const int64_t c = j + 1 + e % m;
        if (c <= i) W[i * n + c] -= W[i * n + j] * W[c * n + j] * inv_d;
      }
      prev_s = s;
      prev_inv_s = T(1) / s;
      __syncthreads();
    }
    if (j == n && n > 0 && tid == 0) W[(n - 1) * n + (n - 1)] = prev_s;  // the last column is its diagonal
    __syncthreads();
    // write L out with a zero upper triangle
    for (int64_t e = tid; e < n * n; e += nthreads) {
      const int64_t i = e / n;
      const int64_t c = e % n;
      if (in_shared) {
        Lb[e] = c <= i ? W[e] : T(0);
      } else if (c > i) {
        Lb[e] = T(0);
      }
    }
    __syncthreads();
  }

  if (SOLVE && !failed) {
    T* Xb = X + b * n * k;
    // forward: L Y = B; row j of Y is scaled at step j + 1
    T prev_inv = T(0);
    for (int64_t j = 0; j < n; ++j) {
      const T inv = T(1) / W[j * n + j];
      if (j > 0) {
        for (int64_t c = tid; c < k; c += nthreads) Xb[(j - 1) * k + c] *= prev_inv;
      }
      const int64_t rows = n - j - 1;
      for (int64_t e = tid; e < rows * k; e += nthreads) {
        const int64_t i = j + 1 + e / k;
        const int64_t c = e % k;
        Xb[i * k + c] -= W[i * n + j] * (Xb[j * k + c] * inv);
      }
      prev_inv = inv;
      __syncthreads();
    }
    if (n > 0) {
      for (int64_t c = tid; c < k; c += nthreads) Xb[(n - 1) * k + c] *= prev_inv;
    }
    __syncthreads();
    // backward: Lᵀ X = Y; row j of X is scaled at step j - 1
    for (int64_t j = n - 1; j >= 0; --j) {
      const T inv = T(1) / W[j * n + j];
      if (j < n - 1) {
        for (int64_t c = tid; c < k; c += nthreads) Xb[(j + 1) * k + c] *= prev_inv;
      }
      for (int64_t e = tid; e < j * k; e += nthreads) {
        const int64_t i = e / k;
        const int64_t c = e % k;
        Xb[i * k + c] -= W[j * n + i] * (Xb[j * k + c] * inv);
      }
      prev_inv = inv;
      __syncthreads();
    }
    if (n > 0) {
      for (int64_t c = tid; c < k; c += nthreads) Xb[c] *= prev_inv;
    }
  }
}

int threads_for(int64_t n) { return n <= 32 ? 64 : (n <= 64 ? 128 : 256); }

template <typename T, bool FACTOR, bool SOLVE>
cudaError_t launch_typed(T* L, int64_t batch, int64_t n, T* X, int64_t k, int32_t* info, cudaStream_t stream) {
  if (batch <= 0 || n <= 0) return cudaSuccess;
  if (batch > 0x7fffffffLL) return cudaErrorInvalidValue;
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  int optin = 0;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  const size_t bytes = static_cast<size_t>(n) * static_cast<size_t>(n) * sizeof(T);
  // keep a little room for the kernel's static shared memory
  const bool in_shared = bytes + 64 <= static_cast<size_t>(optin);
  const size_t dyn = in_shared ? bytes : 0;
  auto kernel = potrf_potrs_kernel<T, FACTOR, SOLVE>;
  if (dyn > 48 * 1024) {
    err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(batch), threads_for(n), dyn, stream>>>(L, n, X, k, info, in_shared);
  return cudaGetLastError();
}

template <typename T>
cudaError_t potrf_dispatch(void* L, int64_t batch, int64_t n, void* X, int64_t k, int32_t* info,
                           cudaStream_t stream) {
  T* Lp = static_cast<T*>(L);
  T* Xp = static_cast<T*>(X);
  if (X != nullptr && k > 0) return launch_typed<T, true, true>(Lp, batch, n, Xp, k, info, stream);
  return launch_typed<T, true, false>(Lp, batch, n, Xp, k, info, stream);
}

}  // namespace

cudaError_t potrf_batched(void* L, DType dtype, int64_t batch, int64_t n, void* X, int64_t k, int32_t* info,
                          cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      return potrf_dispatch<float>(L, batch, n, X, k, info, stream);
    case DType::kFloat64:
      return potrf_dispatch<double>(L, batch, n, X, k, info, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t potrs_batched(const void* L, DType dtype, int64_t batch, int64_t n, void* X, int64_t k,
                          cudaStream_t stream) {
  if (k <= 0) return cudaSuccess;
  // The factor is only read when FACTOR is false.
  switch (dtype) {
    case DType::kFloat32:
      return launch_typed<float, false, true>(const_cast<float*>(static_cast<const float*>(L)), batch, n,
                                              static_cast<float*>(X), k, nullptr, stream);
    case DType::kFloat64:
      return launch_typed<double, false, true>(const_cast<double*>(static_cast<const double*>(L)), batch, n,
                                               static_cast<double*>(X), k, nullptr, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cuda
}  // namespace fastedit
