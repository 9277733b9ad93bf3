// Role: what engine.cpp and every ISA build of the kernels share: the parameter blocks of a
// pack and of a conv, the shortcut codes, the tile a kernel works on, small helpers.
// Included once, before the ISA builds (see isa_kernels.h). The engine is x86-64 only (README.md).
#pragma once

#if !defined(__x86_64__)
#error "the packed engine is x86-64 only: build.py skips it elsewhere (the package uses the float simulation)"
#endif

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

// Helpers split out of per-pixel code are inlined where they were written before the split.
#define BSR_ALWAYS_INLINE inline __attribute__((always_inline))

namespace bsr_engine {

// Float outputs of at least this size are written with streaming (non-temporal) stores: far
// larger than the L2, they would only evict the input on their way to memory.
constexpr size_t kStreamBytes = size_t(8) << 20;

// The `shortcut` argument of the ops (the order of kernels.py's SHORTCUTS).
enum Shortcut : int64_t { kShortcutNone = 0, kShortcutIdentity = 1, kShortcutRepeat = 2, kShortcutMean = 3 };

// The valid lanes of packed word `word` of a pixel with `channels` channels (what a padding
// pixel holds: sign(0) = +1 for every channel, 0 beyond the last channel).
inline uint64_t valid_lanes(int64_t channels, int64_t word) {
  const int64_t rem = channels - word * 64;
  return rem >= 64 ? ~0ull : ((1ull << rem) - 1ull);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// One sign-and-pack pass: float x -> packed, padded words [N, Hp, Wp, in_words].
struct PackParams {
  const float* x = nullptr;  // [N, C, H, W] contiguous, or channels_last when nhwc
  bool nhwc = false;
  int64_t N = 0, C = 0, H = 0, W = 0;
  const float* threshold = nullptr;   // [C] per-channel sign threshold, or null (0)
  int64_t pad_top = 0, pad_left = 0;  // bottom / right padding follow from Hp, Wp
  uint64_t* out = nullptr;            // [N, Hp, Wp, in_words]
  int64_t Hp = 0, Wp = 0;             // padded height and width
  int64_t in_words = 0;               // packed words per pixel: ceil(C / 64)
};

// One binarized conv on a packed input (a linear is a 1 x M conv), with its epilogue.
struct ConvParams {
  // input and weights
  const uint64_t* packed_input = nullptr;  // [N, Hp, Wp, in_words] (times words_per_input_word)
  int64_t N = 0, Hp = 0, Wp = 0, in_words = 0, C = 0;
  int64_t O = 0, out_padded = 0;  // output channels; O rounded up to 8 (the count buffers' width)
  int64_t Ho = 0, Wo = 0, stride_h = 1, stride_w = 1;
  const uint64_t* blocked_weights = nullptr;  // weights in the ISA's blocked layout (popcount_*.h)
  const int64_t* step_offsets = nullptr;      // per step: input offset from the window origin
  int64_t steps = 0;                          // KH * KW * in_words
  int32_t kernel_volume = 0;                  // K = C * KH * KW: dot = K - 2 * popcount(a XOR w)
  int64_t tile_w = 0, tiles_per_row = 0;      // output pixels per tile, tiles per output row
  // output: exactly one of out (floats) / out_counts (int32 dot products, NCHW)
  float* out = nullptr;
  int32_t* out_counts = nullptr;
  bool out_nhwc = false;
  bool stream = false;         // streaming (non-temporal) stores of the float output
  int64_t shuffle = 1;         // pixel shuffle factor r of the float output (1: none)
  // epilogue: y = scale * dot + bias, RPReLU when shift_in is set, + shortcut
  const float* scale = nullptr;
  const float* bias = nullptr;
  const float* shift_in = nullptr;  // RPReLU when non-null (then slope and shift_out too)
  const float* slope = nullptr;
  const float* shift_out = nullptr;
  int64_t shortcut = kShortcutNone;
  int64_t shortcut_k = 1;     // repeat: O = k C; mean: C = k O
  const float* x = nullptr;   // the float input (same layout as the output), for the shortcut
  // channels_last pixel shuffle: per (permuted) output channel, the first input channel of its
  // shortcut (identity / repeat: the channel, mean: the first of shortcut_k)
  const int64_t* shortcut_source = nullptr;
};

// One tile of output: pixels [x0, x0 + pixels) of output row `row` of image `image`.
struct Tile {
  int64_t image = 0, row = 0, x0 = 0, pixels = 0;
};

// A tile's buffers (per thread, see engine.cpp): its counts pixel-major [tile_w][out_padded] and
// channel-major [out_padded][tile_w] (int32), and float scratch of max(out_padded,
// (2 shuffle + 1) tile_w) values (shortcut rows and pixels, the L1 pixel-shuffle rows).
struct TileBuffers {
  int32_t* counts = nullptr;
  int32_t* by_channel = nullptr;
  float* scratch = nullptr;
};

// The micro-kernel's input from packed words [begin, end) (AVX2: the nibble split), or null.
using ExpandInputFn = void (*)(const uint64_t* words, int64_t begin, int64_t end, uint64_t* out);

}  // namespace bsr_engine
