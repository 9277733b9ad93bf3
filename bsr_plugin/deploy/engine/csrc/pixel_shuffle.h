// Role: the epilogue writing a pixel-shuffled NCHW output directly (binary_conv2d with
// pixel_shuffle = r > 1): conv channel o = c r^2 + i r + j of pixel (y, x) goes to output channel
// c, pixel (y r + i, x r + j), so output row y r + i of channel c interleaves the row segments of
// the r consecutive conv channels (c r + i) r + j. For r = 2, 3, 4 the r epilogue vectors are
// zipped in registers into r contiguous output vectors (AVX-512 ends a row with one masked
// step); any r goes through an L1 buffer. (channels_last needs no interleave: tiles.h.) Part of
// one ISA build (isa_kernels.h). Template flags as in epilogue.h; kShuffle = r, kShortcutMode =
// a Shortcut code.

// The kShuffle consecutive conv channels one output row interleaves (channel j of them: counts
// at counts + j * count_stride, parameters at index j, shortcut row shortcut[j]).
struct ZipChannels {
  const int32_t* counts;
  int64_t count_stride;
  int32_t kernel_volume;  // K: dot = K - 2 count
  const float *scale, *bias, *shift_in, *slope, *shift_out;  // RPReLU ones only read when kHasRPReLU
  const float* const* shortcut;                              // only read when kHasShortcut
};

// dst[kShuffle p + j] for the channels j < kShuffle: one output pixel of each, scalar.
template <int kShuffle, bool kHasRPReLU, bool kHasShortcut>
BSR_TARGET static BSR_ALWAYS_INLINE void zip_value(const ZipChannels& ch, int64_t p, float* dst) {
  for (int j = 0; j < kShuffle; ++j)
    dst[kShuffle * p + j] = epilogue_value<kHasRPReLU, kHasShortcut>(
        ch.counts[j * ch.count_stride + p], ch.kernel_volume, ch.scale[j], ch.bias[j],
        kHasRPReLU ? ch.shift_in[j] : 0.f, kHasRPReLU ? ch.slope[j] : 0.f, kHasRPReLU ? ch.shift_out[j] : 0.f,
        kHasShortcut ? ch.shortcut[j] + p : nullptr);
}

// Pixels [p, pixels) of the channels, scalar, one channel at a time.
template <int kShuffle, bool kHasRPReLU, bool kHasShortcut>
BSR_TARGET static BSR_ALWAYS_INLINE void zip_scalar_tail(const ZipChannels& ch, int64_t p, int64_t pixels,
                                                         float* dst) {
  for (int j = 0; j < kShuffle; ++j) {
    const int32_t* cj = ch.counts + j * ch.count_stride;
    const float sj = ch.scale[j], bj = ch.bias[j], sij = kHasRPReLU ? ch.shift_in[j] : 0.f,
                slj = kHasRPReLU ? ch.slope[j] : 0.f, soj = kHasRPReLU ? ch.shift_out[j] : 0.f;
    for (int64_t q = p; q < pixels; ++q)
      dst[kShuffle * q + j] = epilogue_value<kHasRPReLU, kHasShortcut>(cj[q], ch.kernel_volume, sj, bj, sij, slj, soj,
                                                                       kHasShortcut ? ch.shortcut[j] + q : nullptr);
  }
}

#if BSR_ISA >= 1
// The epilogue parameters of the kShuffle channels, each broadcast to a vector.
template <int kShuffle>
struct ZipVectors {
  vf_t scale[kShuffle], bias[kShuffle], shift_in[kShuffle], slope[kShuffle], shift_out[kShuffle];
};

template <int kShuffle, bool kHasRPReLU>
BSR_TARGET static BSR_ALWAYS_INLINE void broadcast_channels(const ZipChannels& ch, ZipVectors<kShuffle>& v) {
#pragma GCC unroll 4
  for (int j = 0; j < kShuffle; ++j) {
    v.scale[j] = v_set1(ch.scale[j]);
    v.bias[j] = v_set1(ch.bias[j]);
    v.shift_in[j] = v_set1(kHasRPReLU ? ch.shift_in[j] : 0.f);
    v.slope[j] = v_set1(kHasRPReLU ? ch.slope[j] : 0.f);
    v.shift_out[j] = v_set1(kHasRPReLU ? ch.shift_out[j] : 0.f);
  }
}

// Interleave kShuffle = 2, 3, 4 vectors y[j] (kFloatsPerVector values of channel j each) into
// z[0..kShuffle): y0[0] y1[0] .. y{r-1}[0] y0[1] .. in order. 4 is two levels of 2.
template <int kShuffle>
BSR_TARGET static inline void v_zip(const vf_t* y, vf_t* z) {
  static_assert(kShuffle >= 2 && kShuffle <= 4, "v_zip: 2, 3 or 4 vectors");
  if constexpr (kShuffle == 2) {
    v_zip2(y[0], y[1], z[0], z[1]);
  } else if constexpr (kShuffle == 4) {
    vf_t p0, p1, q0, q1;
    v_zip2(y[0], y[2], p0, p1);  // y0 y2 pairs
    v_zip2(y[1], y[3], q0, q1);  // y1 y3 pairs
    v_zip2(p0, q0, z[0], z[1]);
    v_zip2(p1, q1, z[2], z[3]);
  } else {
    v_zip3(y, z);
  }
}
#endif

#if BSR_ISA == 2
// AVX-512: the last rem = pixels - p < 16 pixels with masked loads and stores (lanes beyond
// `pixels` are neither read nor stored).
template <int kShuffle, bool kHasRPReLU, bool kHasShortcut>
BSR_TARGET static BSR_ALWAYS_INLINE void zip_masked_tail(const ZipChannels& ch, const ZipVectors<kShuffle>& v,
                                                         int64_t p, int64_t pixels, float* dst) {
  const int64_t rem = pixels - p;
  const __mmask16 m = (__mmask16)((1u << rem) - 1u);
  vf_t y[kShuffle], z[kShuffle];
#pragma GCC unroll 4
  for (int j = 0; j < kShuffle; ++j)
    y[j] = epilogue_vector<kHasRPReLU, kHasShortcut>(
        v_dot_masked(ch.counts + j * ch.count_stride + p, ch.kernel_volume, m), v.scale[j], v.bias[j],
        v.shift_in[j], v.slope[j], v.shift_out[j],
        kHasShortcut ? _mm512_maskz_loadu_ps(m, ch.shortcut[j] + p) : v.bias[j]);
  v_zip<kShuffle>(y, z);
#pragma GCC unroll 4
  for (int j = 0; j < kShuffle; ++j) {  // output values [16 j, 16 (j + 1)) of the kShuffle rem valid ones
    const int64_t left = kShuffle * rem - j * kFloatsPerVector;
    if (left <= 0) break;
    const __mmask16 mj = left >= kFloatsPerVector ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
    _mm512_mask_storeu_ps(dst + kShuffle * p + j * kFloatsPerVector, mj, z[j]);
  }
}
#endif

// One output row run: dst[kShuffle p + j] = channel j's output at pixel p, for p < pixels.
// Vectors over the channels' pixels zipped in registers, then (AVX-512) one masked step or
// (other ISAs) scalar code for the last pixels. kStream: a scalar head up to the streaming
// stores' alignment (AVX-512: unless the row is shorter than a vector, then one masked step).
template <int kShuffle, bool kHasRPReLU, bool kHasShortcut, bool kStream>
BSR_TARGET static BSR_ALWAYS_INLINE void epilogue_zip(const ZipChannels& ch, int64_t pixels,
                                                      float* __restrict dst) {
  int64_t p = 0;
#if BSR_ISA >= 1
  if (kStream && (BSR_ISA == 1 || pixels >= kFloatsPerVector))
    for (; p < pixels && !stream_aligned(dst + kShuffle * p); ++p)
      zip_value<kShuffle, kHasRPReLU, kHasShortcut>(ch, p, dst);
  ZipVectors<kShuffle> v;
  broadcast_channels<kShuffle, kHasRPReLU>(ch, v);
  for (; p + kFloatsPerVector <= pixels; p += kFloatsPerVector) {
    vf_t y[kShuffle], z[kShuffle];
#pragma GCC unroll 4
    for (int j = 0; j < kShuffle; ++j)
      y[j] = epilogue_vector<kHasRPReLU, kHasShortcut>(
          v_dot(ch.counts + j * ch.count_stride + p, ch.kernel_volume), v.scale[j], v.bias[j], v.shift_in[j],
          v.slope[j], v.shift_out[j], kHasShortcut ? v_load(ch.shortcut[j] + p) : v.bias[j]);
    v_zip<kShuffle>(y, z);
#pragma GCC unroll 4
    for (int j = 0; j < kShuffle; ++j) v_put<kStream>(dst + kShuffle * p + j * kFloatsPerVector, z[j]);
  }
#if BSR_ISA == 2
  if (p < pixels) {
    zip_masked_tail<kShuffle, kHasRPReLU, kHasShortcut>(ch, v, p, pixels, dst);
    p = pixels;
  }
#endif
#endif
  zip_scalar_tail<kShuffle, kHasRPReLU, kHasShortcut>(ch, p, pixels, dst);
}

// One run of finish_zip: conv channels o .. o + kShuffle - 1 into dst (shortcut rows from x_row,
// the input's row at channel 0; repeat: o = q k + qr, 0 <= qr < k, tracked by the caller).
template <int kShuffle, bool kHasRPReLU, int kShortcutMode, bool kStream>
BSR_TARGET static BSR_ALWAYS_INLINE void zip_run(const ConvParams& conv, const Tile& tile, const int32_t* by_channel,
                                                 int64_t padded, float* scratch, const float* x_row, int64_t o,
                                                 int64_t q, int64_t qr, float* dst) {
  const int64_t plane = conv.Ho * conv.Wo;
  const float* shortcut[kShuffle] = {};
  if constexpr (kShortcutMode == kShortcutIdentity) {
#pragma GCC unroll 4
    for (int j = 0; j < kShuffle; ++j) shortcut[j] = x_row + (o + j) * plane;
  } else if constexpr (kShortcutMode == kShortcutRepeat) {
#pragma GCC unroll 4
    for (int j = 0; j < kShuffle; ++j) {
      shortcut[j] = x_row + q * plane;
      if (++qr == conv.shortcut_k) qr = 0, ++q;
    }
  } else if constexpr (kShortcutMode == kShortcutMean) {
    for (int j = 0; j < kShuffle; ++j) shortcut[j] = shortcut_row_nchw(conv, tile, o + j, scratch + j * padded);
  }
  const bool rp = kHasRPReLU;
  const ZipChannels ch{by_channel + o * padded, padded, conv.kernel_volume, conv.scale + o, conv.bias + o,
                       rp ? conv.shift_in + o : nullptr, rp ? conv.slope + o : nullptr,
                       rp ? conv.shift_out + o : nullptr, shortcut};
  epilogue_zip<kShuffle, kHasRPReLU, kShortcutMode != kShortcutNone, kStream>(ch, tile.pixels, dst);
}

// The repeat shortcut's input channel q of conv channel o = q k + qr (0 <= qr < k), followed as o
// grows by dq k + dr without divisions.
static BSR_ALWAYS_INLINE void advance_repeat(int64_t& q, int64_t& qr, int64_t dq, int64_t dr, int64_t k) {
  q += dq;
  qr += dr;
  if (qr >= k) qr -= k, ++q;
}

// The float output of one tile (channel-major counts by_channel[o][padded]), NCHW, pixel-shuffled
// by kShuffle = 2, 3, 4: output row (tile.row r + i) of channel ch takes the run of conv channels
// (ch r + i) r + j. One instance per (r, RPReLU, shortcut mode, streaming), so the loop over the
// O / r runs has no dispatch; the repeat shortcut's input channel (o + j) / k is tracked without
// divisions. Run order (measured, Zen 4, outputs beyond the L2 written with plain stores):
// r = 2 channel by channel (its r rows in turn), r = 3, 4 row by row (row i of every channel).
// scratch: the r mean-shortcut rows.
template <int kShuffle, bool kHasRPReLU, int kShortcutMode, bool kStream>
BSR_TARGET static void finish_zip(const ConvParams& conv, const Tile& tile, const int32_t* by_channel, int64_t padded,
                                  float* scratch) {
  constexpr int r = kShuffle;
  const int64_t Cs = conv.O / (r * r), Hs = conv.Ho * r, Ws = conv.Wo * r, k = conv.shortcut_k;
  float* base = conv.out + (tile.image * Cs * Hs + tile.row * r) * Ws + tile.x0 * r;  // channel 0, row tile.row r
  // shortcut rows (output size == input size): row tile.row, pixels from x0 of input channel 0
  const float* x_row = kShortcutMode != kShortcutNone
                           ? conv.x + tile.image * conv.C * conv.Ho * conv.Wo + tile.row * conv.Wo + tile.x0
                           : nullptr;
  if constexpr (r == 2) {
    int64_t q = 0, qr = 0;  // repeat: o = q k + qr, 0 <= qr < k; o grows by r per run
    const int64_t dq = r / k, dr = r % k;
    for (int64_t ch = 0; ch < Cs; ++ch)
#pragma GCC unroll 2
      for (int i = 0; i < r; ++i) {
        zip_run<r, kHasRPReLU, kShortcutMode, kStream>(conv, tile, by_channel, padded, scratch, x_row,
                                                        (ch * r + i) * r, q, qr, base + (ch * Hs + i) * Ws);
        advance_repeat(q, qr, dq, dr, k);
      }
  } else {
    const int64_t dq = r * r / k, dr = r * r % k;  // o grows by r^2 per channel
    for (int i = 0; i < r; ++i) {
      int64_t q = i * r / k, qr = i * r % k;
      for (int64_t ch = 0; ch < Cs; ++ch) {
        zip_run<r, kHasRPReLU, kShortcutMode, kStream>(conv, tile, by_channel, padded, scratch, x_row,
                                                        (ch * r + i) * r, q, qr, base + (ch * Hs + i) * Ws);
        advance_repeat(q, qr, dq, dr, k);
      }
    }
  }
}

// finish_zip with its shortcut instance chosen at run time.
template <int kShuffle, bool kHasRPReLU, bool kStream>
BSR_TARGET static void finish_zip_by_shortcut(const ConvParams& conv, const Tile& tile, const int32_t* by_channel,
                                              int64_t padded, float* scratch) {
  constexpr int r = kShuffle;
  constexpr bool rp = kHasRPReLU;
  switch (conv.shortcut) {
    case kShortcutIdentity:
      finish_zip<r, rp, kShortcutIdentity, kStream>(conv, tile, by_channel, padded, scratch);
      break;
    case kShortcutRepeat: finish_zip<r, rp, kShortcutRepeat, kStream>(conv, tile, by_channel, padded, scratch); break;
    case kShortcutMean: finish_zip<r, rp, kShortcutMean, kStream>(conv, tile, by_channel, padded, scratch); break;
    default: finish_zip<r, rp, kShortcutNone, kStream>(conv, tile, by_channel, padded, scratch); break;
  }
}

// finish_zip with its RPReLU and shortcut instance chosen at run time.
template <int kShuffle, bool kStream>
BSR_TARGET static void finish_zip_any(const ConvParams& conv, const Tile& tile, const int32_t* by_channel,
                                      int64_t padded, float* scratch) {
  if (conv.shift_in) finish_zip_by_shortcut<kShuffle, true, kStream>(conv, tile, by_channel, padded, scratch);
  else finish_zip_by_shortcut<kShuffle, false, kStream>(conv, tile, by_channel, padded, scratch);
}

// The zipped finish of a tile for r = conv.shuffle in 2, 3, 4; false for any other r.
BSR_TARGET static bool finish_zipped(const ConvParams& conv, const Tile& tile, bool stream, const int32_t* by_channel,
                                     int64_t padded, float* scratch) {
  switch (conv.shuffle) {
#define BSR_ZIP(r)                                                                         \
  case r:                                                                                  \
    if (stream) finish_zip_any<r, true>(conv, tile, by_channel, padded, scratch);          \
    else finish_zip_any<r, false>(conv, tile, by_channel, padded, scratch);                \
    return true;
    BSR_ZIP(2) BSR_ZIP(3) BSR_ZIP(4)
#undef BSR_ZIP
    default: return false;
  }
}

// Any r (NCHW): output row tile.row r + i of channel c interleaves the row segments of the r conv
// channels o + j = g r + j (g = c r + i): the r rows into L1 (scratch: one mean-shortcut row, the
// r rows, the interleaved run), interleaved there, then stored as one run.
BSR_TARGET static void finish_shuffled_via_l1(const ConvParams& conv, const Tile& tile, bool stream,
                                              const int32_t* by_channel, int64_t padded, float* scratch) {
  const int64_t r = conv.shuffle, pixels = tile.pixels;
  const int64_t Cs = conv.O / (r * r), Hs = conv.Ho * r, Ws = conv.Wo * r;
  for (int64_t g = 0; g < conv.O / r; ++g) {
    const int64_t c = g / r, i = g % r, o = g * r;
    float* dst = conv.out + ((tile.image * Cs + c) * Hs + tile.row * r + i) * Ws + tile.x0 * r;
    float* rows = scratch + padded;
    float* run = rows + r * padded;
    for (int64_t j = 0; j < r; ++j) {
      const float* sc = conv.shortcut ? shortcut_row_nchw(conv, tile, o + j, scratch) : nullptr;
      epilogue_row_of_channel<false>(by_channel + (o + j) * padded, pixels, rows + j * padded, conv, o + j, sc);
    }
    for (int64_t p = 0; p < pixels; ++p)
      for (int64_t j = 0; j < r; ++j) run[p * r + j] = rows[j * padded + p];
    if (stream) store_row<true>(run, pixels * r, dst);
    else store_row<false>(run, pixels * r, dst);
  }
}
