// Role: the AVX2 popcount micro-kernel, its weight block layout, the nibble split of its input
// and its roofline loop. Part of the avx2 build (isa_kernels.h; BSR_TARGET enables AVX2).
//
// Lanes = 4 output channels; popcount by nibble lookup (VPSHUFB). The packed input is split
// once per call into (low nibbles, high nibbles) word pairs (kWordsPerInputWord = 2, see
// expand_input) and the weights are stored split, so lo(a ^ w) = lo(a) ^ lo(w) costs one XOR and
// a 4-word popcount is 2 XOR + 2 VPSHUFB + 2 byte adds. Byte counts (<= 8 per byte and step)
// accumulate for up to 31 steps (<= 248), then VPSADBW sums each lane's 8 bytes.

// Weight block: 4 low-nibble words | 4 high-nibble words of kLanes output channels for one step.
static constexpr int kLanes = 4, kBlockWords = 8;
// Micro-kernel input words per packed input word: the (low, high) nibble pair.
static constexpr int kWordsPerInputWord = 2;
// Register tile: pixels x blocks of kLanes output channels (tuning knobs, see engine.cpp).
static constexpr int kTilePixels = BSR_AVX2_P, kTileBlocks = BSR_AVX2_OB;
// Steps whose byte counts fit in a byte (31 * 8 = 248).
static constexpr int64_t kStepsPerFlush = 31;

static constexpr uint64_t kLowNibbles = 0x0F0F0F0F0F0F0F0Full;

// The micro-kernel's input from packed words [begin, end): each word w as the pair
// (w & 0x0f.., (w >> 4) & 0x0f..).
BSR_TARGET static void expand_input(const uint64_t* words, int64_t begin, int64_t end, uint64_t* out) {
  for (int64_t i = begin; i < end; ++i) {
    out[2 * i] = words[i] & kLowNibbles;
    out[2 * i + 1] = (words[i] >> 4) & kLowNibbles;
  }
}
static constexpr ExpandInputFn kExpandInput = expand_input;

// Lane `lane` of a weight block: the weight word's low nibbles, and its high nibbles kLanes
// words further.
static inline void store_weight_lane(uint64_t* block, int lane, uint64_t word) {
  block[lane] = word & kLowNibbles;
  block[kLanes + lane] = (word >> 4) & kLowNibbles;
}

BSR_TARGET static BSR_ALWAYS_INLINE __m256i nibble_popcount_table() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,   // popcount of 0 .. 15,
                          0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);  // in both 128-bit lanes
}

// Add the 4 lanes' counts of byte accumulator `acc` to counts[0..4) (or store them, on the
// first flush).
BSR_TARGET static BSR_ALWAYS_INLINE void flush_byte_counts(__m256i acc, int32_t* counts, bool first) {
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const __m256i sums = _mm256_sad_epu8(acc, _mm256_setzero_si256());  // 4 x u64 counts
  const __m128i c4 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sums, even));
  if (first) _mm_storeu_si128((__m128i*)counts, c4);
  else _mm_storeu_si128((__m128i*)counts, _mm_add_epi32(_mm_loadu_si128((const __m128i*)counts), c4));
}

// popcount(input XOR weight) summed over the steps, for kPixels output pixels x kOutBlocks
// blocks of kLanes output channels (arguments as the AVX-512 micro_kernel; `input` is the
// nibble-split input, pixel_stride and step_offsets counted in its words).
template <int kPixels, int kOutBlocks>
BSR_TARGET static inline void micro_kernel(const uint64_t* input, int64_t pixel_stride, const int64_t* step_offsets,
                                           int64_t steps, const uint64_t* weights, int64_t step_stride,
                                           int32_t* counts, int64_t count_stride) {
  const __m256i lut = nibble_popcount_table();
  for (int64_t t0 = 0; t0 < steps; t0 += kStepsPerFlush) {
    const int64_t t1 = steps - t0 < kStepsPerFlush ? steps : t0 + kStepsPerFlush;
    __m256i acc[kPixels][kOutBlocks];
#pragma GCC unroll 8
    for (int p = 0; p < kPixels; ++p)
#pragma GCC unroll 8
      for (int b = 0; b < kOutBlocks; ++b) acc[p][b] = _mm256_setzero_si256();
    for (int64_t t = t0; t < t1; ++t) {
      const uint64_t* in_t = input + step_offsets[t];
      const uint64_t* w_t = weights + t * step_stride;
#pragma GCC unroll 8
      for (int p = 0; p < kPixels; ++p) {
        const __m256i lo = _mm256_set1_epi64x((long long)in_t[p * pixel_stride]);
        const __m256i hi = _mm256_set1_epi64x((long long)in_t[p * pixel_stride + 1]);
#pragma GCC unroll 8
        for (int b = 0; b < kOutBlocks; ++b) {
          const __m256i wl = _mm256_loadu_si256((const __m256i*)(w_t + b * kBlockWords));
          const __m256i wh = _mm256_loadu_si256((const __m256i*)(w_t + b * kBlockWords + kLanes));
          const __m256i c = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(lo, wl)),
                                            _mm256_shuffle_epi8(lut, _mm256_xor_si256(hi, wh)));
          acc[p][b] = _mm256_add_epi8(acc[p][b], c);
        }
      }
    }
#pragma GCC unroll 8
    for (int p = 0; p < kPixels; ++p)
#pragma GCC unroll 8
      for (int b = 0; b < kOutBlocks; ++b)
        flush_byte_counts(acc[p][b], counts + p * count_stride + b * kLanes, t0 == 0);
  }
}

// Roofline (see popcount_avx512.h) with the nibble lookup: the input is split on the fly.
BSR_TARGET static uint64_t roofline(const uint64_t* a, const uint64_t* w, int64_t n, int64_t reps) {
  const __m256i lut = nibble_popcount_table();
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  __m256i wl[4], wh[4], tot = _mm256_setzero_si256();
  for (int j = 0; j < 4; ++j) {
    const __m256i v = _mm256_loadu_si256((const __m256i*)(w + 4 * j));
    wl[j] = _mm256_and_si256(v, m4);
    wh[j] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
  }
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i0 = 0; i0 < n; i0 += 4 * kStepsPerFlush) {  // byte counters: flush every 31 vectors
      const int64_t i1 = n - i0 < 4 * kStepsPerFlush ? n : i0 + 4 * kStepsPerFlush;
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
}
