// Small device helpers shared by the kernels. torch builds CUDA sources with
// __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_BFLOAT16_CONVERSIONS__, so every conversion is explicit.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace fastedit {
namespace cuda {
namespace detail {

template <typename T>
struct Convert;

template <>
struct Convert<__half> {
  __device__ __forceinline__ static float to_float(__half v) { return __half2float(v); }
  // round to nearest even
  __device__ __forceinline__ static __half from_float(float v) { return __float2half_rn(v); }
  __device__ __forceinline__ static __half zero() { return __ushort_as_half(static_cast<unsigned short>(0)); }
};

template <>
struct Convert<__nv_bfloat16> {
  __device__ __forceinline__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }
  __device__ __forceinline__ static __nv_bfloat16 zero() {
    return __ushort_as_bfloat16(static_cast<unsigned short>(0));
  }
};

template <>
struct Convert<float> {
  __device__ __forceinline__ static float to_float(float v) { return v; }
  __device__ __forceinline__ static float from_float(float v) { return v; }
  __device__ __forceinline__ static float zero() { return 0.0f; }
};

template <>
struct Convert<double> {
  __device__ __forceinline__ static double to_float(double v) { return v; }
  __device__ __forceinline__ static double from_float(double v) { return v; }
  __device__ __forceinline__ static double zero() { return 0.0; }
};

// Value of v in the compute type C (float or double).
template <typename C, typename T>
__device__ __forceinline__ C to_compute(T v) {
  return static_cast<C>(Convert<T>::to_float(v));
}

// v (compute type C) rounded to the storage type T, to nearest even.
template <typename T, typename C>
__device__ __forceinline__ T from_compute(C v) {
  return Convert<T>::from_float(static_cast<decltype(Convert<T>::to_float(T()))>(v));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace detail
}  // namespace cuda
}  // namespace fastedit
