// Role: the float vectors of the epilogue on AVX-512 (16 floats): arithmetic, the dot product
// from counts, the 2- and 3-way interleaves of the pixel shuffle. Part of the avx512 build
// (isa_kernels.h); vectors_avx2.h has the same functions for 8 floats.

typedef __m512 vf_t;
static constexpr int kFloatsPerVector = 16;

BSR_TARGET static inline vf_t v_set1(float a) { return _mm512_set1_ps(a); }
BSR_TARGET static inline vf_t v_load(const float* p) { return _mm512_loadu_ps(p); }
BSR_TARGET static inline vf_t v_add(vf_t a, vf_t b) { return _mm512_add_ps(a, b); }
BSR_TARGET static inline vf_t v_sub(vf_t a, vf_t b) { return _mm512_sub_ps(a, b); }
BSR_TARGET static inline vf_t v_mul(vf_t a, vf_t b) { return _mm512_mul_ps(a, b); }
// (float)(kernel_volume - 2 counts[i]): the dot products of 16 counts.
BSR_TARGET static inline vf_t v_dot(const int32_t* counts, int32_t kernel_volume) {
  const __m512i ci = _mm512_loadu_si512((const void*)counts);
  return _mm512_maskz_cvtepi32_ps((__mmask16)0xffff,
                                  _mm512_sub_epi32(_mm512_set1_epi32(kernel_volume), _mm512_add_epi32(ci, ci)));
}
// v_dot of the lanes in `mask` only (the others are neither read nor meaningful).
BSR_TARGET static inline vf_t v_dot_masked(const int32_t* counts, int32_t kernel_volume, __mmask16 mask) {
  const __m512i ci = _mm512_maskz_loadu_epi32(mask, counts);
  return _mm512_maskz_cvtepi32_ps((__mmask16)0xffff,
                                  _mm512_sub_epi32(_mm512_set1_epi32(kernel_volume), _mm512_add_epi32(ci, ci)));
}
BSR_TARGET static inline vf_t v_ge0_else(vf_t t, vf_t other) {  // t >= 0 ? t : other
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_GE_OQ), other, t);
}
BSR_TARGET static inline void v_store(float* p, vf_t v) { _mm512_storeu_ps(p, v); }
BSR_TARGET static inline void v_stream(float* p, vf_t v) { _mm512_stream_ps(p, v); }

// Interleave two vectors: lo = a0 b0 a1 b1 ... a7 b7, hi = a8 b8 ... a15 b15.
BSR_TARGET static inline void v_zip2(vf_t a, vf_t b, vf_t& lo, vf_t& hi) {
  const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  lo = _mm512_permutex2var_ps(a, il, b);
  hi = _mm512_permutex2var_ps(a, ih, b);
}

// Index tables of the 3-way interleave: element e of output vector k is element m / 3 of input
// m % 3, m = 16 k + e.
struct Zip3Tables {
  int32_t idx[3][kFloatsPerVector];   // m / 3 (one-source permute of input 2)
  int32_t idx2[3][kFloatsPerVector];  // m / 3, + 16 where input 1 (two-source permute of inputs 0, 1)
  uint32_t mask2[3];                  // bit e where input 2
};
static constexpr Zip3Tables make_zip3() {
  Zip3Tables t{};
  for (int k = 0; k < 3; ++k)
    for (int e = 0; e < kFloatsPerVector; ++e) {
      const int m = kFloatsPerVector * k + e, src = m % 3;
      t.idx[k][e] = m / 3;
      t.idx2[k][e] = m / 3 + (src == 1 ? kFloatsPerVector : 0);
      if (src == 2) t.mask2[k] |= 1u << e;
    }
  return t;
}
alignas(64) static constexpr Zip3Tables kZip3 = make_zip3();

// Interleave three vectors y[0..3) into z[0..3): y0[0] y1[0] y2[0] y0[1] ...
BSR_TARGET static BSR_ALWAYS_INLINE void v_zip3(const vf_t* y, vf_t* z) {
#pragma GCC unroll 3
  for (int k = 0; k < 3; ++k) {
    const vf_t t = _mm512_permutex2var_ps(y[0], _mm512_load_si512((const void*)kZip3.idx2[k]), y[1]);
    z[k] = _mm512_mask_permutexvar_ps(t, (__mmask16)kZip3.mask2[k], _mm512_load_si512((const void*)kZip3.idx[k]),
                                      y[2]);
  }
}
