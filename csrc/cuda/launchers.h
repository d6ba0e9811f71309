// Host launchers of the CUDA kernels. This header and the .cu files beside it use no torch headers,
// so nvcc compiles them standalone (the compile-only test in tests/kernels does exactly that); the
// torch-facing checks, dtype mapping and stream selection live in ../cuda_ops.cpp.
//
// Conventions: every matrix is row-major with a column stride of 1 and the row stride given
// (`*_ld`, in elements); batched matrices are contiguous. Launchers return the launch's
// cudaError_t and never synchronise.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

namespace fastedit {
namespace cuda {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

// acc[i, j] += Σ_r x[r, i] x[r, j] over the rows r < n with valid[r] != 0 (valid may be null), for
// the (64 × 64) tiles on and below the diagonal of acc only.
//   x: n × d, dtype float16/bfloat16/float32/float64, row stride x_ld.
//   acc: d × d, dtype float32/float64, row stride acc_ld.
// Products and the per-call sum are float32 (float64 for float64 x); they are added to acc in its dtype.
cudaError_t syrk_accumulate(const void* x, DType x_dtype, int64_t n, int64_t d, int64_t x_ld,
                            const uint8_t* valid, void* acc, DType acc_dtype, int64_t acc_ld,
                            cudaStream_t stream);

// Batched Cholesky factorisation, in place, with an optional solve.
//   L: batch × n × n contiguous, float32/float64; holds A on entry (only the lower triangle is read)
//      and L on exit (upper triangle zeroed).
//   X: null, or batch × n × k contiguous, same dtype; holds B on entry and the solution of A X = B
//      on exit.
//   info: batch int32, zeroed by the caller; set to j (1-based) when the leading minor of order j is
//      not positive definite (pivot <= 0, NaN or inf). A failed matrix's L and X are unspecified.
cudaError_t potrf_batched(void* L, DType dtype, int64_t batch, int64_t n, void* X, int64_t k,
                          int32_t* info, cudaStream_t stream);

// Batched solve with a given lower factor: L L^T X = B. L: batch × n × n contiguous (read only);
// X: batch × n × k contiguous, holds B on entry and X on exit.
cudaError_t potrs_batched(const void* L, DType dtype, int64_t batch, int64_t n, void* X, int64_t k,
                          cudaStream_t stream);

// W[i, j] += Σ_r P[i, r] Q[j, r] in place, for the stored W (m × n).
//   W: dtype float16/bfloat16/float32/float64, row stride w_ld.
//   P: m × r, Q: n × r, contiguous, in the compute dtype pq_dtype (float32, or float64 for float64 W).
//   C: null, or the compensation buffer (m × n, row stride c_ld, dtype float32 or W's dtype):
//      Kahan summation, W + C holds the exact running sum.
cudaError_t lowrank_update(void* W, DType w_dtype, int64_t m, int64_t n, int64_t w_ld, const void* P,
                           const void* Q, DType pq_dtype, int64_t r, void* C, DType c_dtype,
                           int64_t c_ld, cudaStream_t stream);

// Rank-k Cholesky update in place: L ← chol(L Lᵀ + K Kᵀ), two kernels per panel of 32 columns.
//   L: d × d, dtype float32/float64, row stride l_ld; only its lower triangle is read and written.
//   K: d × k contiguous, L's dtype; overwritten (its rows are zero on exit).
//   work: chol_update_workspace_elements() elements of L's dtype in device memory.
cudaError_t chol_update(void* L, DType dtype, int64_t d, int64_t l_ld, void* K, int64_t k, void* work,
                        cudaStream_t stream);
int64_t chol_update_workspace_elements();

}  // namespace cuda
}  // namespace fastedit
