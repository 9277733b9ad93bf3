// Role: the portable popcount micro-kernel (__builtin_popcountll per word), its weight block
// layout and its roofline loop. Part of the scalar build (isa_kernels.h; no target attribute,
// so it runs on any x86-64 CPU).

// Weight block: the words of kLanes output channels for one step.
static constexpr int kLanes = 4, kBlockWords = 4;
// Micro-kernel input words per packed input word (1: the packed words as they are).
static constexpr int kWordsPerInputWord = 1;
static constexpr ExpandInputFn kExpandInput = nullptr;
// Register tile: pixels x blocks of kLanes output channels.
static constexpr int kTilePixels = 2, kTileBlocks = 2;

// Lane `lane` of a weight block: the weight word as it is.
static inline void store_weight_lane(uint64_t* block, int lane, uint64_t word) { block[lane] = word; }

// popcount(input XOR weight) summed over the steps, for kPixels output pixels x kOutBlocks
// blocks of kLanes output channels (arguments as the AVX-512 micro_kernel).
template <int kPixels, int kOutBlocks>
BSR_TARGET static inline void micro_kernel(const uint64_t* input, int64_t pixel_stride, const int64_t* step_offsets,
                                           int64_t steps, const uint64_t* weights, int64_t step_stride,
                                           int32_t* counts, int64_t count_stride) {
  constexpr int kChannels = kOutBlocks * kLanes;
  int64_t acc[kPixels][kChannels];
  for (int p = 0; p < kPixels; ++p)
    for (int l = 0; l < kChannels; ++l) acc[p][l] = 0;
  for (int64_t t = 0; t < steps; ++t) {
    const uint64_t* in_t = input + step_offsets[t];
    const uint64_t* w_t = weights + t * step_stride;
    for (int p = 0; p < kPixels; ++p) {
      const uint64_t av = in_t[p * pixel_stride];
      for (int l = 0; l < kChannels; ++l) acc[p][l] += __builtin_popcountll(av ^ w_t[l]);
    }
  }
  for (int p = 0; p < kPixels; ++p)
    for (int l = 0; l < kChannels; ++l) counts[p * count_stride + l] = (int32_t)acc[p][l];
}

// Roofline (see popcount_avx512.h) with __builtin_popcountll.
BSR_TARGET static uint64_t roofline(const uint64_t* a, const uint64_t* w, int64_t n, int64_t reps) {
  uint64_t acc[4] = {0, 0, 0, 0};
  for (int64_t r = 0; r < reps; ++r) {
    for (int64_t i = 0; i < n; ++i)
      for (int j = 0; j < 4; ++j) acc[j] += (uint64_t)__builtin_popcountll(a[i] ^ w[j]);
    __asm__ volatile("" : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3]));
  }
  return acc[0] + acc[1] + acc[2] + acc[3];
}
