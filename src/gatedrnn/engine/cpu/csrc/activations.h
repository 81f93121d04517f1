// The nonlinearities of the fused kernels, sigma(x), tanh(x) and relu(x), right for every input: sigma within 2.5 ulp
// of the exact value (as torch's own), tanh within 0.8, subnormal results included, the exact limits at +-inf, NaN
// passed on; in strict IEEE arithmetic.
//
// They are inline arithmetic with no calls and no branches, so a loop over a row of gates (a block loop below, or an
// `omp simd` loop that inlines them) vectorises to the machine's full width without -ffast-math. Under -ffast-math
// the compiler may assume that no value is infinite: 1 / (1 + exp(-x)) then became a reciprocal estimate refined by
// a Newton step, which turns exp(-x) = inf (x below about -89 in float) into 0 * inf = NaN.
//
//   sigma(x) = 1 / (1 + e) for x >= 0, e / (1 + e) for x < 0,   e = exp(-|x|) (so that sigma(x) comes out
//                                                               subnormal where it is, not 1 / (1 + inf) = 0)
//   tanh(x)  = sign(x) (|x| + |x|^3 R(x^2))      |x| < atanh(5/8), R a fitted polynomial (no cancellation near 0)
//            = sign(x) (1 - 2e / (1 + e))        otherwise, e = exp(-2|x|) <= 1/4, the roundings of 1 + e, of the
//                                                 quotient and of 1 - quotient compensated (about 0.7 ulp in all)
//
// exp(y) = 2^n e^r: n = round(y / ln2), r = y - n ln2 with ln2 in two parts (Cody and Waite: n ln2_hi is exact),
// |r| <= ln2 / 2, e^r by its Taylor polynomial (degree 7 in float, 13 in double: truncation under a tenth of an
// ulp), 2^n built from its exponent bits (as two factors, so that results below the smallest normal number come out
// subnormal, as the exact value rounds). Beyond the range of the type exp is 0 or inf, which sigma and tanh turn
// into their exact limits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace gatedrnn {

// The polynomials run in Estrin's scheme (pairs of terms, then pairs of pairs) rather than Horner's: the same
// operations in a third of the dependent steps, which is what bounds a loop of these over a row of gates.
template <typename T>
struct ActivationConstants;

template <>
struct ActivationConstants<float> {
  using Bits = uint32_t;
  static constexpr float kLog2e = 1.44269504088896341f;
  static constexpr float kLn2Hi = 0.693359375f;  // 9 significant bits: n * kLn2Hi is exact for |n| <= 2^15
  static constexpr float kLn2Lo = -2.12194440e-4f;
  static constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23: v + kShifter holds round(v) in its low bits
  static constexpr float kMin = -103.972077f;      // ln(2^-150): e^y rounds to 0 below
  static constexpr float kMinNormal = -87.3365479f;  // ln(2^-126)
  static constexpr float kMax = 88.7228391f;       // ln(FLT_MAX): e^y overflows above
  static constexpr Bits kBias = 127;
  static constexpr int kMantissaBits = 23;

  // e^r for |r| <= ln2 / 2: 1 + r + r^2 (1/2 + r/6 + ... + r^5/7!), the small terms first and 1 last (one rounding
  // of size 1/2 ulp).
  static inline float exp_reduced(float r) {
    const float r2 = r * r;
    const float p01 = 0.5f + r * (1.0f / 6), p23 = 1.0f / 24 + r * (1.0f / 120), p45 = 1.0f / 720 + r * (1.0f / 5040);
    const float p = p01 + r2 * (p23 + r2 * p45);
    return (p * r2 + r) + 1.0f;
  }

  // R(u) = (tanh(x) / x - 1) / u, u = x^2 <= atanh(5/8)^2: Chebyshev fit of degree 6, relative error of tanh under
  // 2.5e-10 (coefficients computed with mpmath at 50 digits).
  static inline float tanh_polynomial(float u) {
    const float u2 = u * u;
    const float q01 = -0.333333333f + 0.133333249f * u, q23 = -0.0539657201f + 0.0218405588f * u;
    const float q45 = -0.00870320022f + 0.00312260306f * u, q6 = -0.000718041446f;
    return q01 + u2 * (q23 + u2 * (q45 + u2 * q6));
  }
};

template <>
struct ActivationConstants<double> {
  using Bits = uint64_t;
  static constexpr double kLog2e = 1.44269504088896340736;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01;  // fdlibm's split: n * kLn2Hi exact for |n| <= 2^20
  static constexpr double kLn2Lo = 1.90821492927058770002e-10;
  static constexpr double kShifter = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kMin = -745.13321910194122;     // ln(2^-1075)
  static constexpr double kMinNormal = -708.39641853226410;  // ln(2^-1022)
  static constexpr double kMax = 709.78271289338397;      // ln(DBL_MAX)
  static constexpr Bits kBias = 1023;
  static constexpr int kMantissaBits = 52;

  // 1 + r + r^2 (1/2 + ... + r^11/13!).
  static inline double exp_reduced(double r) {
    const double r2 = r * r, r4 = r2 * r2;
    const double p01 = 1.0 / 2 + r * (1.0 / 6), p23 = 1.0 / 24 + r * (1.0 / 120), p45 = 1.0 / 720 + r * (1.0 / 5040);
    const double p67 = 1.0 / 40320 + r * (1.0 / 362880), p89 = 1.0 / 3628800 + r * (1.0 / 39916800);
    const double p1011 = 1.0 / 479001600 + r * (1.0 / 6227020800);
    const double p03 = p01 + r2 * p23, p47 = p45 + r2 * p67, p811 = p89 + r2 * p1011;
    const double p = p03 + r4 * (p47 + r4 * p811);
    return (p * r2 + r) + 1.0;
  }

  // Degree 12, relative error of tanh under 4e-18.
  static inline double tanh_polynomial(double u) {
    const double u2 = u * u, u4 = u2 * u2;
    const double q01 = -0.333333333333333326773 + 0.133333333333329205722 * u;
    const double q23 = -0.0539682539678225617496 + 0.0218694885183924435084 * u;
    const double q45 = -0.00886323514876598444836 + 0.00359212315168064150572 * u;
    const double q67 = -0.0014557940064230163869 + 0.000589802254608301135569 * u;
    const double q89 = -0.000238260894640608181404 + 0.0000945796201986146492502 * u;
    const double q1011 = -0.000034912924761242161964 + 0.0000103501705745455058583 * u;
    const double q12 = -0.00000173620211978278701597;
    const double q03 = q01 + u2 * q23, q47 = q45 + u2 * q67, q811 = q89 + u2 * q1011;
    return q03 + u4 * (q47 + u4 * (q811 + u4 * q12));
  }
};

// y = n ln2 + r: returns n (an integer-valued T) and r, and sets `shifted`, which holds n in its low bits.
template <typename T>
__attribute__((always_inline)) inline T reduce(T y, T& n, T& shifted) {
  using C = ActivationConstants<T>;
  shifted = y * C::kLog2e + C::kShifter;
  n = shifted - C::kShifter;  // round(y / ln2)
  return (y - n * C::kLn2Hi) - n * C::kLn2Lo;
}

// 2^n from the integer n held in the low bits of `shifted` (reduce), for n within the normal exponents: its exponent
// field is n + bias. Unsigned arithmetic is defined for any bits (a NaN's make garbage, but every result that uses
// the scale is NaN then anyway).
template <typename T>
__attribute__((always_inline)) inline T power_of_two(T shifted) {
  using C = ActivationConstants<T>;
  using Bits = typename C::Bits;
  const Bits n = __builtin_bit_cast(Bits, shifted) - __builtin_bit_cast(Bits, C::kShifter);
  return __builtin_bit_cast(T, Bits((n + C::kBias) << C::kMantissaBits));
}

// e^y for every y: inf above kMax, NaN for NaN; below the smallest normal number a subnormal, rounded once, and 0
// below kMin.
template <typename T>
__attribute__((always_inline)) inline T exp_clamped(T y) {
  using C = ActivationConstants<T>;
  using Bits = typename C::Bits;
  using Int = std::make_signed_t<Bits>;
  const T yc = y < C::kMin ? C::kMin : (y > C::kMax ? C::kMax : y);  // NaN stays NaN (both comparisons are false)
  T n, shifted;
  const T r = reduce(yc, n, shifted);  // n in [-150, 128] (float), [-1075, 1024] (double)
  // 2^n = 2^n1 2^n2 with n1 = floor(n / 2), n2 = n - n1, both normal numbers: e^r 2^n1 is exact, the last product
  // rounds once, into the subnormal range where e^y is that small.
  const Int n_int = Int(__builtin_bit_cast(Bits, shifted) - __builtin_bit_cast(Bits, C::kShifter));
  const Int n1 = n_int >> 1, n2 = n_int - n1;
  const T scale1 = __builtin_bit_cast(T, Bits(Bits(n1 + Int(C::kBias)) << C::kMantissaBits));
  const T scale2 = __builtin_bit_cast(T, Bits(Bits(n2 + Int(C::kBias)) << C::kMantissaBits));
  const T e = (C::exp_reduced(r) * scale1) * scale2;
  return y < C::kMin ? T(0) : (y > C::kMax ? std::numeric_limits<T>::infinity() : e);
}

// e^y for y <= 0 or NaN, 0 below the smallest normal number: what tanh needs (1 - 2e / (1 + e) is 1 there anyway),
// with one scale and no subnormal arithmetic.
template <typename T>
__attribute__((always_inline)) inline T exp_nonpositive(T y) {
  using C = ActivationConstants<T>;
  const T yc = y < C::kMinNormal ? C::kMinNormal : y;
  T n, shifted;
  const T r = reduce(yc, n, shifted);
  const T e = C::exp_reduced(r) * power_of_two(shifted);
  return y < C::kMinNormal ? T(0) : e;
}

template <typename T>
__attribute__((always_inline)) inline T sigmoid(T x) {
  static_assert(std::is_floating_point_v<T>);
  const T e = exp_clamped(-std::fabs(x));
  return (x < T(0) ? e : T(1)) / (T(1) + e);  // NaN: e is NaN
}

template <typename T>
__attribute__((always_inline)) inline T tanh(T x) {
  static_assert(std::is_floating_point_v<T>);
  using C = ActivationConstants<T>;
  const T a = std::fabs(x);
  const T u = a * a;
  const T near_zero = a + a * u * C::tanh_polynomial(u);
  // far = 1 - q - c, q = 2e / d rounded, d = 1 + e rounded: c corrects both roundings (d = 1 + e - dl exactly,
  // q d = 2e - rem exactly, so 2e / (1 + e) = q + (rem - q dl) / (1 + e), where 1 / (1 + e) ~ 1 - e + e^2 is close
  // enough for a correction of an ulp), and 1 - q is formed with its rounding error: one rounding at the end.
  const T e = exp_nonpositive(T(-2) * a);
  const T d = T(1) + e;
  const T dl = e - (d - T(1));
  const T q = (e + e) / d;
  const T rem = std::fma(-q, d, e + e);
  const T c = (rem - q * dl) * (T(1) - e + e * e);
  const T hi = T(1) - q;
  const T far = hi + (((T(1) - hi) - q) - c);
  return std::copysign(a < T(0.73316853439671352) ? near_zero : far, x);  // atanh(5/8); NaN takes `far`: NaN
}

// max(x, 0), passing NaN on as torch.relu does (std::max and `x > 0 ? x : 0` turn it into 0).
template <typename T>
__attribute__((always_inline)) inline T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// relu's derivative applied to g, from relu's output h: 0 where h <= 0, as torch's (NaN passes g on).
template <typename T>
__attribute__((always_inline)) inline T relu_backward(T g, T h) {
  return h <= T(0) ? T(0) : g;
}

// In place over a block of n values; the loops vectorise (`omp simd`: nothing aliases, nothing is reordered).
template <typename T>
inline void sigmoid_(T* a, int64_t n) {
  #pragma omp simd
  for (int64_t k = 0; k < n; ++k) a[k] = sigmoid(a[k]);
}

template <typename T>
inline void tanh_(T* a, int64_t n) {
  #pragma omp simd
  for (int64_t k = 0; k < n; ++k) a[k] = tanh(a[k]);
}

}  // namespace gatedrnn
