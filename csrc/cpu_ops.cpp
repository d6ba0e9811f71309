// CPU implementations:
//  - batched Cholesky factorisation and solves with a failure code per matrix (never a NaN that looks
//    like success), the dot products of the float32 version accumulated in float64;
//  - the fused low-rank update with Kahan compensation, one row of ΔW at a time, so no m × n temporary.
// Both run over the batch (or the rows) with at::parallel_for.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"

namespace fastedit {
namespace {

// ----------------------------------------------------------------------------------------------
// Cholesky

// Σ_p a[p] b[p] in double, with eight independent partial sums: a single running sum would make
// every step wait for the previous addition, and eight fixed lanes keep the result deterministic.
template <typename T>
inline double dot_double(const T* a, const T* b, int64_t len) {
  double s[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  int64_t p = 0;
  for (; p + 8 <= len; p += 8) {
    for (int q = 0; q < 8; ++q) s[q] += static_cast<double>(a[p + q]) * static_cast<double>(b[p + q]);
  }
  for (; p < len; ++p) s[0] += static_cast<double>(a[p]) * static_cast<double>(b[p]);
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// Factors the row-major n × n matrix a in place (Cholesky–Banachiewicz, row by row; only the lower
// triangle is read) and zeroes its upper triangle. Returns 0, or the order of the first leading minor
// that is not positive definite (its pivot <= 0, NaN or infinite).
template <typename T>
int32_t cholesky_inplace(T* a, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T* ri = a + i * n;
    for (int64_t j = 0; j <= i; ++j) {
      const T* rj = a + j * n;
      const double s = static_cast<double>(ri[j]) - dot_double(ri, rj, j);
      if (i == j) {
        // a pivot that rounds to zero or overflows in T is as bad as a negative one
        const T pivot = static_cast<T>(s);
        if (!(s > 0.0) || !(pivot > T(0)) || !std::isfinite(pivot)) return static_cast<int32_t>(i + 1);
        ri[i] = static_cast<T>(std::sqrt(s));
      } else {
        ri[j] = static_cast<T>(s / static_cast<double>(rj[j]));
      }
    }
    for (int64_t j = i + 1; j < n; ++j) ri[j] = T(0);
  }
  return 0;
}

// Solves L Lᵀ x = b in place; L row-major n × n lower, x row-major n × k. work: k doubles.
template <typename T>
void cholesky_solve_inplace(const T* L, int64_t n, T* x, int64_t k, double* work) {
  for (int64_t i = 0; i < n; ++i) {  // L y = b
    for (int64_t c = 0; c < k; ++c) work[c] = static_cast<double>(x[i * k + c]);
    const T* li = L + i * n;
    for (int64_t p = 0; p < i; ++p) {
      const double l = static_cast<double>(li[p]);
      const T* xp = x + p * k;
      for (int64_t c = 0; c < k; ++c) work[c] -= l * static_cast<double>(xp[c]);
    }
    const double inv = 1.0 / static_cast<double>(li[i]);
    for (int64_t c = 0; c < k; ++c) x[i * k + c] = static_cast<T>(work[c] * inv);
  }
  for (int64_t i = n - 1; i >= 0; --i) {  // Lᵀ x = y
    for (int64_t c = 0; c < k; ++c) work[c] = static_cast<double>(x[i * k + c]);
    for (int64_t p = i + 1; p < n; ++p) {
      const double l = static_cast<double>(L[p * n + i]);
      const T* xp = x + p * k;
      for (int64_t c = 0; c < k; ++c) work[c] -= l * static_cast<double>(xp[c]);
    }
    const double inv = 1.0 / static_cast<double>(L[i * n + i]);
    for (int64_t c = 0; c < k; ++c) x[i * k + c] = static_cast<T>(work[c] * inv);
  }
}

int64_t grain_for(int64_t n) {
  // aim at ~32k flops per task so small matrices are grouped
  const int64_t flops = std::max<int64_t>(1, n * n * n / 3);
  return std::max<int64_t>(1, 32768 / flops);
}

// Factor (and, if X is defined, solve) every matrix of L in place; info gets the failure codes.
void factor_and_solve(at::Tensor& L, at::Tensor& info, at::Tensor* X) {
  const int64_t batch = L.size(0);
  const int64_t n = L.size(1);
  const int64_t k = X != nullptr ? X->size(2) : 0;
  int32_t* info_p = info.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(L.scalar_type(), "fastedit_cholesky_cpu", [&] {
    scalar_t* Lp = L.data_ptr<scalar_t>();
    scalar_t* Xp = X != nullptr ? X->data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, batch, grain_for(n), [&](int64_t begin, int64_t end) {
      std::vector<double> work(static_cast<size_t>(std::max<int64_t>(k, 1)));
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* Lb = Lp + b * n * n;
        info_p[b] = cholesky_inplace(Lb, n);
        if (Xp != nullptr && info_p[b] == 0) cholesky_solve_inplace(Lb, n, Xp + b * n * k, k, work.data());
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> cholesky_ex_cpu(const at::Tensor& A) {
  check_batched_square(A, "A");
  at::Tensor L = A.contiguous().clone();
  at::Tensor info = at::zeros({A.size(0)}, A.options().dtype(at::kInt));
  factor_and_solve(L, info, nullptr);
  return {L, info};
}

std::tuple<at::Tensor, at::Tensor> spd_solve_ex_cpu(const at::Tensor& A, const at::Tensor& B) {
  check_batched_square(A, "A");
  check_rhs(A, B, "A");
  at::Tensor L = A.contiguous().clone();
  at::Tensor X = B.contiguous().clone();
  at::Tensor info = at::zeros({A.size(0)}, A.options().dtype(at::kInt));
  factor_and_solve(L, info, &X);
  return {X, info};
}

at::Tensor cholesky_solve_cpu(const at::Tensor& L, const at::Tensor& B) {
  check_batched_square(L, "L");
  check_rhs(L, B, "L");
  at::Tensor Lc = L.contiguous();
  at::Tensor X = B.contiguous().clone();
  const int64_t batch = L.size(0);
  const int64_t n = L.size(1);
  const int64_t k = B.size(2);
  AT_DISPATCH_FLOATING_TYPES(L.scalar_type(), "fastedit_cholesky_solve_cpu", [&] {
    const scalar_t* Lp = Lc.data_ptr<scalar_t>();
    scalar_t* Xp = X.data_ptr<scalar_t>();
    at::parallel_for(0, batch, grain_for(n), [&](int64_t begin, int64_t end) {
      std::vector<double> work(static_cast<size_t>(std::max<int64_t>(k, 1)));
      for (int64_t b = begin; b < end; ++b) cholesky_solve_inplace(Lp + b * n * n, n, Xp + b * n * k, k, work.data());
    });
  });
  return X;
}

// ----------------------------------------------------------------------------------------------
// Low-rank update

// Conversions between storage and compute types. bf16 goes through its bits (round to nearest even,
// NaN kept quiet) so that the element loops below vectorise; the others use c10's conversions.
template <typename T>
inline at::opmath_type<T> load_as_acc(T v) {
  return static_cast<at::opmath_type<T>>(v);
}

inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

inline uint16_t float_to_bf16_bits(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>(0x7fc0u) : static_cast<uint16_t>(rounded);
}

inline float load_as_acc(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

template <typename T, typename A>
inline T store_from_acc(A v) {
  return static_cast<T>(v);
}

template <>
inline c10::BFloat16 store_from_acc<c10::BFloat16, float>(float v) {
  return c10::BFloat16(float_to_bf16_bits(v), c10::BFloat16::from_bits());
}

// W_stored[i, j] += Σ_r P[i, r] Qt[r, j], rows [begin, end); acc_t is the compute type. UNIT: W and C
// have unit column stride (the usual case), which lets the element loops vectorise.
template <typename scalar_t, typename comp_t, bool HAS_COMP, bool UNIT>
void lowrank_rows(scalar_t* W, int64_t ws0, int64_t ws1, const at::opmath_type<scalar_t>* P,
                  const at::opmath_type<scalar_t>* Qt, comp_t* C, int64_t cs0, int64_t cs1, int64_t n, int64_t r,
                  int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  std::vector<acc_t> buffer(static_cast<size_t>(n));
  acc_t* __restrict__ delta = buffer.data();
  const int64_t wstep = UNIT ? 1 : ws1;
  const int64_t cstep = UNIT ? 1 : cs1;
  for (int64_t i = begin; i < end; ++i) {
    std::fill(delta, delta + n, acc_t(0));
    for (int64_t p = 0; p < r; ++p) {
      const acc_t pi = P[i * r + p];
      const acc_t* __restrict__ q = Qt + p * n;
      for (int64_t j = 0; j < n; ++j) delta[j] += pi * q[j];
    }
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && UNIT) {
      // bf16 through its raw bits: plain integer arrays vectorise where the c10 type does not
      uint16_t* __restrict__ wbits = reinterpret_cast<uint16_t*>(W + i * ws0);
      if constexpr (HAS_COMP && std::is_same_v<comp_t, c10::BFloat16>) {
        uint16_t* __restrict__ cbits = reinterpret_cast<uint16_t*>(C + i * cs0);
        for (int64_t j = 0; j < n; ++j) {
          const float w = bf16_bits_to_float(wbits[j]);
          const float y = delta[j] + bf16_bits_to_float(cbits[j]);
          const uint16_t s = float_to_bf16_bits(w + y);
          cbits[j] = float_to_bf16_bits(y - (bf16_bits_to_float(s) - w));
          wbits[j] = s;
        }
      } else if constexpr (HAS_COMP) {
        comp_t* __restrict__ crow = C + i * cs0;
        for (int64_t j = 0; j < n; ++j) {
          const float w = bf16_bits_to_float(wbits[j]);
          const float y = delta[j] + static_cast<float>(crow[j]);
          const uint16_t s = float_to_bf16_bits(w + y);
          crow[j] = static_cast<comp_t>(y - (bf16_bits_to_float(s) - w));
          wbits[j] = s;
        }
      } else {
        for (int64_t j = 0; j < n; ++j) wbits[j] = float_to_bf16_bits(bf16_bits_to_float(wbits[j]) + delta[j]);
      }
      continue;
    }
    scalar_t* __restrict__ wrow = W + i * ws0;
    if constexpr (HAS_COMP) {
      comp_t* __restrict__ crow = C + i * cs0;
      for (int64_t j = 0; j < n; ++j) {
        const acc_t w = load_as_acc(wrow[j * wstep]);
        const acc_t y = delta[j] + static_cast<acc_t>(load_as_acc(crow[j * cstep]));
        const scalar_t s = store_from_acc<scalar_t>(w + y);  // rounds to nearest even
        // s - w is exact: what the rounding lost stays in C
        crow[j * cstep] = store_from_acc<comp_t>(static_cast<at::opmath_type<comp_t>>(y - (load_as_acc(s) - w)));
        wrow[j * wstep] = s;
      }
    } else {
      for (int64_t j = 0; j < n; ++j) {
        wrow[j * wstep] = store_from_acc<scalar_t>(load_as_acc(wrow[j * wstep]) + delta[j]);
      }
    }
  }
}

template <typename scalar_t, typename comp_t, bool HAS_COMP>
void lowrank_rows_any(scalar_t* W, int64_t ws0, int64_t ws1, const at::opmath_type<scalar_t>* P,
                      const at::opmath_type<scalar_t>* Qt, comp_t* C, int64_t cs0, int64_t cs1, int64_t n, int64_t r,
                      int64_t begin, int64_t end) {
  if (ws1 == 1 && (!HAS_COMP || cs1 == 1)) {
    lowrank_rows<scalar_t, comp_t, HAS_COMP, true>(W, ws0, ws1, P, Qt, C, cs0, cs1, n, r, begin, end);
  } else {
    lowrank_rows<scalar_t, comp_t, HAS_COMP, false>(W, ws0, ws1, P, Qt, C, cs0, cs1, n, r, begin, end);
  }
}

void lowrank_update_cpu(const at::Tensor& W, const at::Tensor& U, const at::Tensor& V, bool transpose,
                        const std::optional<at::Tensor>& compensation) {
  auto [P0, Q0] = check_lowrank(W, U, V, transpose, compensation);
  const int64_t m = W.size(0);
  const int64_t n = W.size(1);
  const int64_t r = P0.size(1);
  if (m == 0 || n == 0) return;
  const at::ScalarType acc_type = W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // P (m × r) and Qᵀ (r × n), contiguous in the compute type: small next to W.
  const at::Tensor P = P0.to(acc_type).contiguous();
  const at::Tensor Qt = Q0.to(acc_type).t().contiguous();
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(n * std::max<int64_t>(r, 1), 1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, W.scalar_type(), "fastedit_lowrank_update_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* Wp = W.data_ptr<scalar_t>();
    const acc_t* Pp = P.data_ptr<acc_t>();
    const acc_t* Qp = Qt.data_ptr<acc_t>();
    const int64_t ws0 = W.stride(0);
    const int64_t ws1 = W.stride(1);
    if (!compensation.has_value()) {
      at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
        lowrank_rows_any<scalar_t, scalar_t, false>(Wp, ws0, ws1, Pp, Qp, nullptr, 0, 0, n, r, b, e);
      });
    } else if (compensation->scalar_type() == W.scalar_type()) {
      scalar_t* Cp = compensation->data_ptr<scalar_t>();
      const int64_t cs0 = compensation->stride(0);
      const int64_t cs1 = compensation->stride(1);
      at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
        lowrank_rows_any<scalar_t, scalar_t, true>(Wp, ws0, ws1, Pp, Qp, Cp, cs0, cs1, n, r, b, e);
      });
    } else {
      float* Cp = compensation->data_ptr<float>();
      const int64_t cs0 = compensation->stride(0);
      const int64_t cs1 = compensation->stride(1);
      at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
        lowrank_rows_any<scalar_t, float, true>(Wp, ws0, ws1, Pp, Qp, Cp, cs0, cs1, n, r, b, e);
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastedit, CPU, m) {
  m.impl("cholesky_ex", &cholesky_ex_cpu);
  m.impl("cholesky_solve", &cholesky_solve_cpu);
  m.impl("spd_solve_ex", &spd_solve_ex_cpu);
  m.impl("lowrank_update_", &lowrank_update_cpu);
}

}  // namespace fastedit
