// CPU implementation of the rank-k Cholesky update L ← chol(L Lᵀ + K Kᵀ), in place (the algorithm and
// its conventions: kernels/chol_update.py).
//
// Blocked over panels of kPanel columns; L may have any strides (row- or column-major run at the same
// speed: the copies below follow the contiguous index). The panel's reflectors come from its diagonal rows, one row
// after the other (each row first takes the panel's earlier reflectors, then gives its own); the rows
// below then take the panel's reflectors kRows rows at a time: the block's panel columns and keys
// are copied into column-major buffers so that every reflector step is a loop over kRows independent
// rows, which vectorises, and L is read and written once per panel. Reflector coefficients are
// computed in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"

namespace fastedit {
namespace {

constexpr int64_t kPanel = 64;
constexpr int64_t kRows = 32;

// One panel's reflectors: w (width × k, row j = w_j), tau, sign (per column).
template <typename T>
struct Panel {
  std::vector<T> w, tau, sign;
};

// Row c of [L K] (l: its panel segment of `count` entries, kap: its k keys) takes reflectors 0..count-1.
template <typename T>
inline void apply_to_row(const Panel<T>& p, int64_t count, int64_t k, T* l, T* kap) {
  for (int64_t j = 0; j < count; ++j) {
    const T* wj = p.w.data() + j * k;
    T s = l[j];
    for (int64_t q = 0; q < k; ++q) s += wj[q] * kap[q];
    s *= p.tau[j];
    l[j] = (l[j] - s) * p.sign[j];
    for (int64_t q = 0; q < k; ++q) kap[q] -= s * wj[q];
  }
}

// The reflector that zeroes kap against the diagonal entry *diag (LAPACK's sign, then the sign fixed
// so the new diagonal is positive); stored as reflector j of the panel.
template <typename T>
inline void make_reflector(Panel<T>& p, int64_t j, int64_t k, T* diag, T* kap) {
  const double alpha = static_cast<double>(*diag);
  double sigma = 0.0;
  for (int64_t q = 0; q < k; ++q) sigma += static_cast<double>(kap[q]) * static_cast<double>(kap[q]);
  const double norm = std::sqrt(alpha * alpha + sigma);
  T* wj = p.w.data() + j * k;
  if (!(norm > 0.0)) {  // nothing to rotate (or NaN: left to show in the result)
    p.tau[j] = T(0);
    p.sign[j] = T(1);
    std::fill(wj, wj + k, T(0));
    return;
  }
  const double beta = alpha >= 0.0 ? -norm : norm;  // alpha - beta never cancels
  const double inv_v0 = 1.0 / (alpha - beta);
  for (int64_t q = 0; q < k; ++q) wj[q] = static_cast<T>(static_cast<double>(kap[q]) * inv_v0);
  p.tau[j] = static_cast<T>((beta - alpha) / beta);
  p.sign[j] = beta < 0.0 ? T(-1) : T(1);
  *diag = static_cast<T>(norm);
  std::fill(kap, kap + k, T(0));
}

// Rows [r0, r0 + rows) (rows <= kRows) of the panel columns [j0, j0 + width) take the panel's
// reflectors. L(i, j) is L[i * rs + j * cs]: the copies run along whichever index is contiguous.
template <typename T>
void apply_block(const Panel<T>& p, T* L, int64_t rs, int64_t cs, T* K, int64_t k, int64_t j0, int64_t width,
                 int64_t r0, int64_t rows, T* lbuf, T* kbuf) {
  std::fill(lbuf, lbuf + width * kRows, T(0));
  std::fill(kbuf, kbuf + k * kRows, T(0));
  T* base = L + r0 * rs + j0 * cs;
  if (cs == 1) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < width; ++j) lbuf[j * kRows + r] = base[r * rs + j];
  } else {
    for (int64_t j = 0; j < width; ++j)
      for (int64_t r = 0; r < rows; ++r) lbuf[j * kRows + r] = base[r * rs + j * cs];
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < k; ++q) kbuf[q * kRows + r] = K[(r0 + r) * k + q];
  T s[kRows];
  for (int64_t j = 0; j < width; ++j) {
    T* __restrict__ lj = lbuf + j * kRows;
    const T* wj = p.w.data() + j * k;
    for (int64_t r = 0; r < kRows; ++r) s[r] = lj[r];
    for (int64_t q = 0; q < k; ++q) {
      const T wq = wj[q];
      const T* __restrict__ kq = kbuf + q * kRows;
      for (int64_t r = 0; r < kRows; ++r) s[r] += wq * kq[r];
    }
    const T tau = p.tau[j];
    const T sign = p.sign[j];
    for (int64_t r = 0; r < kRows; ++r) {
      s[r] *= tau;
      lj[r] = (lj[r] - s[r]) * sign;
    }
    for (int64_t q = 0; q < k; ++q) {
      const T wq = wj[q];
      T* __restrict__ kq = kbuf + q * kRows;
      for (int64_t r = 0; r < kRows; ++r) kq[r] -= wq * s[r];
    }
  }
  if (cs == 1) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < width; ++j) base[r * rs + j] = lbuf[j * kRows + r];
  } else {
    for (int64_t j = 0; j < width; ++j)
      for (int64_t r = 0; r < rows; ++r) base[r * rs + j * cs] = lbuf[j * kRows + r];
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < k; ++q) K[(r0 + r) * k + q] = kbuf[q * kRows + r];
}

// L (d × d, element (i, j) at L[i * rs + j * cs]), K (d × k contiguous, overwritten).
template <typename T>
void chol_update_rows(T* L, int64_t rs, int64_t cs, T* K, int64_t d, int64_t k) {
  Panel<T> p;
  p.w.resize(static_cast<size_t>(kPanel * k));
  p.tau.resize(kPanel);
  p.sign.resize(kPanel);
  std::vector<T> row(kPanel);
  for (int64_t j0 = 0; j0 < d; j0 += kPanel) {
    const int64_t width = std::min(kPanel, d - j0);
    for (int64_t i = 0; i < width; ++i) {  // the panel's diagonal rows, in order
      const int64_t c = j0 + i;
      T* l = L + c * rs + j0 * cs;
      for (int64_t j = 0; j <= i; ++j) row[j] = l[j * cs];
      apply_to_row(p, i, k, row.data(), K + c * k);
      make_reflector(p, i, k, row.data() + i, K + c * k);
      for (int64_t j = 0; j <= i; ++j) l[j * cs] = row[j];
    }
    const int64_t first = j0 + width;
    const int64_t blocks = (d - first + kRows - 1) / kRows;
    // ~64k element updates per task
    const int64_t grain = std::max<int64_t>(1, 65536 / (kRows * width * (k + 1)));
    at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
      std::vector<T> lbuf(static_cast<size_t>(kRows * width)), kbuf(static_cast<size_t>(kRows * k));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = first + b * kRows;
        apply_block(p, L, rs, cs, K, k, j0, width, r0, std::min(kRows, d - r0), lbuf.data(), kbuf.data());
      }
    });
  }
}

void cholesky_update_cpu(const at::Tensor& L, const at::Tensor& K) {
  check_cholesky_update(L, K);
  const int64_t d = L.size(0);
  const int64_t k = K.size(1);
  if (d == 0 || k == 0) return;
  // K is overwritten by the algorithm: always a private copy, in L's dtype.
  at::Tensor Kw = K.to(L.scalar_type()).contiguous().clone();
  AT_DISPATCH_FLOATING_TYPES(L.scalar_type(), "fastedit_cholesky_update_cpu", [&] {
    chol_update_rows<scalar_t>(L.data_ptr<scalar_t>(), L.stride(0), L.stride(1), Kw.data_ptr<scalar_t>(), d, k);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(fastedit, CPU, m) { m.impl("cholesky_update_", &cholesky_update_cpu); }

}  // namespace fastedit
