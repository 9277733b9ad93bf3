// Role: the packed weights in the blocked layout of this ISA's micro-kernel, and the choice of
// the micro-kernel instance by the number of output-channel blocks left. Part of one ISA build
// (isa_kernels.h), after the popcount_*.h that defines kLanes, kBlockWords, store_weight_lane.
//
// Blocked layout: [steps][out_padded / kLanes][kBlockWords] (steps = KH * KW * in_words): for
// every step the words of all output channels are contiguous, kLanes channels per block; lanes
// of channels >= O are zero (their counts are discarded).

static int64_t blocked_weight_words(int64_t out_padded, int64_t steps) {
  return steps * (out_padded / kLanes) * kBlockWords;
}

// Packed weights [O][steps] -> the blocked layout (`blocked` holds blocked_weight_words words).
static void repack_weights(const uint64_t* packed, int64_t O, int64_t steps, int64_t out_padded, uint64_t* blocked) {
  const int64_t blocks = out_padded / kLanes;
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t b = 0; b < blocks; ++b) {
      uint64_t* block = blocked + (t * blocks + b) * kBlockWords;
      for (int lane = 0; lane < kLanes; ++lane) {
        const int64_t o = b * kLanes + lane;
        store_weight_lane(block, lane, o < O ? packed[o * steps + t] : 0);
      }
    }
}

// micro_kernel<kPixels, out_blocks> for out_blocks = 1 .. kTileBlocks (fewer than kTileBlocks
// blocks are left at the end of the output channels).
template <int kPixels>
BSR_TARGET static inline void micro_kernel_for_blocks(int out_blocks, const uint64_t* input, int64_t pixel_stride,
                                                      const int64_t* step_offsets, int64_t steps,
                                                      const uint64_t* weights, int64_t step_stride, int32_t* counts,
                                                      int64_t count_stride) {
  static_assert(kTileBlocks <= 8, "extend the switch");
  switch (out_blocks) {
#define BSR_CASE(k)                                                                                          \
  case k:                                                                                                    \
    micro_kernel<kPixels, (kTileBlocks >= k ? k : 1)>(input, pixel_stride, step_offsets, steps, weights,   \
                                                      step_stride, counts, count_stride);                    \
    break;
    BSR_CASE(1) BSR_CASE(2) BSR_CASE(3) BSR_CASE(4) BSR_CASE(5) BSR_CASE(6) BSR_CASE(7)
#undef BSR_CASE
    default:
      micro_kernel<kPixels, kTileBlocks>(input, pixel_stride, step_offsets, steps, weights, step_stride, counts,
                                         count_stride);
      break;
  }
}
