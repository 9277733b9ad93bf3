// Role: the float vectors of the epilogue on AVX2 (8 floats): arithmetic, the dot product from
// counts, the 2- and 3-way interleaves of the pixel shuffle. Part of the avx2 build
// (isa_kernels.h); vectors_avx512.h has the same functions for 16 floats.

typedef __m256 vf_t;
static constexpr int kFloatsPerVector = 8;

BSR_TARGET static inline vf_t v_set1(float a) { return _mm256_set1_ps(a); }
BSR_TARGET static inline vf_t v_load(const float* p) { return _mm256_loadu_ps(p); }
BSR_TARGET static inline vf_t v_add(vf_t a, vf_t b) { return _mm256_add_ps(a, b); }
BSR_TARGET static inline vf_t v_sub(vf_t a, vf_t b) { return _mm256_sub_ps(a, b); }
BSR_TARGET static inline vf_t v_mul(vf_t a, vf_t b) { return _mm256_mul_ps(a, b); }
// (float)(kernel_volume - 2 counts[i]): the dot products of 8 counts.
BSR_TARGET static inline vf_t v_dot(const int32_t* counts, int32_t kernel_volume) {
  const __m256i ci = _mm256_loadu_si256((const __m256i*)counts);
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_set1_epi32(kernel_volume), _mm256_add_epi32(ci, ci)));
}
BSR_TARGET static inline vf_t v_ge0_else(vf_t t, vf_t other) {  // t >= 0 ? t : other
  return _mm256_blendv_ps(other, t, _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ));
}
BSR_TARGET static inline void v_store(float* p, vf_t v) { _mm256_storeu_ps(p, v); }
BSR_TARGET static inline void v_stream(float* p, vf_t v) { _mm256_stream_ps(p, v); }

// Interleave two vectors: lo = a0 b0 a1 b1 a2 b2 a3 b3, hi = a4 b4 ... a7 b7.
BSR_TARGET static inline void v_zip2(vf_t a, vf_t b, vf_t& lo, vf_t& hi) {
  // unpack works within 128-bit halves: a0 b0 a1 b1 | a4 b4 a5 b5 and a2 b2 a3 b3 | a6 b6 a7 b7
  const vf_t l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);
  lo = _mm256_permute2f128_ps(l, h, 0x20);
  hi = _mm256_permute2f128_ps(l, h, 0x31);
}

// Index tables of the 3-way interleave: element e of output vector k is element m / 3 of input
// m % 3, m = 8 k + e.
struct Zip3Tables {
  int32_t idx[3][kFloatsPerVector];   // m / 3 (the permute of every input)
  int32_t sel1[3][kFloatsPerVector];  // -1 where input 1 (blend masks)
  int32_t sel2[3][kFloatsPerVector];  // -1 where input 2
};
static constexpr Zip3Tables make_zip3() {
  Zip3Tables t{};
  for (int k = 0; k < 3; ++k)
    for (int e = 0; e < kFloatsPerVector; ++e) {
      const int m = kFloatsPerVector * k + e, src = m % 3;
      t.idx[k][e] = m / 3;
      t.sel1[k][e] = src == 1 ? -1 : 0;
      t.sel2[k][e] = src == 2 ? -1 : 0;
    }
  return t;
}
alignas(64) static constexpr Zip3Tables kZip3 = make_zip3();

// Interleave three vectors y[0..3) into z[0..3): y0[0] y1[0] y2[0] y0[1] ...
BSR_TARGET static BSR_ALWAYS_INLINE void v_zip3(const vf_t* y, vf_t* z) {
#pragma GCC unroll 3
  for (int k = 0; k < 3; ++k) {
    const __m256i idx = _mm256_load_si256((const __m256i*)kZip3.idx[k]);
    const vf_t a = _mm256_permutevar8x32_ps(y[0], idx), b = _mm256_permutevar8x32_ps(y[1], idx),
               c = _mm256_permutevar8x32_ps(y[2], idx);
    const vf_t ab = _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_load_si256((const __m256i*)kZip3.sel1[k])));
    z[k] = _mm256_blendv_ps(ab, c, _mm256_castsi256_ps(_mm256_load_si256((const __m256i*)kZip3.sel2[k])));
  }
}
