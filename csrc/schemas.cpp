// Operator schemas of the fastedit namespace, defined in every build; kernels are registered per
// device in cpu_ops.cpp and cuda_ops.cpp, fake (meta) implementations in fastedit/_ext.py.
// Shapes and conventions are those of fastedit/ops.py; batched matrices are 3-D (batch, n, n).
#include <torch/library.h>

TORCH_LIBRARY(fastedit, m) {
  // acc (d, d) float32/float64 += x[valid]ᵀ x[valid] on and below the diagonal (tiles); x (n, d).
  m.def("syrk_accumulate_(Tensor(a!) acc, Tensor x, Tensor? valid) -> ()");
  // A (b, n, n) float32/float64 -> L (b, n, n) lower, info (b,) int32: 0, or the order of the first
  // leading minor that is not positive definite.
  m.def("cholesky_ex(Tensor A) -> (Tensor L, Tensor info)");
  // L (b, n, n) lower factor, B (b, n, k) -> X (b, n, k) with L Lᵀ X = B.
  m.def("cholesky_solve(Tensor L, Tensor B) -> Tensor");
  // A (b, n, n) SPD, B (b, n, k) -> X (b, n, k) with A X = B, info (b,) int32 as for cholesky_ex.
  m.def("spd_solve_ex(Tensor A, Tensor B) -> (Tensor X, Tensor info)");
  // W += U Vᵀ (transpose=False, W (d_out, d_in)) or W += V Uᵀ (transpose=True, W (d_in, d_out)),
  // U (d_out, r), V (d_in, r); compensation like W (float32 or W's dtype): Kahan summation.
  m.def("lowrank_update_(Tensor(a!) W, Tensor U, Tensor V, bool transpose, Tensor(b!)? compensation) -> ()");
  // L (d, d) float32/float64 lower factor <- chol(L Lᵀ + K Kᵀ) in place, K (d, k) (not modified); only
  // the lower triangle of L is read and written.
  m.def("cholesky_update_(Tensor(a!) L, Tensor K) -> ()");
}
