// CUDA implementations of the fastedit operators: argument checks, dtype mapping, device guard and
// current stream, then the torch-free launchers of csrc/cuda/*.cu. Built only with a CUDA build of
// torch and nvcc (setup.py defines FASTEDIT_WITH_CUDA then).
#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/launchers.h"

namespace fastedit {
namespace {

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return cuda::DType::kFloat16;
    case at::kBFloat16:
      return cuda::DType::kBFloat16;
    case at::kFloat:
      return cuda::DType::kFloat32;
    case at::kDouble:
      return cuda::DType::kFloat64;
    default:
      break;
  }
  TORCH_CHECK(false, "fastedit: unsupported dtype ", t);
  return cuda::DType::kFloat32;
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fastedit: ", what, " failed: ", cudaGetErrorString(err));
}

void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "fastedit: ", name, " must be a CUDA tensor, got one on ", t.device());
}

void syrk_accumulate_cuda(const at::Tensor& acc, const at::Tensor& x, const std::optional<at::Tensor>& valid) {
  check_cuda_tensor(acc, "acc");
  check_cuda_tensor(x, "x");
  TORCH_CHECK(acc.dim() == 2 && acc.size(0) == acc.size(1), "fastedit: acc must be square (d, d), got ", acc.sizes());
  TORCH_CHECK(acc.scalar_type() == at::kFloat || acc.scalar_type() == at::kDouble,
              "fastedit: acc must be float32 or float64, got ", acc.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.size(1) == acc.size(0), "fastedit: x must be (n, d) with d = ", acc.size(0), ", got ",
              x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "fastedit: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(x.device() == acc.device(), "fastedit: x is on ", x.device(), ", acc on ", acc.device());
  if (valid.has_value()) {
    TORCH_CHECK(valid->scalar_type() == at::kBool && valid->dim() == 1 && valid->size(0) == x.size(0),
                "fastedit: valid must be a bool tensor of shape (", x.size(0), ",), got ", valid->scalar_type(), " ",
                valid->sizes());
    TORCH_CHECK(valid->device() == x.device(), "fastedit: valid is on ", valid->device(), ", x on ", x.device());
  }
  if (x.size(0) == 0 || x.size(1) == 0) return;
  const c10::cuda::CUDAGuard guard(acc.device());
  const at::Tensor xc = x.stride(1) == 1 && x.stride(0) >= x.size(1) ? x : x.contiguous();
  at::Tensor vc;
  if (valid.has_value()) vc = valid->contiguous();
  const bool acc_rows = acc.stride(1) == 1 && acc.stride(0) >= acc.size(1);
  at::Tensor out = acc_rows ? acc : acc.contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(acc.device().index()).stream();
  check_launch(cuda::syrk_accumulate(xc.data_ptr(), to_dtype(xc.scalar_type()), xc.size(0), xc.size(1), xc.stride(0),
                                     valid.has_value() ? reinterpret_cast<const uint8_t*>(vc.data_ptr<bool>()) : nullptr,
                                     out.data_ptr(), to_dtype(out.scalar_type()), out.stride(0), stream),
               "syrk_accumulate");
  if (!acc_rows) acc.copy_(out);
}

std::tuple<at::Tensor, at::Tensor> cholesky_ex_cuda(const at::Tensor& A) {
  check_cuda_tensor(A, "A");
  check_batched_square(A, "A");
  const c10::cuda::CUDAGuard guard(A.device());
  at::Tensor L = A.contiguous().clone();
  at::Tensor info = at::zeros({A.size(0)}, A.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(A.device().index()).stream();
  check_launch(cuda::potrf_batched(L.data_ptr(), to_dtype(L.scalar_type()), L.size(0), L.size(1), nullptr, 0,
                                   info.data_ptr<int32_t>(), stream),
               "cholesky_ex");
  return {L, info};
}

std::tuple<at::Tensor, at::Tensor> spd_solve_ex_cuda(const at::Tensor& A, const at::Tensor& B) {
  check_cuda_tensor(A, "A");
  check_batched_square(A, "A");
  check_rhs(A, B, "A");
  const c10::cuda::CUDAGuard guard(A.device());
  at::Tensor L = A.contiguous().clone();
  at::Tensor X = B.contiguous().clone();
  at::Tensor info = at::zeros({A.size(0)}, A.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(A.device().index()).stream();
  check_launch(cuda::potrf_batched(L.data_ptr(), to_dtype(L.scalar_type()), L.size(0), L.size(1), X.data_ptr(),
                                   X.size(2), info.data_ptr<int32_t>(), stream),
               "spd_solve_ex");
  return {X, info};
}

at::Tensor cholesky_solve_cuda(const at::Tensor& L, const at::Tensor& B) {
  check_cuda_tensor(L, "L");
  check_batched_square(L, "L");
  check_rhs(L, B, "L");
  const c10::cuda::CUDAGuard guard(L.device());
  const at::Tensor Lc = L.contiguous();
  at::Tensor X = B.contiguous().clone();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(L.device().index()).stream();
  check_launch(cuda::potrs_batched(Lc.data_ptr(), to_dtype(Lc.scalar_type()), Lc.size(0), Lc.size(1), X.data_ptr(),
                                   X.size(2), stream),
               "cholesky_solve");
  return X;
}

void lowrank_update_cuda(const at::Tensor& W, const at::Tensor& U, const at::Tensor& V, bool transpose,
                         const std::optional<at::Tensor>& compensation) {
  check_cuda_tensor(W, "W");
  auto [P0, Q0] = check_lowrank(W, U, V, transpose, compensation);
  if (W.size(0) == 0 || W.size(1) == 0) return;
  const c10::cuda::CUDAGuard guard(W.device());
  const at::ScalarType acc_type = W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor P = P0.to(acc_type).contiguous();
  const at::Tensor Q = Q0.to(acc_type).contiguous();
  // The kernel walks rows with a unit column stride; other layouts go through a contiguous copy.
  const bool w_rows = W.stride(1) == 1 && W.stride(0) >= W.size(1);
  at::Tensor Wc = w_rows ? W : W.contiguous();
  at::Tensor Cc;
  bool c_rows = true;
  if (compensation.has_value()) {
    c_rows = compensation->stride(1) == 1 && compensation->stride(0) >= compensation->size(1);
    Cc = c_rows ? *compensation : compensation->contiguous();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(W.device().index()).stream();
  check_launch(cuda::lowrank_update(Wc.data_ptr(), to_dtype(Wc.scalar_type()), Wc.size(0), Wc.size(1), Wc.stride(0),
                                    P.data_ptr(), Q.data_ptr(), to_dtype(acc_type), P.size(1),
                                    compensation.has_value() ? Cc.data_ptr() : nullptr,
                                    compensation.has_value() ? to_dtype(Cc.scalar_type()) : to_dtype(W.scalar_type()),
                                    compensation.has_value() ? Cc.stride(0) : 0, stream),
               "lowrank_update_");
  if (!w_rows) W.copy_(Wc);
  if (compensation.has_value() && !c_rows) compensation->copy_(Cc);
}

void cholesky_update_cuda(const at::Tensor& L, const at::Tensor& K) {
  check_cuda_tensor(L, "L");
  check_cholesky_update(L, K);
  const int64_t d = L.size(0);
  const int64_t k = K.size(1);
  if (d == 0 || k == 0) return;
  const c10::cuda::CUDAGuard guard(L.device());
  // K is overwritten by the kernels: always a private copy, in L's dtype.
  at::Tensor Kw = K.to(L.scalar_type()).contiguous().clone();
  const bool l_rows = L.stride(1) == 1 && L.stride(0) >= d;
  at::Tensor Lw = l_rows ? L : L.contiguous();
  at::Tensor work = at::empty({cuda::chol_update_workspace_elements()}, L.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(L.device().index()).stream();
  check_launch(cuda::chol_update(Lw.data_ptr(), to_dtype(Lw.scalar_type()), d, Lw.stride(0), Kw.data_ptr(), k,
                                 work.data_ptr(), stream),
               "cholesky_update_");
  if (!l_rows) L.copy_(Lw);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastedit, CUDA, m) {
  m.impl("syrk_accumulate_", &syrk_accumulate_cuda);
  m.impl("cholesky_ex", &cholesky_ex_cuda);
  m.impl("cholesky_solve", &cholesky_solve_cuda);
  m.impl("spd_solve_ex", &spd_solve_ex_cuda);
  m.impl("lowrank_update_", &lowrank_update_cuda);
  m.impl("cholesky_update_", &cholesky_update_cuda);
}

}  // namespace fastedit
