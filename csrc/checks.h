// Argument checks shared by the CPU and CUDA implementations: each names the argument, the expected
// shape or dtype and what it got.
#pragma once

#include <optional>
#include <utility>

#include <ATen/ATen.h>

namespace fastedit {

inline void check_batched_square(const at::Tensor& A, const char* name) {
  TORCH_CHECK(A.dim() == 3 && A.size(1) == A.size(2), "fastedit: ", name,
              " must be a batch of square matrices (batch, n, n), got shape ", A.sizes());
  TORCH_CHECK(A.scalar_type() == at::kFloat || A.scalar_type() == at::kDouble, "fastedit: ", name,
              " must be float32 or float64, got ", A.scalar_type());
}

inline void check_rhs(const at::Tensor& A, const at::Tensor& B, const char* a_name) {
  TORCH_CHECK(B.dim() == 3 && B.size(0) == A.size(0) && B.size(1) == A.size(1),
              "fastedit: B must have shape (batch, n, k) = (", A.size(0), ", ", A.size(1), ", k) to match ", a_name,
              " ", A.sizes(), ", got ", B.sizes());
  TORCH_CHECK(B.scalar_type() == A.scalar_type(), "fastedit: B (", B.scalar_type(), ") and ", a_name, " (",
              A.scalar_type(), ") must have the same dtype");
  TORCH_CHECK(B.device() == A.device(), "fastedit: B is on ", B.device(), ", ", a_name, " on ", A.device());
}

inline bool is_float_type(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}

// Checks the low-rank update's arguments; returns (P, Q) with W_stored += P Qᵀ.
inline std::pair<at::Tensor, at::Tensor> check_lowrank(const at::Tensor& W, const at::Tensor& U, const at::Tensor& V,
                                                       bool transpose, const std::optional<at::Tensor>& C) {
  TORCH_CHECK(W.dim() == 2 && U.dim() == 2 && V.dim() == 2, "fastedit: W, U, V must be 2-D, got ", W.sizes(), ", ",
              U.sizes(), ", ", V.sizes());
  TORCH_CHECK(U.size(1) == V.size(1), "fastedit: U (d_out, r) ", U.sizes(), " and V (d_in, r) ", V.sizes(),
              " disagree on r");
  const at::Tensor& P = transpose ? V : U;
  const at::Tensor& Q = transpose ? U : V;
  TORCH_CHECK(W.size(0) == P.size(0) && W.size(1) == Q.size(0), "fastedit: W ", W.sizes(), " does not match U ",
              U.sizes(), " and V ", V.sizes(), " with transpose=", transpose, ": expected (", P.size(0), ", ",
              Q.size(0), ")");
  TORCH_CHECK(is_float_type(W.scalar_type()), "fastedit: W must be a floating-point tensor, got ", W.scalar_type());
  TORCH_CHECK(is_float_type(U.scalar_type()) && is_float_type(V.scalar_type()),
              "fastedit: U and V must be floating-point tensors");
  TORCH_CHECK(U.device() == W.device() && V.device() == W.device(), "fastedit: W, U, V must be on one device, got ",
              W.device(), ", ", U.device(), ", ", V.device());
  if (C.has_value()) {
    TORCH_CHECK(C->sizes() == W.sizes(), "fastedit: compensation ", C->sizes(), " must have W's shape ", W.sizes());
    TORCH_CHECK(C->scalar_type() == at::kFloat || C->scalar_type() == W.scalar_type(),
                "fastedit: compensation must be float32 or W's dtype ", W.scalar_type(), ", got ", C->scalar_type());
    TORCH_CHECK(C->device() == W.device(), "fastedit: compensation is on ", C->device(), ", W on ", W.device());
  }
  return {P, Q};
}

// Checks the rank-k Cholesky update's arguments: L (d, d) float32/float64, K (d, k) float, one device.
inline void check_cholesky_update(const at::Tensor& L, const at::Tensor& K) {
  TORCH_CHECK(L.dim() == 2 && L.size(0) == L.size(1), "fastedit: L must be a square (d, d) factor, got shape ",
              L.sizes());
  TORCH_CHECK(L.scalar_type() == at::kFloat || L.scalar_type() == at::kDouble,
              "fastedit: L must be float32 or float64, got ", L.scalar_type());
  TORCH_CHECK(K.dim() == 2 && K.size(0) == L.size(0), "fastedit: K must be (d, k) with d = ", L.size(0),
              ", got shape ", K.sizes());
  TORCH_CHECK(is_float_type(K.scalar_type()), "fastedit: K must be a floating-point tensor, got ", K.scalar_type());
  TORCH_CHECK(K.device() == L.device(), "fastedit: K is on ", K.device(), ", L on ", L.device());
}

}  // namespace fastedit
