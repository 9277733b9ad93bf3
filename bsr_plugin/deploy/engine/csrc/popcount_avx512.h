// Role: the AVX-512 popcount micro-kernel (F, BW, VL, VPOPCNTDQ), its weight block layout and
// its roofline loop. Part of the avx512 build (isa_kernels.h; BSR_TARGET enables AVX-512).
//
// Lanes = 8 output channels: the pixel's input word is broadcast and XORed with 8 channels'
// weight words, VPOPCNTQ counts each lane and VPADDQ accumulates in 64-bit lanes, so the count
// of (pixel, channel) ends in its own lane: no horizontal reduction. A register tile of
// kTilePixels pixels x kTileBlocks blocks (default 4 x 4 x 8 channels) reuses each broadcast
// kTileBlocks times and each weight load kTilePixels times.

// Weight block: the words of kLanes output channels for one step, kBlockWords words.
static constexpr int kLanes = 8, kBlockWords = 8;
// Micro-kernel input words per packed input word (1: the packed words as they are).
static constexpr int kWordsPerInputWord = 1;
static constexpr ExpandInputFn kExpandInput = nullptr;
// Register tile: pixels x blocks of kLanes output channels (tuning knobs, see engine.cpp).
static constexpr int kTilePixels = BSR_AVX512_P, kTileBlocks = BSR_AVX512_OB;

// Lane `lane` of a weight block: the weight word as it is.
static inline void store_weight_lane(uint64_t* block, int lane, uint64_t word) { block[lane] = word; }

// popcount(input XOR weight) summed over the steps, for kPixels output pixels x kOutBlocks
// blocks of kLanes output channels. `input` points at pixel 0's window origin in the packed
// input, pixel p at + p * pixel_stride, step t at + step_offsets[t]; `weights` at the first
// block for step 0 (step t at + t * step_stride). Writes kPixels x (kOutBlocks * kLanes) int32
// counts to `counts` (row stride count_stride).
template <int kPixels, int kOutBlocks>
BSR_TARGET static inline void micro_kernel(const uint64_t* input, int64_t pixel_stride, const int64_t* step_offsets,
                                           int64_t steps, const uint64_t* weights, int64_t step_stride,
                                           int32_t* counts, int64_t count_stride) {
  __m512i acc[kPixels][kOutBlocks];
#pragma GCC unroll 8
  for (int p = 0; p < kPixels; ++p)
#pragma GCC unroll 8
    for (int b = 0; b < kOutBlocks; ++b) acc[p][b] = _mm512_setzero_si512();
  for (int64_t t = 0; t < steps; ++t) {
    const uint64_t* in_t = input + step_offsets[t];
    const uint64_t* w_t = weights + t * step_stride;
    __m512i wv[kOutBlocks];
#pragma GCC unroll 8
    for (int b = 0; b < kOutBlocks; ++b) wv[b] = _mm512_loadu_si512((const void*)(w_t + b * kBlockWords));
#pragma GCC unroll 8
    for (int p = 0; p < kPixels; ++p) {
      const __m512i av = _mm512_set1_epi64((long long)in_t[p * pixel_stride]);
#pragma GCC unroll 8
      for (int b = 0; b < kOutBlocks; ++b)
        acc[p][b] = _mm512_add_epi64(acc[p][b], _mm512_popcnt_epi64(_mm512_xor_si512(av, wv[b])));
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < kPixels; ++p)
#pragma GCC unroll 8
    for (int b = 0; b < kOutBlocks; ++b)
      _mm256_storeu_si256((__m256i*)(counts + p * count_stride + b * kLanes),
                          _mm512_maskz_cvtepi64_epi32((__mmask8)0xff, acc[p][b]));
}

// Roofline: XOR + popcount + accumulate at full speed on L1-resident data, the micro-kernel's
// instruction mix (one operand streamed from L1, 4 register-held operands from w). Returns the
// total popcount of reps passes over the n words of a (a multiple of 8).
BSR_TARGET static uint64_t roofline(const uint64_t* a, const uint64_t* w, int64_t n, int64_t reps) {
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
}
