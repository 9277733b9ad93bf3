// Role: the conv itself. A tile is one output row segment (tile_w pixels) x all output
// channels: register tiles of micro-kernel calls fill its int32 counts (pixel-major, in L1),
// then its epilogue writes them: channels_last pixels directly; NCHW after transposing the tile
// to channel-major in 8 x 8 blocks, each channel's row segment contiguously (or, pixel-shuffled,
// pixel_shuffle.h); int32 dot products for conv_counts. Part of one ISA build (isa_kernels.h).

// dst[c][r] = src[r][c] for an 8 x 8 int32 block (row strides src_stride, dst_stride).
BSR_TARGET static inline void transpose_counts8x8(const int32_t* src, int64_t src_stride, int32_t* dst,
                                                  int64_t dst_stride) {
#if BSR_ISA >= 1
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)(src + i * src_stride)));
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
  for (int i = 0; i < 8; ++i) _mm256_storeu_si256((__m256i*)(dst + i * dst_stride), _mm256_castps_si256(t[i]));
#else
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 8; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
#endif
}

// channels_last, pixel-shuffled by r with the repeat shortcut of k = r^2 (C = O / r^2, the usual
// upsampler): conv channel q = (i r + j) Cs + c is o = c r^2 + i r + j, its shortcut x[o / r^2] =
// x[c], so every block of Cs channels (one output pixel) adds the input pixel as it is.
// One tile pixel p: its r^2 output pixels.
BSR_TARGET static void finish_pixel_repeat_shuffled(const ConvParams& conv, const Tile& tile, bool stream, int64_t p,
                                                    const int32_t* counts, const float* x_pixel) {
  const int64_t r = conv.shuffle, Cs = conv.O / (r * r), Ws = conv.Wo * r;
  for (int64_t b = 0; b < r * r; ++b) {  // block b = i r + j: output row row r + i, pixel (x0 + p) r + j
    float* dst = conv.out + (((tile.image * conv.Ho + tile.row) * r + b / r) * Ws + (tile.x0 + p) * r + b % r) * Cs;
    const int32_t* c = counts + p * conv.out_padded + b * Cs;
    if (stream) epilogue_pixel_channels<true>(c, dst, conv, x_pixel, b * Cs, Cs);
    else epilogue_pixel_channels<false>(c, dst, conv, x_pixel, b * Cs, Cs);
  }
}

// channels_last output: counts are already pixel-major, one vector pass per pixel. Shuffled,
// the conv channels are permuted (weights and epilogue parameters, see binary_conv2d) to
// q = (i r + j) Cs + c, Cs = O / r^2, so channels [i blk, (i + 1) blk), blk = O / r, are output
// row (row r + i)'s pixels x r + j (j < r) x Cs channels: one contiguous run of the output.
// r = 1 is the plain output (one block of all O channels).
BSR_TARGET static void finish_tile_nhwc(const ConvParams& conv, const Tile& tile, bool stream, const int32_t* counts,
                                        float* scratch) {
  const int64_t r = conv.shuffle, blk = conv.O / r, Ws = conv.Wo * r, Cs = blk / r;
  const bool repeat_as_is = r > 1 && conv.shortcut == kShortcutRepeat && conv.shortcut_k == r * r;
  for (int64_t p = 0; p < tile.pixels; ++p) {
    const float* sc = nullptr;
    if (conv.shortcut) {
      const float* x_pixel = conv.x + ((tile.image * conv.Ho + tile.row) * conv.Wo + tile.x0 + p) * conv.C;
      if (repeat_as_is) {
        finish_pixel_repeat_shuffled(conv, tile, stream, p, counts, x_pixel);
        continue;
      }
      sc = r > 1 ? shortcut_pixel_shuffled(conv, x_pixel, scratch) : shortcut_pixel_nhwc(conv, x_pixel, scratch);
    }
    for (int64_t i = 0; i < r; ++i) {
      float* dst = conv.out + (((tile.image * conv.Ho + tile.row) * r + i) * Ws + (tile.x0 + p) * r) * Cs;
      const int32_t* c = counts + p * conv.out_padded + i * blk;
      const float* sci = sc ? sc + i * blk : nullptr;
      if (stream) epilogue_pixel_channels<true>(c, dst, conv, sci, i * blk, blk);
      else epilogue_pixel_channels<false>(c, dst, conv, sci, i * blk, blk);
    }
  }
}

// NCHW output, not shuffled: each channel's row segment from the channel-major counts
// (by_channel[o][padded]): floats through the epilogue, or the int32 dot products K - 2 count.
BSR_TARGET static void finish_tile_nchw(const ConvParams& conv, const Tile& tile, bool stream,
                                        const int32_t* by_channel, int64_t padded, float* scratch) {
  const int64_t O = conv.O;
  const int32_t kernel_volume = conv.kernel_volume;
  for (int64_t o = 0; o < O; ++o) {
    const int32_t* c = by_channel + o * padded;
    const int64_t offset = ((tile.image * O + o) * conv.Ho + tile.row) * conv.Wo + tile.x0;
    if (conv.out_counts) {
      int32_t* dst = conv.out_counts + offset;
      for (int64_t p = 0; p < tile.pixels; ++p) dst[p] = kernel_volume - 2 * c[p];
      continue;
    }
    const float* sc = conv.shortcut ? shortcut_row_nchw(conv, tile, o, scratch) : nullptr;
    if (stream) epilogue_row_of_channel<true>(c, tile.pixels, conv.out + offset, conv, o, sc);
    else epilogue_row_of_channel<false>(c, tile.pixels, conv.out + offset, conv, o, sc);
  }
}

// Finish one tile from its counts buffers.counts[p][out_padded]: float NCHW / NHWC output,
// pixel-shuffled when conv.shuffle > 1 ([N, O / r^2, Ho r, Wo r]: the tile fills output rows
// row r + i, i < r, columns [x0 r, (x0 + pixels) r), each a contiguous run), or int32 dot
// products (NCHW) for conv_counts.
BSR_TARGET static void finish_tile(const ConvParams& conv, const Tile& tile, const TileBuffers& buffers) {
  const bool stream = BSR_ISA >= 1 && conv.stream;
  if (conv.out_nhwc) {
    finish_tile_nhwc(conv, tile, stream, buffers.counts, buffers.scratch);
    return;
  }
  // NCHW: transpose the tile to channel-major (8 x 8 blocks, all in L1), then write each
  // channel's row segment contiguously.
  const int64_t padded = (tile.pixels + 7) & ~(int64_t)7, out_padded = conv.out_padded;
  for (int64_t p = 0; p < padded; p += 8)
    for (int64_t o = 0; o < out_padded; o += 8)
      transpose_counts8x8(buffers.counts + p * out_padded + o, out_padded, buffers.by_channel + o * padded + p,
                          padded);
  if (conv.shuffle == 1) finish_tile_nchw(conv, tile, stream, buffers.by_channel, padded, buffers.scratch);
  else if (!finish_zipped(conv, tile, stream, buffers.by_channel, padded, buffers.scratch))
    finish_shuffled_via_l1(conv, tile, stream, buffers.by_channel, padded, buffers.scratch);
}

// Tiles [begin, end): tile i = (image, output row, segment of tile_w pixels).
BSR_TARGET static void conv_tiles(const ConvParams& conv, int64_t begin, int64_t end, const TileBuffers& buffers) {
  const int64_t blocks = conv.out_padded / kLanes;
  const int64_t step_stride = blocks * kBlockWords;
  const int64_t pixel_stride = conv.stride_w * conv.in_words * kWordsPerInputWord;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t segment = i % conv.tiles_per_row, out_row = i / conv.tiles_per_row;
    Tile tile;
    tile.image = out_row / conv.Ho;
    tile.row = out_row % conv.Ho;
    tile.x0 = segment * conv.tile_w;
    tile.pixels = conv.Wo - tile.x0 < conv.tile_w ? conv.Wo - tile.x0 : conv.tile_w;
    const int64_t pixels = tile.pixels;
    const uint64_t* window = conv.packed_input + ((tile.image * conv.Hp + tile.row * conv.stride_h) * conv.Wp +
                                                  tile.x0 * conv.stride_w) * conv.in_words * kWordsPerInputWord;
    for (int64_t b0 = 0; b0 < blocks; b0 += kTileBlocks) {
      const int out_blocks = (int)(blocks - b0 < kTileBlocks ? blocks - b0 : kTileBlocks);
      const uint64_t* w = conv.blocked_weights + b0 * kBlockWords;
      int32_t* c = buffers.counts + b0 * kLanes;
      int64_t p = 0;
      for (; p + kTilePixels <= pixels; p += kTilePixels)
        micro_kernel_for_blocks<kTilePixels>(out_blocks, window + p * pixel_stride, pixel_stride, conv.step_offsets,
                                             conv.steps, w, step_stride, c + p * conv.out_padded, conv.out_padded);
      for (; p < pixels; ++p)
        micro_kernel_for_blocks<1>(out_blocks, window + p * pixel_stride, pixel_stride, conv.step_offsets, conv.steps,
                                   w, step_stride, c + p * conv.out_padded, conv.out_padded);
    }
    finish_tile(conv, tile, buffers);
  }
#if BSR_ISA >= 1
  if (conv.stream) _mm_sfence();  // order the streaming stores before the results are used
#endif
}
