// Role: sign and bit packing, in one pass, of a float input into the padded packed words the
// popcount kernels read ([N, Hp, Wp, in_words], channel c = bit c % 64 of word c / 64, bit 1 =
// x - threshold[c] >= 0). From NCHW: per 8 channels x 8 (AVX-512: 16) pixels, the sign masks
// along the row form an 8 x 8 bit matrix that one bit-matrix transpose turns into one byte per
// pixel; from channels_last: one movemask (AVX-512: compare-into-mask) per 64 channels.
// Part of one ISA build (isa_kernels.h): BSR_ISA picks the vector width of the sign tests.

// Transpose an 8x8 bit matrix held in a uint64: bit (8 * r + c) <-> bit (8 * c + r)
// (Hacker's Delight 7-3). In the NCHW packer row r = channel, column c = pixel.
BSR_TARGET static inline uint64_t transpose_bits8x8(uint64_t x) {
  uint64_t t;
  t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;
  x = x ^ t ^ (t << 7);
  t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull;
  x = x ^ t ^ (t << 14);
  t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull;
  x = x ^ t ^ (t << 28);
  return x;
}

// Sign bits of 8 consecutive floats (bit i = src[i] - threshold >= 0).
template <bool kHasThreshold>
BSR_TARGET static inline uint32_t sign_bits8(const float* src, float threshold) {
#if BSR_ISA >= 1
  __m256 v = _mm256_loadu_ps(src);
  if (kHasThreshold) v = _mm256_sub_ps(v, _mm256_set1_ps(threshold));
  return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ));
#else
  uint32_t m = 0;
  for (int i = 0; i < 8; ++i) m |= (uint32_t)((kHasThreshold ? src[i] - threshold : src[i]) >= 0.0f) << i;
  return m;
#endif
}

// Sign bits of `count` <= 64 consecutive channels (each with its own threshold): one packed word.
template <bool kHasThreshold>
BSR_TARGET static inline uint64_t sign_word(const float* src, const float* threshold, int count) {
  uint64_t word = 0;
  int c = 0;
#if BSR_ISA == 2
  for (; c + 16 <= count; c += 16) {
    __m512 v = _mm512_loadu_ps(src + c);
    if (kHasThreshold) v = _mm512_sub_ps(v, _mm512_loadu_ps(threshold + c));
    word |= (uint64_t)_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ) << c;
  }
  if (c < count) {  // masked tail: lanes beyond count are neither read nor set
    const __mmask16 k = (__mmask16)((1u << (count - c)) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(k, src + c);
    if (kHasThreshold) v = _mm512_sub_ps(v, _mm512_maskz_loadu_ps(k, threshold + c));
    word |= (uint64_t)_mm512_mask_cmp_ps_mask(k, v, _mm512_setzero_ps(), _CMP_GE_OQ) << c;
  }
  return word;
#else
#if BSR_ISA == 1
  for (; c + 8 <= count; c += 8) {
    __m256 v = _mm256_loadu_ps(src + c);
    if (kHasThreshold) v = _mm256_sub_ps(v, _mm256_loadu_ps(threshold + c));
    word |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ)) << c;
  }
#endif
  for (; c < count; ++c) word |= (uint64_t)((kHasThreshold ? src[c] - threshold[c] : src[c]) >= 0.0f) << c;
  return word;
#endif
}

#if BSR_ISA == 2
// AVX-512: 16 pixels of one group of `channels` <= 8 channels (see pack_group_nchw), one
// compare-into-mask per channel; `src` and `out` at the first of the 16 pixels.
template <bool kHasThreshold>
BSR_TARGET static BSR_ALWAYS_INLINE void pack_16_pixels_nchw(const float* src, int channels, int64_t plane,
                                                             const float* threshold, unsigned char* out,
                                                             int64_t pixel_bytes) {
  uint64_t lo = 0, hi = 0;
  for (int j = 0; j < channels; ++j) {
    __m512 v = _mm512_loadu_ps(src + j * plane);
    if (kHasThreshold) v = _mm512_sub_ps(v, _mm512_set1_ps(threshold[j]));
    const uint32_t k = (uint32_t)_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_GE_OQ);
    lo |= (uint64_t)(k & 0xffu) << (8 * j);
    hi |= (uint64_t)(k >> 8) << (8 * j);
  }
  lo = transpose_bits8x8(lo);
  hi = transpose_bits8x8(hi);
  for (int p = 0; p < 8; ++p) {
    out[p * pixel_bytes] = (unsigned char)(lo >> (8 * p));
    out[(8 + p) * pixel_bytes] = (unsigned char)(hi >> (8 * p));
  }
}
#endif

// NCHW source, one group g of up to 8 channels (= byte g % 8 of word g / 8, i.e. byte g of a
// pixel's in_words words) of one row of W pixels: per 8 (AVX-512: 16) pixels, the sign masks of
// the channels' pixel runs form an 8 x 8 bit matrix (byte j = channel j, bit p = pixel p); one
// bit-matrix transpose gives byte p = pixel p's 8 channel bits. `src` = channel 8 g of the row,
// `plane` = H * W (channel stride), `out` = byte g of pixel 0, pixel stride pixel_bytes.
template <bool kHasThreshold>
BSR_TARGET static void pack_group_nchw(const float* src, int channels, int64_t plane, int64_t W,
                                       const float* threshold, unsigned char* out, int64_t pixel_bytes) {
  int64_t px = 0;
#if BSR_ISA == 2
  for (; px + 16 <= W; px += 16)
    pack_16_pixels_nchw<kHasThreshold>(src + px, channels, plane, threshold, out + px * pixel_bytes, pixel_bytes);
#endif
  for (; px + 8 <= W; px += 8) {
    uint64_t m = 0;
    for (int j = 0; j < channels; ++j)
      m |= (uint64_t)sign_bits8<kHasThreshold>(src + j * plane + px, kHasThreshold ? threshold[j] : 0.0f) << (8 * j);
    m = transpose_bits8x8(m);
    for (int p = 0; p < 8; ++p) out[(px + p) * pixel_bytes] = (unsigned char)(m >> (8 * p));
  }
  for (; px < W; ++px) {  // row tail: bit by bit
    unsigned b = 0;
    for (int j = 0; j < channels; ++j) {
      const float v = src[j * plane + px];
      b |= (unsigned)((kHasThreshold ? v - threshold[j] : v) >= 0.0f) << j;
    }
    out[px * pixel_bytes] = (unsigned char)b;
  }
}

// NCHW source, rows y0 .. y0 + rows - 1 of one image (`image` = its channel 0) into the packed
// rows from `row0` (stride row_words, pointing at the first unpadded pixel). Channel group by
// channel group over a band of rows, so each of the 8 input streams runs along rows * W
// contiguous floats (prefetch friendly) while the band's packed rows stay in L1.
template <bool kHasThreshold>
BSR_TARGET static void pack_band_nchw(const float* image, int64_t C, int64_t plane, int64_t W, int64_t y0,
                                      int64_t rows, const float* threshold, uint64_t* row0, int64_t row_words,
                                      int64_t in_words) {
  const int64_t groups = (C + 7) / 8, pixel_bytes = in_words * 8;
  if (groups < pixel_bytes)  // bytes of groups beyond C are never written below: zero them
    for (int64_t r = 0; r < rows; ++r) {
      unsigned char* bytes = reinterpret_cast<unsigned char*>(row0 + r * row_words);
      for (int64_t px = 0; px < W; ++px)
        for (int64_t g = groups; g < pixel_bytes; ++g) bytes[px * pixel_bytes + g] = 0;
    }
  for (int64_t g = 0; g < groups; ++g) {
    const int channels = (int)(C - 8 * g < 8 ? C - 8 * g : 8);
    for (int64_t r = 0; r < rows; ++r)
      pack_group_nchw<kHasThreshold>(image + 8 * g * plane + (y0 + r) * W, channels, plane, W,
                                     kHasThreshold ? threshold + 8 * g : nullptr,
                                     reinterpret_cast<unsigned char*>(row0 + r * row_words) + g, pixel_bytes);
  }
}

// NHWC source: a pixel's channels are contiguous, so each word is the sign mask of up to 64
// consecutive channels.
template <bool kHasThreshold>
BSR_TARGET static void pack_row_nhwc(const float* x_row, int64_t C, int64_t W, const float* threshold, uint64_t* row,
                                     int64_t in_words) {
  for (int64_t px = 0; px < W; ++px) {
    const float* src = x_row + px * C;
    for (int64_t word = 0; word < in_words; ++word) {
      const int64_t c0 = word * 64;
      const int count = (int)(C - c0 < 64 ? C - c0 : 64);
      row[px * in_words + word] = sign_word<kHasThreshold>(src + c0, kHasThreshold ? threshold + c0 : nullptr, count);
    }
  }
}

// Fill words [begin, end) of a packed row with the padding pixel's words.
BSR_TARGET static inline void fill_padding(uint64_t* row, int64_t begin, int64_t end, int64_t C, int64_t in_words) {
  for (int64_t i = begin; i < end; ++i) row[i] = valid_lanes(C, i % in_words);
}

// Image rows y .. y + rows - 1 of image n into the packed rows from `row` (left / right padding
// included), from NCHW or channels_last.
BSR_TARGET static void pack_image_rows(const PackParams& pack, int64_t n, int64_t y, int64_t rows, uint64_t* row) {
  const int64_t in_words = pack.in_words, H = pack.H, W = pack.W, C = pack.C, row_words = pack.Wp * in_words;
  for (int64_t b = 0; b < rows; ++b) {
    fill_padding(row + b * row_words, 0, pack.pad_left * in_words, C, in_words);
    fill_padding(row + b * row_words, (pack.pad_left + W) * in_words, row_words, C, in_words);
  }
  uint64_t* dst = row + pack.pad_left * in_words;
  if (pack.nhwc) {
    for (int64_t b = 0; b < rows; ++b) {
      const float* src = pack.x + (n * H + y + b) * W * C;
      if (pack.threshold) pack_row_nhwc<true>(src, C, W, pack.threshold, dst + b * row_words, in_words);
      else pack_row_nhwc<false>(src, C, W, nullptr, dst + b * row_words, in_words);
    }
  } else {
    const float* image = pack.x + n * C * H * W;
    if (pack.threshold) pack_band_nchw<true>(image, C, H * W, W, y, rows, pack.threshold, dst, row_words, in_words);
    else pack_band_nchw<false>(image, C, H * W, W, y, rows, nullptr, dst, row_words, in_words);
  }
}

// Rows [begin, end) of the packed, padded input (row r = image r / Hp, padded row r % Hp).
// Padding pixels hold all valid lanes set (sign(0) = +1) and zero lanes beyond C.
BSR_TARGET static void pack_rows(const PackParams& pack, int64_t begin, int64_t end) {
  const int64_t H = pack.H, row_words = pack.Wp * pack.in_words;
  for (int64_t r = begin; r < end;) {
    const int64_t n = r / pack.Hp, y = r % pack.Hp - pack.pad_top;
    uint64_t* row = pack.out + r * row_words;
    if (y < 0 || y >= H) {  // a padding row
      fill_padding(row, 0, row_words, pack.C, pack.in_words);
      ++r;
      continue;
    }
    // a band of image rows y .. y + rows - 1 (same image, all inside [begin, end))
    int64_t rows = H - y < end - r ? H - y : end - r;
    if (rows > 8) rows = 8;
    pack_image_rows(pack, n, y, rows, row);
    r += rows;
  }
}
