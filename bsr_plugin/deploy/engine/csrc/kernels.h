// Kernel bodies of the packed XNOR-popcount engine, compiled once per instruction set.
//
// engine.cpp includes this file three times (no include guard on purpose), each time inside
// its own namespace and with
//   BSR_TARGET   the function attribute of that ISA (empty for the portable scalar build,
//                __attribute__((target("avx2,popcnt,bmi2"))) or the AVX-512 one), and
//   BSR_ISA      0 = scalar, 1 = AVX2, 2 = AVX-512 (F, BW, VL, VPOPCNTDQ).
// Every function that runs per pixel carries BSR_TARGET, and everything here has internal
// linkage, so nothing compiled for AVX2/AVX-512 leaks into code that runs on a CPU without it.
// The layouts and the popcount schemes are described at the top of engine.cpp.

#ifndef BSR_ISA
#error "kernels.h is included by engine.cpp only"
#endif

// ---------------------------------------------------------------------------------------
// Bit helpers (portable)
// ---------------------------------------------------------------------------------------

// Transpose an 8x8 bit matrix held in a uint64: bit (8 * r + c) <-> bit (8 * c + r)
// (Hacker's Delight 7-3). Used by the NCHW packer: row r = channel, column c = pixel.
BSR_TARGET static inline uint64_t transpose8(uint64_t x) {
  uint64_t t;
  t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
  x = x ^ t ^ (t << 28);
  return x;
}

// Sign bits of 8 consecutive floats (bit i = src[i] - thr >= 0).
template <bool THR>
BSR_TARGET static inline uint32_t sign_mask8(const float* src, float thr) {
#if BSR_ISA >= 1
  __m256 v = _mm256_loadu_ps(src);
  if (THR) v = _mm256_sub_ps(v, _mm256_set1_ps(thr));
  return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ));
#else
  uint32_t m = 0;
  for (int i = 0; i < 8; ++i) m |= (uint32_t)((THR ? src[i] - thr : src[i]) >= 0.0f) << i;
  return m;
#endif
}

// Sign bits of n <= 64 consecutive channels (each with its own threshold): one packed word.
template <bool THR>
BSR_TARGET static inline uint64_t sign_word(const float* src, const float* thr, int n) {
  uint64_t w = 0;
  int c = 0;
#if BSR_ISA == 2
  for (; c + 16 <= n; c += 16) {
    __m512 v = _mm512_loadu_ps(src + c);
    if (THR) v = _mm512_sub_ps(v, _mm512_loadu_ps(thr + c));
    w |= (uint64_t)_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ) << c;
  }
  if (c < n) {  // masked tail: lanes beyond n are neither read nor set
    const __mmask16 k = (__mmask16)((1u << (n - c)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(k, src + c);
    if (THR) v = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(k, thr + c));
    w |= (uint64_t)_mm512_mask_cmp_ps_mask(k, v, _mm512_setzero_ps(), _CMP_GE_OQ) << c;
  }
  return w;
#else
#if BSR_ISA == 1
  for (; c + 8 <= n; c += 8) {
    __m256 v = _mm256_loadu_ps(src + c);
    if (THR) v = _mm256_sub_ps(v, _mm256_loadu_ps(thr + c));
    w |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ)) << c;
  }
#endif
  for (; c < n; ++c) w |= (uint64_t)((THR ? src[c] - thr[c] : src[c]) >= 0.0f) << c;
  return w;
#endif
}

// ---------------------------------------------------------------------------------------
// Packing: sign and pack in one pass, into the padded NHWC words
// ---------------------------------------------------------------------------------------

// NCHW source, one group of 8 channels g (= byte g % 8 of word g / 8, i.e. byte g of a pixel's
// CW words) of one row: per 8 (AVX-512: 16) pixels, the sign movemasks of the 8 channels' pixel
// runs form an 8 x 8 bit matrix (byte j = channel j, bit p = pixel p); one bit-matrix transpose
// gives byte p = pixel p's 8 channel bits. `src` = channel 8 g of the row, `out` = byte g of
// pixel 0, pixel stride pix_bytes.
template <bool THR>
BSR_TARGET static void pack_group_nchw(const float* src, int ncg, int64_t HW, int64_t W, const float* tg,
                                       unsigned char* out, int64_t pix_bytes) {
  int64_t px = 0;
#if BSR_ISA == 2
  for (; px + 16 <= W; px += 16) {
    uint64_t lo = 0, hi = 0;
    for (int j = 0; j < ncg; ++j) {
      __m512 v = _mm512_loadu_ps(src + j * HW + px);
      if (THR) v = _mm512_sub_ps(v, _mm512_set1_ps(tg[j]));
      const uint32_t k = (uint32_t)_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
      lo |= (uint64_t)(k & 0xffu) << (8 * j);
      hi |= (uint64_t)(k >> 8) << (8 * j);
    }
    lo = transpose8(lo);
    hi = transpose8(hi);
    for (int p = 0; p < 8; ++p) {
      out[(px + p) * pix_bytes] = (unsigned char)(lo >> (8 * p));
      out[(px + 8 + p) * pix_bytes] = (unsigned char)(hi >> (8 * p));
    }
  }
#endif
  for (; px + 8 <= W; px += 8) {
    uint64_t m = 0;
    for (int j = 0; j < ncg; ++j) m |= (uint64_t)sign_mask8<THR>(src + j * HW + px, THR ? tg[j] : 0.0f) << (8 * j);
    m = transpose8(m);
    for (int p = 0; p < 8; ++p) out[(px + p) * pix_bytes] = (unsigned char)(m >> (8 * p));
  }
  for (; px < W; ++px) {  // row tail: bit by bit
    unsigned b = 0;
    for (int j = 0; j < ncg; ++j) {
      const float v = src[j * HW + px];
      b |= (unsigned)((THR ? v - tg[j] : v) >= 0.0f) << j;
    }
    out[px * pix_bytes] = (unsigned char)b;
  }
}

// NCHW source, rows y0..y0+nrows of image xn into the packed rows `row0` (stride row_words,
// pointing at the first unpadded pixel). Channel group by channel group over a band of rows, so
// each of the 8 input streams runs along nrows * W contiguous floats (prefetch friendly) while
// the band's packed rows stay in L1.
template <bool THR>
BSR_TARGET static void pack_band_nchw(const float* xn, int64_t C, int64_t HW, int64_t W, int64_t y0, int64_t nrows,
                                      const float* thr, uint64_t* row0, int64_t row_words, int64_t CW) {
  const int64_t ngroups = (C + 7) / 8, pix_bytes = CW * 8;
  if (ngroups < pix_bytes)  // bytes of groups beyond C are never written below: zero them
    for (int64_t r = 0; r < nrows; ++r) {
      unsigned char* bytes = reinterpret_cast<unsigned char*>(row0 + r * row_words);
      for (int64_t px = 0; px < W; ++px)
        for (int64_t g = ngroups; g < pix_bytes; ++g) bytes[px * pix_bytes + g] = 0;
    }
  for (int64_t g = 0; g < ngroups; ++g) {
    const int ncg = (int)(C - 8 * g < 8 ? C - 8 * g : 8);
    for (int64_t r = 0; r < nrows; ++r)
      pack_group_nchw<THR>(xn + 8 * g * HW + (y0 + r) * W, ncg, HW, W, THR ? thr + 8 * g : nullptr,
                           reinterpret_cast<unsigned char*>(row0 + r * row_words) + g, pix_bytes);
  }
}

// NHWC source: a pixel's channels are contiguous, so each word is a movemask (AVX-512:
// compare-into-mask) of up to 64 consecutive channels.
template <bool THR>
BSR_TARGET static void pack_row_nhwc(const float* xrow, int64_t C, int64_t W, const float* thr, uint64_t* row,
                                     int64_t CW) {
  for (int64_t px = 0; px < W; ++px) {
    const float* src = xrow + px * C;
    for (int64_t cw = 0; cw < CW; ++cw) {
      const int64_t c0 = cw * 64;
      const int nc = (int)(C - c0 < 64 ? C - c0 : 64);
      row[px * CW + cw] = sign_word<THR>(src + c0, THR ? thr + c0 : nullptr, nc);
    }
  }
}

// Rows [begin, end) of the packed, padded input (row r = image r / Hp, padded row r % Hp).
// Padding pixels hold all valid lanes set (sign(0) = +1) and zero lanes beyond C.
BSR_TARGET static void pack_rows(const PackParams& pp, int64_t begin, int64_t end) {
  const int64_t CW = pp.CW, Wp = pp.Wp, H = pp.H, W = pp.W, C = pp.C, row_words = Wp * CW;
  for (int64_t r = begin; r < end;) {
    const int64_t n = r / pp.Hp, y = r % pp.Hp - pp.pt;
    uint64_t* row = pp.out + r * row_words;
    if (y < 0 || y >= H) {  // a padding row
      for (int64_t i = 0; i < row_words; ++i) row[i] = lane_mask(C, i % CW);
      ++r;
      continue;
    }
    // a band of image rows y .. y + nrows - 1 (same image, all inside [begin, end))
    int64_t nrows = H - y < end - r ? H - y : end - r;
    if (nrows > 8) nrows = 8;
    for (int64_t b = 0; b < nrows; ++b) {
      uint64_t* rb = row + b * row_words;
      for (int64_t i = 0; i < pp.pl * CW; ++i) rb[i] = lane_mask(C, i % CW);
      for (int64_t i = (pp.pl + W) * CW; i < row_words; ++i) rb[i] = lane_mask(C, i % CW);
    }
    uint64_t* dst = row + pp.pl * CW;
    if (pp.nhwc) {
      for (int64_t b = 0; b < nrows; ++b) {
        const float* src = pp.x + (n * H + y + b) * W * C;
        if (pp.thr) pack_row_nhwc<true>(src, C, W, pp.thr, dst + b * row_words, CW);
        else pack_row_nhwc<false>(src, C, W, nullptr, dst + b * row_words, CW);
      }
    } else {
      const float* xn = pp.x + n * C * H * W;
      if (pp.thr) pack_band_nchw<true>(xn, C, H * W, W, y, nrows, pp.thr, dst, row_words, CW);
      else pack_band_nchw<false>(xn, C, H * W, W, y, nrows, nullptr, dst, row_words, CW);
    }
    r += nrows;
  }
}

// ---------------------------------------------------------------------------------------
// Weights: [O][T] packed words (T = KH * KW * CW steps) -> the blocked layout of this ISA,
// [T][Opad / LANES][BLOCK_WORDS]: for every step the words of all output channels are
// contiguous, LANES channels per block; lanes >= O are zero (their counts are discarded).
//   scalar : LANES 4, block = 4 words
//   AVX2   : LANES 4, block = 4 low nibbles | 4 high nibbles (each word & 0x0f.., (w >> 4) & 0x0f..)
//   AVX-512: LANES 8, block = 8 words
// ---------------------------------------------------------------------------------------
// IN_WORDS: words per packed input word in the micro-kernel's input (AVX2: nibble-split pairs).
#if BSR_ISA == 2
static constexpr int LANES = 8, BLOCK_WORDS = 8, IN_WORDS = 1;
static constexpr int PMAX = BSR_AVX512_P, OBMAX = BSR_AVX512_OB;  // default tile 4 pixels x 4 x 8 channels
#elif BSR_ISA == 1
static constexpr int LANES = 4, BLOCK_WORDS = 8, IN_WORDS = 2;
static constexpr int PMAX = BSR_AVX2_P, OBMAX = BSR_AVX2_OB;  // default tile 3 pixels x 2 x 4 channels
#else
static constexpr int LANES = 4, BLOCK_WORDS = 4, IN_WORDS = 1;
static constexpr int PMAX = 2, OBMAX = 2;
#endif

// AVX2 (IN_WORDS == 2; not called otherwise): the micro-kernel's input from packed words
// [i0, i1), each word w as the pair (w & 0x0f.., (w >> 4) & 0x0f..).
BSR_TARGET static void expand_input(const uint64_t* xp, int64_t i0, int64_t i1, uint64_t* out) {
  for (int64_t i = i0; i < i1; ++i) {
    out[2 * i] = xp[i] & 0x0F0F0F0F0F0F0F0Full;
    out[2 * i + 1] = (xp[i] >> 4) & 0x0F0F0F0F0F0F0F0Full;
  }
}

static int64_t blocked_weight_words(int64_t Opad, int64_t T) { return T * (Opad / LANES) * BLOCK_WORDS; }

static void repack_weights(const uint64_t* wp, int64_t O, int64_t T, int64_t Opad, uint64_t* wb) {
  const int64_t NB = Opad / LANES;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < NB; ++b) {
      uint64_t* blk = wb + (t * NB + b) * BLOCK_WORDS;
      for (int l = 0; l < LANES; ++l) {
        const int64_t o = b * LANES + l;
        const uint64_t w = o < O ? wp[o * T + t] : 0;
#if BSR_ISA == 1
        blk[l] = w & 0x0F0F0F0F0F0F0F0Full;
        blk[LANES + l] = (w >> 4) & 0x0F0F0F0F0F0F0F0Full;
#else
        blk[l] = w;
#endif
      }
    }
}

// ---------------------------------------------------------------------------------------
// Micro-kernel: popcount(a XOR w) summed over the T steps for P output pixels x OB blocks of
// LANES output channels. `a` points at pixel 0's window origin in the packed input, pixel p
// at a + p * pstep, step t at + offs[t]; `w` at the first block of the group for step 0
// (step t at + t * wstep). Writes the P x (OB * LANES) int32 counts to cnt (row stride cs).
// ---------------------------------------------------------------------------------------
#if BSR_ISA == 2
// AVX-512: lanes = 8 output channels; the pixel's input word is broadcast and XORed with 8
// weight words; VPOPCNTQ counts each lane and VPADDQ accumulates in 64-bit lanes, so the
// count of (pixel, channel) ends in its own lane: no horizontal reduction.
template <int P, int OB>
BSR_TARGET static inline void micro_kernel(const uint64_t* a, int64_t pstep, const int64_t* offs, int64_t T,
                                           const uint64_t* w, int64_t wstep, int32_t* cnt, int64_t cs) {
  __m512i acc[P][OB];
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) acc[p][b] = _mm512_setzero_si512();
  for (int64_t t = 0; t < T; ++t) {
    const uint64_t* at = a + offs[t];
    const uint64_t* wt = w + t * wstep;
    __m512i wv[OB];
#pragma GCC unroll 8
    for (int b = 0; b < OB; ++b) wv[b] = _mm512_loadu_si512((const void*)(wt + b * BLOCK_WORDS));
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      const __m512i av = _mm512_set1_epi64((long long)at[p * pstep]);
#pragma GCC unroll 8
      for (int b = 0; b < OB; ++b)
        acc[p][b] = _mm512_add_epi64(acc[p][b], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[b])));
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
    for (int b = 0; b < OB; ++b)
      _mm256_storeu_si256((__m256i*)(cnt + p * cs + b * LANES), _mm512_maskz_cvtepi64_epi32((__mmask8)0xff, acc[p][b]));
}
#elif BSR_ISA == 1
// AVX2: lanes = 4 output channels. popcount by nibble lookup (VPSHUFB). The packed input is
// pre-split once per call into (low nibbles, high nibbles) word pairs (IN_WORDS = 2, see
// expand_input) and the weights are stored pre-split, so lo(a ^ w) = lo(a) ^ lo(w) costs one
// XOR and a 4-word popcount is 2 XOR + 2 VPSHUFB + 2 byte adds. Byte counts (<= 8 per byte
// and step) accumulate for up to 31 steps (<= 248), then VPSADBW sums each lane's 8 bytes.
template <int P, int OB>
BSR_TARGET static inline void micro_kernel(const uint64_t* a, int64_t pstep, const int64_t* offs, int64_t T,
                                           const uint64_t* w, int64_t wstep, int32_t* cnt, int64_t cs) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  for (int64_t t0 = 0; t0 < T; t0 += 31) {
    const int64_t t1 = T - t0 < 31 ? T : t0 + 31;
    __m256i acc[P][OB];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
      for (int b = 0; b < OB; ++b) acc[p][b] = _mm256_setzero_si256();
    for (int64_t t = t0; t < t1; ++t) {
      const uint64_t* at = a + offs[t];
      const uint64_t* wt = w + t * wstep;
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        const __m256i lo = _mm256_set1_epi64x((long long)at[p * pstep]);
        const __m256i hi = _mm256_set1_epi64x((long long)at[p * pstep + 1]);
#pragma GCC unroll 8
        for (int b = 0; b < OB; ++b) {
          const __m256i wl = _mm256_loadu_si256((const __m256i*)(wt + b * BLOCK_WORDS));
          const __m256i wh = _mm256_loadu_si256((const __m256i*)(wt + b * BLOCK_WORDS + LANES));
          const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(lo, wl)),
                                            _mm256_shuffle_epi8(lut, _mm256_xor_si256(hi, wh)));
          acc[p][b] = _mm256_add_epi8(acc[p][b], c);
        }
      }
    }
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 8
      for (int b = 0; b < OB; ++b) {
        const __m256i s = _mm256_sad_epu8(acc[p][b], _mm256_setzero_si256());  // 4 x u64 counts
        const __m128i c4 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(s, even));
        int32_t* dst = cnt + p * cs + b * LANES;
        if (t0 == 0) _mm_storeu_si128((__m128i*)dst, c4);
        else _mm_storeu_si128((__m128i*)dst, _mm_add_epi32(_mm_loadu_si128((const __m128i*)dst), c4));
      }
  }
}
#else
// Portable: __builtin_popcountll per word.
template <int P, int OB>
BSR_TARGET static inline void micro_kernel(const uint64_t* a, int64_t pstep, const int64_t* offs, int64_t T,
                                           const uint64_t* w, int64_t wstep, int32_t* cnt, int64_t cs) {
  constexpr int L = OB * LANES;
  int64_t acc[P][L];
  for (int p = 0; p < P; ++p)
    for (int l = 0; l < L; ++l) acc[p][l] = 0;
  for (int64_t t = 0; t < T; ++t) {
    const uint64_t* at = a + offs[t];
    const uint64_t* wt = w + t * wstep;
    for (int p = 0; p < P; ++p) {
      const uint64_t av = at[p * pstep];
      for (int l = 0; l < L; ++l) acc[p][l] += __builtin_popcountll(av ^ wt[l]);
    }
  }
  for (int p = 0; p < P; ++p)
    for (int l = 0; l < L; ++l) cnt[p * cs + l] = (int32_t)acc[p][l];
}
#endif

template <int P>
BSR_TARGET static inline void micro_dispatch(int ob, const uint64_t* a, int64_t pstep, const int64_t* offs, int64_t T,
                                             const uint64_t* w, int64_t wstep, int32_t* cnt, int64_t cs) {
  static_assert(OBMAX <= 8, "extend the switch");
  switch (ob) {
#define BSR_CASE(k) \
    case k: micro_kernel<P, (OBMAX >= k ? k : 1)>(a, pstep, offs, T, w, wstep, cnt, cs); break;
    BSR_CASE(1) BSR_CASE(2) BSR_CASE(3) BSR_CASE(4) BSR_CASE(5) BSR_CASE(6) BSR_CASE(7)
#undef BSR_CASE
    default: micro_kernel<P, OBMAX>(a, pstep, offs, T, w, wstep, cnt, cs); break;
  }
}

// ---------------------------------------------------------------------------------------
// Epilogues
// ---------------------------------------------------------------------------------------

// dst[c][r] = src[r][c] for an 8 x 8 int32 block.
BSR_TARGET static inline void transpose8x8_i32(const int32_t* src, int64_t ss, int32_t* dst, int64_t ds) {
#if BSR_ISA >= 1
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)(src + i * ss)));
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    r[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
    t[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
  }
  for (int i = 0; i < 8; ++i) _mm256_storeu_si256((__m256i*)(dst + i * ds), _mm256_castps_si256(t[i]));
#else
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) dst[j * ds + i] = src[i * ss + j];
#endif
}

// Vector helpers of the epilogue (VW floats per vector).
#if BSR_ISA == 2
typedef __m512 vf_t;
static constexpr int VW = 16;
BSR_TARGET static inline vf_t v_set1(float a) { return _mm512_set1_ps(a); }
BSR_TARGET static inline vf_t v_load(const float* p) { return _mm512_loadu_ps(p); }
BSR_TARGET static inline vf_t v_add(vf_t a, vf_t b) { return _mm512_add_ps(a, b); }
BSR_TARGET static inline vf_t v_sub(vf_t a, vf_t b) { return _mm512_sub_ps(a, b); }
BSR_TARGET static inline vf_t v_mul(vf_t a, vf_t b) { return _mm512_mul_ps(a, b); }
BSR_TARGET static inline vf_t v_dot(const int32_t* c, int32_t kv) {  // (float)(kv - 2 c)
  const __m512i ci = _mm512_loadu_si512((const void*)c);
  return _mm512_maskz_cvtepi32_ps((__mmask16)0xffff, _mm512_sub_epi32(_mm512_set1_epi32(kv), _mm512_add_epi32(ci, ci)));
}
BSR_TARGET static inline vf_t v_dot_masked(const int32_t* c, int32_t kv, __mmask16 m) {  // lanes in m only read
  const __m512i ci = _mm512_maskz_loadu_epi32(m, c);
  return _mm512_maskz_cvtepi32_ps((__mmask16)0xffff, _mm512_sub_epi32(_mm512_set1_epi32(kv), _mm512_add_epi32(ci, ci)));
}
BSR_TARGET static inline vf_t v_ge0_else(vf_t t, vf_t other) {  // t >= 0 ? t : other
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_GE_OQ), other, t);
}
BSR_TARGET static inline void v_store(float* p, vf_t v) { _mm512_storeu_ps(p, v); }
BSR_TARGET static inline void v_stream(float* p, vf_t v) { _mm512_stream_ps(p, v); }
#elif BSR_ISA == 1
typedef __m256 vf_t;
static constexpr int VW = 8;
BSR_TARGET static inline vf_t v_set1(float a) { return _mm256_set1_ps(a); }
BSR_TARGET static inline vf_t v_load(const float* p) { return _mm256_loadu_ps(p); }
BSR_TARGET static inline vf_t v_add(vf_t a, vf_t b) { return _mm256_add_ps(a, b); }
BSR_TARGET static inline vf_t v_sub(vf_t a, vf_t b) { return _mm256_sub_ps(a, b); }
BSR_TARGET static inline vf_t v_mul(vf_t a, vf_t b) { return _mm256_mul_ps(a, b); }
BSR_TARGET static inline vf_t v_dot(const int32_t* c, int32_t kv) {
  const __m256i ci = _mm256_loadu_si256((const __m256i*)c);
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_set1_epi32(kv), _mm256_add_epi32(ci, ci)));
}
BSR_TARGET static inline vf_t v_ge0_else(vf_t t, vf_t other) {
  return _mm256_blendv_ps(other, t, _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ));
}
BSR_TARGET static inline void v_store(float* p, vf_t v) { _mm256_storeu_ps(p, v); }
BSR_TARGET static inline void v_stream(float* p, vf_t v) { _mm256_stream_ps(p, v); }
#endif

#if BSR_ISA >= 1
// Index tables of the 3-way interleave (pixel shuffle r = 3): element e of output vector k is
// element m / 3 of input m % 3, m = VW k + e.
struct Zip3Tables {
  int32_t idx[3][VW];   // m / 3
  int32_t idx2[3][VW];  // m / 3 + VW where input 1 (AVX-512 two-source permute of inputs 0, 1)
  int32_t sel1[3][VW];  // -1 where input 1 (AVX2 blend masks)
  int32_t sel2[3][VW];  // -1 where input 2
  uint32_t mask2[3];    // bit e where input 2 (AVX-512)
};
static constexpr Zip3Tables make_zip3() {
  Zip3Tables t{};
  for (int k = 0; k < 3; ++k)
    for (int e = 0; e < VW; ++e) {
      const int m = VW * k + e, src = m % 3;
      t.idx[k][e] = m / 3;
      t.idx2[k][e] = m / 3 + (src == 1 ? VW : 0);
      t.sel1[k][e] = src == 1 ? -1 : 0;
      t.sel2[k][e] = src == 2 ? -1 : 0;
      if (src == 2) t.mask2[k] |= 1u << e;
    }
  return t;
}
alignas(64) static constexpr Zip3Tables kZip3 = make_zip3();

// Interleave two vectors: lo = a0 b0 a1 b1 ..., hi = the second halves' pairs.
BSR_TARGET static inline void v_zip2(vf_t a, vf_t b, vf_t& lo, vf_t& hi) {
#if BSR_ISA == 2
  const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  lo = _mm512_permutex2var_ps(a, il, b);
  hi = _mm512_permutex2var_ps(a, ih, b);
#else
  // unpack works within 128-bit halves: a0 b0 a1 b1 | a4 b4 a5 b5 and a2 b2 a3 b3 | a6 b6 a7 b7
  const vf_t l = _mm256_unpacklo_ps(a, b), h = _mm256_unpackhi_ps(a, b);
  lo = _mm256_permute2f128_ps(l, h, 0x20);
  hi = _mm256_permute2f128_ps(l, h, 0x31);
#endif
}

// Interleave R = 2, 3, 4 vectors y[j] (VW values of channel j each) into z[0..R): the R VW
// values y0[0] y1[0] .. y{R-1}[0] y0[1] .. in order. R = 4 is two levels of R = 2.
template <int R>
BSR_TARGET static inline void v_zip(const vf_t* y, vf_t* z) {
  static_assert(R >= 2 && R <= 4, "v_zip: R = 2, 3 or 4");
  if constexpr (R == 2) {
    v_zip2(y[0], y[1], z[0], z[1]);
  } else if constexpr (R == 4) {
    vf_t p0, p1, q0, q1;
    v_zip2(y[0], y[2], p0, p1);  // y0 y2 pairs
    v_zip2(y[1], y[3], q0, q1);  // y1 y3 pairs
    v_zip2(p0, q0, z[0], z[1]);
    v_zip2(p1, q1, z[2], z[3]);
  } else {
#pragma GCC unroll 3
    for (int k = 0; k < 3; ++k) {
#if BSR_ISA == 2
      const vf_t t = _mm512_permutex2var_ps(y[0], _mm512_load_si512((const void*)kZip3.idx2[k]), y[1]);
      z[k] = _mm512_mask_permutexvar_ps(t, (__mmask16)kZip3.mask2[k], _mm512_load_si512((const void*)kZip3.idx[k]),
                                        y[2]);
#else
      const __m256i idx = _mm256_load_si256((const __m256i*)kZip3.idx[k]);
      const vf_t a = _mm256_permutevar8x32_ps(y[0], idx), b = _mm256_permutevar8x32_ps(y[1], idx),
                 c = _mm256_permutevar8x32_ps(y[2], idx);
      const vf_t ab = _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_load_si256((const __m256i*)kZip3.sel1[k])));
      z[k] = _mm256_blendv_ps(ab, c, _mm256_castsi256_ps(_mm256_load_si256((const __m256i*)kZip3.sel2[k])));
#endif
    }
  }
}
#endif

// One output value: y = scale * (K - 2 cnt) + bias, then RPReLU, then + shortcut (the same
// float operations, in the same order, as the simulation; the vector paths match it bit for bit).
template <bool RP, bool SC>
BSR_TARGET static inline float epi1(int32_t c, int32_t kv, float s, float b, float si, float sl, float so,
                                    const float* sc) {
  float y = s * (float)(kv - 2 * c) + b;
  if (RP) {
    float t = y - si;
    t = t >= 0.0f ? t : sl * t;
    y = t + so;
  }
  if (SC) y = y + *sc;
  return y;
}

#if BSR_ISA >= 1
// VW outputs of one channel: epi1 on vectors (the same operations in the same order), from the
// dot products d (v_dot) and, when SC, the shortcut values scv.
template <bool RP, bool SC>
BSR_TARGET static inline vf_t epi_vec(vf_t d, vf_t s, vf_t b, vf_t si, vf_t sl, vf_t so, vf_t scv) {
  vf_t y = v_add(v_mul(s, d), b);
  if (RP) {
    const vf_t t = v_sub(y, si);
    y = v_add(v_ge0_else(t, v_mul(sl, t)), so);
  }
  if (SC) y = v_add(y, scv);
  return y;
}
#endif

// One output row segment of one channel (NCHW): per-channel scalars, vectors over pixels.
// NT: streaming stores (the output bypasses the caches; for outputs far larger than them).
// sc (the shortcut row) is only read, and only offset, when SC.
template <bool RP, bool SC, bool NT>
BSR_TARGET static void epilogue_row(const int32_t* __restrict c, int64_t n, float* __restrict dst, int32_t kv,
                                    float s, float b, float si, float sl, float so, const float* __restrict sc) {
#define BSR_EPI1(p) epi1<RP, SC>(c[p], kv, s, b, si, sl, so, SC ? sc + (p) : sc)
  int64_t p = 0;
#if BSR_ISA >= 1
  if (NT)  // scalar head up to the vector alignment streaming stores need
    for (; p < n && (reinterpret_cast<uintptr_t>(dst + p) % (VW * sizeof(float))) != 0; ++p) dst[p] = BSR_EPI1(p);
  const vf_t vs = v_set1(s), vb = v_set1(b), vsi = v_set1(si), vsl = v_set1(sl), vso = v_set1(so);
  for (; p + VW <= n; p += VW) {
    const vf_t y = epi_vec<RP, SC>(v_dot(c + p, kv), vs, vb, vsi, vsl, vso, SC ? v_load(sc + p) : vb);
    if (NT) v_stream(dst + p, y);
    else v_store(dst + p, y);
  }
#endif
  for (; p < n; ++p) dst[p] = BSR_EPI1(p);
#undef BSR_EPI1
}

// Pixel shuffle r = R (2, 3, 4; NCHW): the row segments of R consecutive channels interleaved,
// dst[R p + j] = channel j's output at pixel p, j < R. Channel j: counts c + j cs, parameters
// s[j], b[j] (si[j], sl[j], so[j] when RP), shortcut row sc[j] (when SC). Vectors over VW
// pixels of the R channels, zipped in registers into R contiguous output vectors; AVX-512 ends
// the row with one masked step (rows of fewer than VW pixels too: wide layers have 8-pixel
// tiles), the other ISAs with scalar code.
template <int R, bool RP, bool SC>
BSR_TARGET static inline void epi_pixel_zip(const int32_t* c, int64_t cs, int64_t p, float* dst, int32_t kv,
                                            const float* s, const float* b, const float* si, const float* sl,
                                            const float* so, const float* const* sc) {
  for (int j = 0; j < R; ++j)
    dst[R * p + j] = epi1<RP, SC>(c[j * cs + p], kv, s[j], b[j], RP ? si[j] : 0.f, RP ? sl[j] : 0.f,
                                  RP ? so[j] : 0.f, SC ? sc[j] + p : nullptr);
}

template <int R, bool RP, bool SC, bool NT>
BSR_TARGET static inline __attribute__((always_inline)) void epilogue_zip(
    const int32_t* c, int64_t cs, int64_t n, float* __restrict dst, int32_t kv, const float* s, const float* b,
    const float* si, const float* sl, const float* so, const float* const* sc) {
  int64_t p = 0;
#if BSR_ISA >= 1
  // streaming stores: scalar head up to their alignment (unless the row is shorter than a
  // vector: then it is one masked step of plain stores on AVX-512)
  if (NT && (BSR_ISA == 1 || n >= VW))
    for (; p < n && (reinterpret_cast<uintptr_t>(dst + R * p) % (VW * sizeof(float))) != 0; ++p)
      epi_pixel_zip<R, RP, SC>(c, cs, p, dst, kv, s, b, si, sl, so, sc);
  vf_t vs[R], vb[R], vsi[R], vsl[R], vso[R];
#pragma GCC unroll 4
  for (int j = 0; j < R; ++j) {
    vs[j] = v_set1(s[j]);
    vb[j] = v_set1(b[j]);
    vsi[j] = v_set1(RP ? si[j] : 0.f);
    vsl[j] = v_set1(RP ? sl[j] : 0.f);
    vso[j] = v_set1(RP ? so[j] : 0.f);
  }
  for (; p + VW <= n; p += VW) {
    vf_t y[R], z[R];
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j)
      y[j] = epi_vec<RP, SC>(v_dot(c + j * cs + p, kv), vs[j], vb[j], vsi[j], vsl[j], vso[j],
                             SC ? v_load(sc[j] + p) : vb[j]);
    v_zip<R>(y, z);
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) {
      if (NT) v_stream(dst + R * p + j * VW, z[j]);
      else v_store(dst + R * p + j * VW, z[j]);
    }
  }
#if BSR_ISA == 2
  if (p < n) {  // the last n - p < VW pixels: masked loads (lanes beyond n are neither read nor stored)
    const int64_t rem = n - p;
    const __mmask16 m = (__mmask16)((1u << rem) - 1u);
    vf_t y[R], z[R];
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j)
      y[j] = epi_vec<RP, SC>(v_dot_masked(c + j * cs + p, kv, m), vs[j], vb[j], vsi[j], vsl[j], vso[j],
                             SC ? _mm512_maskz_loadu_ps(m, sc[j] + p) : vb[j]);
    v_zip<R>(y, z);
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) {  // output values [j VW, (j + 1) VW) of the R rem valid ones
      const int64_t left = R * rem - j * VW;
      if (left <= 0) break;
      const __mmask16 mj = left >= VW ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
      _mm512_mask_storeu_ps(dst + R * p + j * VW, mj, z[j]);
    }
    p = n;
  }
#endif
#endif
  for (int j = 0; j < R; ++j) {  // scalar tail, one channel at a time
    const int32_t* cj = c + j * cs;
    const float sj = s[j], bj = b[j], sij = RP ? si[j] : 0.f, slj = RP ? sl[j] : 0.f, soj = RP ? so[j] : 0.f;
    for (int64_t q = p; q < n; ++q)
      dst[R * q + j] = epi1<RP, SC>(cj[q], kv, sj, bj, sij, slj, soj, SC ? sc[j] + q : nullptr);
  }
}

// One output pixel, `O` consecutive channels (NHWC): vectors over channels. s, b, si, sl, so,
// sc point at the first of them (si, sl, so only read when RP, sc when SC).
template <bool RP, bool SC, bool NT>
BSR_TARGET static void epilogue_pixel(const int32_t* __restrict c, int64_t O, float* __restrict dst, int32_t kv,
                                      const float* __restrict s, const float* __restrict b,
                                      const float* __restrict si, const float* __restrict sl,
                                      const float* __restrict so, const float* __restrict sc) {
  int64_t o = 0;
#define BSR_EPI1(o) \
  epi1<RP, SC>(c[o], kv, s[o], b[o], RP ? si[o] : 0.f, RP ? sl[o] : 0.f, RP ? so[o] : 0.f, SC ? sc + (o) : sc)
#if BSR_ISA >= 1
  if (NT)
    for (; o < O && (reinterpret_cast<uintptr_t>(dst + o) % (VW * sizeof(float))) != 0; ++o) dst[o] = BSR_EPI1(o);
  const vf_t zero = v_set1(0.f);
  for (; o + VW <= O; o += VW) {
    const vf_t y = epi_vec<RP, SC>(v_dot(c + o, kv), v_load(s + o), v_load(b + o), RP ? v_load(si + o) : zero,
                                   RP ? v_load(sl + o) : zero, RP ? v_load(so + o) : zero,
                                   SC ? v_load(sc + o) : zero);
    if (NT) v_stream(dst + o, y);
    else v_store(dst + o, y);
  }
#endif
  for (; o < O; ++o) dst[o] = BSR_EPI1(o);
#undef BSR_EPI1
}

template <bool NT>
BSR_TARGET static inline void epilogue_row_any(const int32_t* c, int64_t n, float* dst, int32_t kv,
                                               const ConvParams& cp, int64_t o, const float* sc) {
  const float s = cp.scale[o], b = cp.bias[o];
  if (cp.shift_in) {
    const float si = cp.shift_in[o], sl = cp.slope[o], so = cp.shift_out[o];
    if (sc) epilogue_row<true, true, NT>(c, n, dst, kv, s, b, si, sl, so, sc);
    else epilogue_row<true, false, NT>(c, n, dst, kv, s, b, si, sl, so, sc);
  } else {
    if (sc) epilogue_row<false, true, NT>(c, n, dst, kv, s, b, 0.f, 0.f, 0.f, sc);
    else epilogue_row<false, false, NT>(c, n, dst, kv, s, b, 0.f, 0.f, 0.f, sc);
  }
}

// Channels [o0, o0 + count) of one pixel (NHWC); sc points at channel o0's shortcut or is null.
template <bool NT>
BSR_TARGET static inline void epilogue_pixel_any(const int32_t* c, float* dst, const ConvParams& cp, const float* sc,
                                                 int64_t o0, int64_t count) {
  const float *s = cp.scale + o0, *b = cp.bias + o0;
  if (cp.shift_in) {
    const float *si = cp.shift_in + o0, *sl = cp.slope + o0, *so = cp.shift_out + o0;
    if (sc) epilogue_pixel<true, true, NT>(c, count, dst, cp.kv, s, b, si, sl, so, sc);
    else epilogue_pixel<true, false, NT>(c, count, dst, cp.kv, s, b, si, sl, so, sc);
  } else {
    if (sc) epilogue_pixel<false, true, NT>(c, count, dst, cp.kv, s, b, nullptr, nullptr, nullptr, sc);
    else epilogue_pixel<false, false, NT>(c, count, dst, cp.kv, s, b, nullptr, nullptr, nullptr, sc);
  }
}

// n contiguous floats from an L1 buffer to the output (NT: streaming stores after a scalar head
// up to their alignment).
template <bool NT>
BSR_TARGET static void store_row(const float* __restrict src, int64_t n, float* __restrict dst) {
  int64_t p = 0;
#if BSR_ISA >= 1
  if (NT) {
    for (; p < n && (reinterpret_cast<uintptr_t>(dst + p) % (VW * sizeof(float))) != 0; ++p) dst[p] = src[p];
    for (; p + VW <= n; p += VW) v_stream(dst + p, v_load(src + p));
  }
#endif
  if (p < n) std::memcpy(dst + p, src + p, (size_t)(n - p) * sizeof(float));
}

// The shortcut of output channel o for pixels [x0, x0 + np) of row oy, NCHW x: a pointer into x
// (identity, repeat) or the mean of k channels written to `tmp`. Output size == input size.
// (Always inlined: it runs once per channel and tile, and its callers know the shortcut mode.)
BSR_TARGET static inline __attribute__((always_inline)) const float* shortcut_row_nchw(
    const ConvParams& cp, int64_t n, int64_t oy, int64_t x0, int64_t np, int64_t o, float* __restrict tmp) {
  const int64_t HW = cp.Ho * cp.Wo;
  const float* xr = cp.x + n * cp.C * HW + oy * cp.Wo + x0;
  switch (cp.shortcut) {
    case SC_IDENTITY: return xr + o * HW;
    case SC_REPEAT: return xr + (o / cp.sc_k) * HW;
    case SC_MEAN: {
      const float* src = xr + o * cp.sc_k * HW;
      for (int64_t p = 0; p < np; ++p) tmp[p] = src[p];
      for (int64_t j = 1; j < cp.sc_k; ++j)
        for (int64_t p = 0; p < np; ++p) tmp[p] += src[j * HW + p];
      const float k = (float)cp.sc_k;
      for (int64_t p = 0; p < np; ++p) tmp[p] = tmp[p] / k;
      return tmp;
    }
    default: return nullptr;
  }
}

// The shortcut of one output pixel, all channels, NHWC x (xp = the pixel's C channels).
BSR_TARGET static const float* shortcut_pixel_nhwc(const ConvParams& cp, const float* xp, float* __restrict tmp) {
  switch (cp.shortcut) {
    case SC_IDENTITY: return xp;
    case SC_REPEAT: {
      const int64_t k = cp.sc_k;
      for (int64_t c = 0; c < cp.C; ++c)
        for (int64_t j = 0; j < k; ++j) tmp[c * k + j] = xp[c];
      return tmp;
    }
    case SC_MEAN: {
      const int64_t k = cp.sc_k;
      const float kf = (float)k;
      for (int64_t o = 0; o < cp.O; ++o) {
        float s = xp[o * k];
        for (int64_t j = 1; j < k; ++j) s += xp[o * k + j];
        tmp[o] = s / kf;
      }
      return tmp;
    }
    default: return nullptr;
  }
}

// The shortcut of one output pixel in the permuted channel order of a pixel-shuffled NHWC
// output (see binary_conv2d): channel q takes input channel sc_src[q] (identity, repeat) or the
// mean of sc_k channels from sc_src[q] on, with the operations of shortcut_pixel_nhwc.
BSR_TARGET static const float* shortcut_pixel_shuffled(const ConvParams& cp, const float* xp, float* __restrict tmp) {
  const int64_t* src = cp.sc_src;
  if (cp.shortcut == SC_MEAN) {
    const int64_t k = cp.sc_k;
    const float kf = (float)k;
    for (int64_t q = 0; q < cp.O; ++q) {
      const float* g = xp + src[q];
      float s = g[0];
      for (int64_t j = 1; j < k; ++j) s += g[j];
      tmp[q] = s / kf;
    }
  } else {
    for (int64_t q = 0; q < cp.O; ++q) tmp[q] = xp[src[q]];
  }
  return tmp;
}

// One run of finish_zip: conv channels o .. o + R - 1 into dst (shortcut rows from xr, the
// input's row at channel 0; repeat: o = q k + qr).
template <int R, bool RP, int SCM, bool NT>
BSR_TARGET static inline __attribute__((always_inline)) void zip_run(const ConvParams& cp, int64_t n, int64_t oy,
                                                                     int64_t x0, int64_t np, const int32_t* cntT,
                                                                     int64_t npad, float* tmp, const float* xr,
                                                                     int64_t o, int64_t q, int64_t qr, float* dst) {
  const float* sc[R] = {};
  if constexpr (SCM == SC_IDENTITY) {
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) sc[j] = xr + (o + j) * cp.Ho * cp.Wo;
  } else if constexpr (SCM == SC_REPEAT) {
#pragma GCC unroll 4
    for (int j = 0; j < R; ++j) {
      sc[j] = xr + q * cp.Ho * cp.Wo;
      if (++qr == cp.sc_k) qr = 0, ++q;
    }
  } else if constexpr (SCM == SC_MEAN) {
    for (int j = 0; j < R; ++j) sc[j] = shortcut_row_nchw(cp, n, oy, x0, np, o + j, tmp + j * npad);
  }
  epilogue_zip<R, RP, SCM != SC_NONE, NT>(cntT + o * npad, npad, np, dst, cp.kv, cp.scale + o, cp.bias + o,
                                          RP ? cp.shift_in + o : nullptr, RP ? cp.slope + o : nullptr,
                                          RP ? cp.shift_out + o : nullptr, sc);
}

// The float output of one tile (image n, output row oy, pixels [x0, x0 + np); channel-major
// counts cntT[o][npad]), NCHW, pixel-shuffled r = R (2, 3, 4): output row oy R + i of channel
// ch interleaves the row segments of the R consecutive conv channels o + j = (ch R + i) R + j:
// dst[p R + j] = channel o + j's output at pixel x0 + p, a run of np R floats. One
// instantiation per (R, RPReLU, shortcut mode SCM, streaming), so that the loop over the O / R
// runs has no dispatch; the repeat shortcut's input channel (o + j) / k is tracked without
// divisions. Run order (measured, Zen 4, outputs beyond the L2 written with plain stores):
// R = 2 channel by channel (its R rows in turn), R = 3, 4 row by row (row i of every channel).
// tmp: the R mean-shortcut rows.
template <int R, bool RP, int SCM, bool NT>
BSR_TARGET static void finish_zip(const ConvParams& cp, int64_t n, int64_t oy, int64_t x0, int64_t np,
                                  const int32_t* cntT, int64_t npad, float* tmp) {
  const int64_t Cs = cp.O / (R * R), Hs = cp.Ho * R, Ws = cp.Wo * R, k = cp.sc_k;
  float* base = cp.out + (n * Cs * Hs + oy * R) * Ws + x0 * R;  // channel 0, output row oy R
  // shortcut rows (output size == input size): row oy, pixels from x0 of input channel 0
  const float* xr = SCM != SC_NONE ? cp.x + n * cp.C * cp.Ho * cp.Wo + oy * cp.Wo + x0 : nullptr;
  if constexpr (R == 2) {
    int64_t q = 0, qr = 0;  // repeat: o = q k + qr, 0 <= qr < k; o grows by R per run
    const int64_t dq = R / k, dr = R % k;
    for (int64_t ch = 0; ch < Cs; ++ch)
#pragma GCC unroll 2
      for (int i = 0; i < R; ++i) {
        zip_run<R, RP, SCM, NT>(cp, n, oy, x0, np, cntT, npad, tmp, xr, (ch * R + i) * R, q, qr,
                                base + (ch * Hs + i) * Ws);
        q += dq;
        qr += dr;
        if (qr >= k) qr -= k, ++q;
      }
  } else {
    const int64_t dq = R * R / k, dr = R * R % k;  // o grows by R^2 per channel
    for (int i = 0; i < R; ++i) {
      int64_t q = i * R / k, qr = i * R % k;
      for (int64_t ch = 0; ch < Cs; ++ch) {
        zip_run<R, RP, SCM, NT>(cp, n, oy, x0, np, cntT, npad, tmp, xr, (ch * R + i) * R, q, qr,
                                base + (ch * Hs + i) * Ws);
        q += dq;
        qr += dr;
        if (qr >= k) qr -= k, ++q;
      }
    }
  }
}

template <int R, bool RP, bool NT>
BSR_TARGET static void finish_zip_sc(const ConvParams& cp, int64_t n, int64_t oy, int64_t x0, int64_t np,
                                     const int32_t* cntT, int64_t npad, float* tmp) {
  switch (cp.shortcut) {
    case SC_IDENTITY: finish_zip<R, RP, SC_IDENTITY, NT>(cp, n, oy, x0, np, cntT, npad, tmp); break;
    case SC_REPEAT: finish_zip<R, RP, SC_REPEAT, NT>(cp, n, oy, x0, np, cntT, npad, tmp); break;
    case SC_MEAN: finish_zip<R, RP, SC_MEAN, NT>(cp, n, oy, x0, np, cntT, npad, tmp); break;
    default: finish_zip<R, RP, SC_NONE, NT>(cp, n, oy, x0, np, cntT, npad, tmp); break;
  }
}

template <int R, bool NT>
BSR_TARGET static void finish_zip_any(const ConvParams& cp, int64_t n, int64_t oy, int64_t x0, int64_t np,
                                      const int32_t* cntT, int64_t npad, float* tmp) {
  if (cp.shift_in) finish_zip_sc<R, true, NT>(cp, n, oy, x0, np, cntT, npad, tmp);
  else finish_zip_sc<R, false, NT>(cp, n, oy, x0, np, cntT, npad, tmp);
}

// Finish one tile (image n, output row oy, pixels [x0, x0 + np)) from its counts
// cnt[p][Opad]: float NCHW / NHWC output, or int32 dot products (NCHW) for conv_counts.
// With a pixel shuffle r = cp.ps > 1 the float output is [N, O / r^2, Ho r, Wo r], conv channel
// o = c r^2 + i r + j of pixel (oy, x) going to channel c, pixel (oy r + i, x r + j): the tile
// fills output rows oy r + i (i < r), columns [x0 r, (x0 + np) r), each a contiguous run.
// Scratch: tmp holds max(Opad, (2 r + 1) tile_w) floats.
BSR_TARGET static void finish_tile(const ConvParams& cp, int64_t n, int64_t oy, int64_t x0, int64_t np,
                                   const int32_t* cnt, int32_t* cntT, float* tmp) {
  const int64_t O = cp.O, Opad = cp.Opad, Ho = cp.Ho, Wo = cp.Wo, r = cp.ps;
  const int32_t kv = cp.kv;
  const bool nt = BSR_ISA >= 1 && cp.stream;
  if (cp.out_nhwc) {
    // Counts are already pixel-major: one vector pass per pixel. Shuffled, the conv channels
    // are permuted (weights and epilogue parameters, see binary_conv2d) to q = (i r + j) Cs + c,
    // Cs = O / r^2, so channels [i blk, (i + 1) blk), blk = O / r, are output row oy r + i's
    // pixels x r + j (j < r) x Cs channels: one contiguous run of the channels_last output.
    // r = 1 is the plain output (one block of all O channels).
    const int64_t blk = O / r, Ws = Wo * r, Cs = blk / r;
    // repeat shortcut with k = r^2 (C = Cs: the usual upsampler): conv channel
    // q = (i r + j) Cs + c is o = c r^2 + i r + j, its shortcut x[o / r^2] = x[c], so every
    // block of Cs channels (one output pixel) adds the input pixel's channels as they are
    const bool direct = r > 1 && cp.shortcut == SC_REPEAT && cp.sc_k == r * r;
    for (int64_t p = 0; p < np; ++p) {
      const float* sc = nullptr;
      if (cp.shortcut) {
        const float* xpix = cp.x + ((n * Ho + oy) * Wo + x0 + p) * cp.C;
        if (direct) {
          for (int64_t b = 0; b < r * r; ++b) {  // block b = i r + j: output row oy r + i, pixel (x0 + p) r + j
            float* dst = cp.out + (((n * Ho + oy) * r + b / r) * Ws + (x0 + p) * r + b % r) * Cs;
            const int32_t* c = cnt + p * Opad + b * Cs;
            if (nt) epilogue_pixel_any<true>(c, dst, cp, xpix, b * Cs, Cs);
            else epilogue_pixel_any<false>(c, dst, cp, xpix, b * Cs, Cs);
          }
          continue;
        }
        sc = r > 1 ? shortcut_pixel_shuffled(cp, xpix, tmp) : shortcut_pixel_nhwc(cp, xpix, tmp);
      }
      for (int64_t i = 0; i < r; ++i) {
        float* dst = cp.out + (((n * Ho + oy) * r + i) * Ws + (x0 + p) * r) * Cs;
        const int32_t* c = cnt + p * Opad + i * blk;
        const float* sci = sc ? sc + i * blk : nullptr;
        if (nt) epilogue_pixel_any<true>(c, dst, cp, sci, i * blk, blk);
        else epilogue_pixel_any<false>(c, dst, cp, sci, i * blk, blk);
      }
    }
    return;
  }
  // NCHW: transpose the tile to channel-major (8 x 8 blocks, all in L1), then write each
  // channel's row segment contiguously.
  const int64_t npad = (np + 7) & ~(int64_t)7;
  for (int64_t p = 0; p < npad; p += 8)
    for (int64_t o = 0; o < Opad; o += 8) transpose8x8_i32(cnt + p * Opad + o, Opad, cntT + o * npad + p, npad);
  if (r == 1) {
    for (int64_t o = 0; o < O; ++o) {
      const int32_t* c = cntT + o * npad;
      const int64_t off = ((n * O + o) * Ho + oy) * Wo + x0;
      if (cp.out_i32) {
        int32_t* dst = cp.out_i32 + off;
        for (int64_t p = 0; p < np; ++p) dst[p] = kv - 2 * c[p];
        continue;
      }
      const float* sc = cp.shortcut ? shortcut_row_nchw(cp, n, oy, x0, np, o, tmp) : nullptr;
      if (nt) epilogue_row_any<true>(c, np, cp.out + off, kv, cp, o, sc);
      else epilogue_row_any<false>(c, np, cp.out + off, kv, cp, o, sc);
    }
    return;
  }
  // NCHW pixel-shuffled: r = 2, 3, 4 zipped in registers (finish_zip), any r through L1 (below)
  switch (r) {
#define BSR_ZIP(R)                                                      \
  case R:                                                               \
    if (nt) finish_zip_any<R, true>(cp, n, oy, x0, np, cntT, npad, tmp); \
    else finish_zip_any<R, false>(cp, n, oy, x0, np, cntT, npad, tmp);   \
    return;
    BSR_ZIP(2) BSR_ZIP(3) BSR_ZIP(4)
#undef BSR_ZIP
    default: break;
  }
  // any r: output row oy r + i of channel c interleaves the row segments of the r conv
  // channels o + j = g r + j (g = c r + i): the r rows into L1 (tmp: one mean-shortcut row,
  // the r rows, the interleaved run), interleaved there, then stored as one run
  const int64_t Cs = O / (r * r), Hs = Ho * r, Ws = Wo * r;
  for (int64_t g = 0; g < O / r; ++g) {
    const int64_t c = g / r, i = g % r, o = g * r;
    float* dst = cp.out + ((n * Cs + c) * Hs + oy * r + i) * Ws + x0 * r;
    float* rows = tmp + npad;
    float* run = rows + r * npad;
    for (int64_t j = 0; j < r; ++j) {
      const float* sc = cp.shortcut ? shortcut_row_nchw(cp, n, oy, x0, np, o + j, tmp) : nullptr;
      epilogue_row_any<false>(cntT + (o + j) * npad, np, rows + j * npad, kv, cp, o + j, sc);
    }
    for (int64_t p = 0; p < np; ++p)
      for (int64_t j = 0; j < r; ++j) run[p * r + j] = rows[j * npad + p];
    if (nt) store_row<true>(run, np * r, dst);
    else store_row<false>(run, np * r, dst);
  }
}

// Tiles [begin, end): tile i = (image, output row, segment of tile_w pixels). Scratch:
// cnt and cntT hold tile_w x Opad int32 each (tile_w is a multiple of 8), tmp
// max(Opad, (2 ps + 1) tile_w) floats.
BSR_TARGET static void conv_tiles(const ConvParams& cp, int64_t begin, int64_t end, int32_t* cnt, int32_t* cntT,
                                  float* tmp) {
  const int64_t NB = cp.Opad / LANES;
  const int64_t wstep = NB * BLOCK_WORDS;
  const int64_t pstep = cp.sw * cp.CW * IN_WORDS;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t seg = i % cp.tiles_per_row, row = i / cp.tiles_per_row;
    const int64_t n = row / cp.Ho, oy = row % cp.Ho;
    const int64_t x0 = seg * cp.tile_w;
    const int64_t np = cp.Wo - x0 < cp.tile_w ? cp.Wo - x0 : cp.tile_w;
    const uint64_t* base = cp.xp + ((n * cp.Hp + oy * cp.sh) * cp.Wp + x0 * cp.sw) * cp.CW * IN_WORDS;
    for (int64_t b0 = 0; b0 < NB; b0 += OBMAX) {
      const int ob = (int)(NB - b0 < OBMAX ? NB - b0 : OBMAX);
      const uint64_t* w = cp.wb + b0 * BLOCK_WORDS;
      int32_t* c = cnt + b0 * LANES;
      int64_t p = 0;
      for (; p + PMAX <= np; p += PMAX)
        micro_dispatch<PMAX>(ob, base + p * pstep, pstep, cp.offs, cp.T, w, wstep, c + p * cp.Opad, cp.Opad);
      for (; p < np; ++p)
        micro_dispatch<1>(ob, base + p * pstep, pstep, cp.offs, cp.T, w, wstep, c + p * cp.Opad, cp.Opad);
    }
    finish_tile(cp, n, oy, x0, np, cnt, cntT, tmp);
  }
#if BSR_ISA >= 1
  if (cp.stream) _mm_sfence();  // order the streaming stores before the results are used
#endif
}

// ---------------------------------------------------------------------------------------
// Roofline: XOR + popcount + accumulate at full speed on L1-resident data, the same
// instruction mix as the micro-kernel (one operand streamed from L1, the other held in
// registers, 4 independent register operands). Returns the total popcount; does
// reps * n * 4 word operations (n = words of `a`, a multiple of 8).
// ---------------------------------------------------------------------------------------
BSR_TARGET static uint64_t roofline(const uint64_t* a, const uint64_t* w, int64_t n, int64_t reps) {
#if BSR_ISA == 2
  __m512i acc[4], wv[4];
  for (int j = 0; j < 4; ++j) {
    acc[j] = _mm512_setzero_si512();
    wv[j] = _mm512_loadu_si512((const void*)(w + 8 * j));
  }
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i < n; i += 8) {
      const __m512i av = _mm512_loadu_si512((const void*)(a + i));
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) acc[j] = _mm512_add_epi64(acc[j], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[j])));
    }
    __asm__ volatile("" : "+v"(acc[0]), "+v"(acc[1]), "+v"(acc[2]), "+v"(acc[3]));
  }
  alignas(64) uint64_t out[8];
  _mm512_store_si512((void*)out, _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3])));
  uint64_t s = 0;
  for (int l = 0; l < 8; ++l) s += out[l];
  return s;
#elif BSR_ISA == 1
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  __m256i wl[4], wh[4], tot = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(w + 4 * j));
    wl[j] = _mm256_and_si256(v, m4);
    wh[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
  }
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i0 = 0; i0 < n; i0 += 4 * 31) {  // byte counters: flush every 31 vectors
      const int64_t i1 = n - i0 < 4 * 31 ? n : i0 + 4 * 31;
      __m256i acc[4];
      for (int j = 0; j < 4; ++j) acc[j] = _mm256_setzero_si256();
      for (int64_t i = i0; i < i1; i += 4) {
        const __m256i av = _mm256_loadu_si256((const __m256i*)(a + i));
        const __m256i lo = _mm256_and_si256(av, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(av, 4), m4);
#pragma GCC unroll 4
        for (int j = 0; j < 4; ++j)
          acc[j] = _mm256_add_epi8(acc[j], _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(lo, wl[j])),
                                                           _mm256_shuffle_epi8(lut, _mm256_xor_si256(hi, wh[j]))));
      }
      for (int j = 0; j < 4; ++j) tot = _mm256_add_epi64(tot, _mm256_sad_epu8(acc[j], _mm256_setzero_si256()));
    }
    __asm__ volatile("" : "+x"(tot));
  }
  alignas(32) uint64_t out[4];
  _mm256_store_si256((__m256i*)out, tot);
  return out[0] + out[1] + out[2] + out[3];
#else
  uint64_t acc[4] = {0, 0, 0, 0};
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < 4; ++j) acc[j] += (uint64_t)__builtin_popcountll(a[i] ^ w[j]);
    __asm__ volatile("" : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3]));
  }
  return acc[0] + acc[1] + acc[2] + acc[3];
#endif
}
