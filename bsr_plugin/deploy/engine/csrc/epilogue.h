// Role: the epilogue, counts -> float outputs: y = scale[o] * (K - 2 count) + bias[o], then
// RPReLU (t = y - shift_in; t = t >= 0 ? t : slope * t; y = t + shift_out), then + the real
// shortcut of the float input (identity, repeat, mean), with the same float operations in the
// same order as the float simulation (vector paths included: bit for bit). One output row
// segment of one channel (NCHW) or one pixel's channels (channels_last) at a time; streaming
// stores for outputs far larger than the caches. The pixel-shuffled NCHW output is in
// pixel_shuffle.h. Part of one ISA build (isa_kernels.h): vectors on AVX2 / AVX-512, scalar code
// in the scalar build.
//
// Template flags: kHasRPReLU (shift_in, slope, shift_out are read), kHasShortcut (the shortcut
// values are read and added), kStream (streaming stores).

// One output value (the float simulation's operations, in its order).
template <bool kHasRPReLU, bool kHasShortcut>
BSR_TARGET static inline float epilogue_value(int32_t count, int32_t kernel_volume, float scale, float bias,
                                              float shift_in, float slope, float shift_out, const float* shortcut) {
  float y = scale * (float)(kernel_volume - 2 * count) + bias;
  if (kHasRPReLU) {
    float t = y - shift_in;
    t = t >= 0.0f ? t : slope * t;
    y = t + shift_out;
  }
  if (kHasShortcut) y = y + *shortcut;
  return y;
}

#if BSR_ISA >= 1
// kFloatsPerVector outputs: epilogue_value on vectors (the same operations in the same order),
// from the dot products `dot` (v_dot) and, when kHasShortcut, the shortcut values.
template <bool kHasRPReLU, bool kHasShortcut>
BSR_TARGET static inline vf_t epilogue_vector(vf_t dot, vf_t scale, vf_t bias, vf_t shift_in, vf_t slope,
                                              vf_t shift_out, vf_t shortcut) {
  vf_t y = v_add(v_mul(scale, dot), bias);
  if (kHasRPReLU) {
    const vf_t t = v_sub(y, shift_in);
    y = v_add(v_ge0_else(t, v_mul(slope, t)), shift_out);
  }
  if (kHasShortcut) y = v_add(y, shortcut);
  return y;
}

// Store one vector: streaming (non-temporal) when kStream.
template <bool kStream>
BSR_TARGET static BSR_ALWAYS_INLINE void v_put(float* dst, vf_t v) {
  if (kStream) v_stream(dst, v);
  else v_store(dst, v);
}

// Whether dst is aligned for streaming vector stores.
BSR_TARGET static BSR_ALWAYS_INLINE bool stream_aligned(const float* dst) {
  return reinterpret_cast<uintptr_t>(dst) % (kFloatsPerVector * sizeof(float)) == 0;
}
#endif

// One output row segment of one channel (NCHW), `pixels` values: per-channel scalars, vectors
// over pixels. `shortcut` (the shortcut row) is only read, and only offset, when kHasShortcut.
template <bool kHasRPReLU, bool kHasShortcut, bool kStream>
BSR_TARGET static void epilogue_row(const int32_t* __restrict counts, int64_t pixels, float* __restrict dst,
                                    int32_t kernel_volume, float scale, float bias, float shift_in, float slope,
                                    float shift_out, const float* __restrict shortcut) {
#define BSR_VALUE_AT(p)                                                                                          \
  epilogue_value<kHasRPReLU, kHasShortcut>(counts[p], kernel_volume, scale, bias, shift_in, slope, shift_out,  \
                                           kHasShortcut ? shortcut + (p) : shortcut)
  int64_t p = 0;
#if BSR_ISA >= 1
  if (kStream)  // scalar head up to the vector alignment streaming stores need
    for (; p < pixels && !stream_aligned(dst + p); ++p) dst[p] = BSR_VALUE_AT(p);
  const vf_t vs = v_set1(scale), vb = v_set1(bias), vsi = v_set1(shift_in), vsl = v_set1(slope),
             vso = v_set1(shift_out);
  for (; p + kFloatsPerVector <= pixels; p += kFloatsPerVector) {
    const vf_t y = epilogue_vector<kHasRPReLU, kHasShortcut>(v_dot(counts + p, kernel_volume), vs, vb, vsi, vsl, vso,
                                                             kHasShortcut ? v_load(shortcut + p) : vb);
    v_put<kStream>(dst + p, y);
  }
#endif
  for (; p < pixels; ++p) dst[p] = BSR_VALUE_AT(p);
#undef BSR_VALUE_AT
}

// One output pixel, `channels` consecutive channels (NHWC): vectors over channels. scale, bias,
// shift_in, slope, shift_out, shortcut point at the first of them (the RPReLU ones only read
// when kHasRPReLU, shortcut when kHasShortcut).
template <bool kHasRPReLU, bool kHasShortcut, bool kStream>
BSR_TARGET static void epilogue_pixel(const int32_t* __restrict counts, int64_t channels, float* __restrict dst,
                                      int32_t kernel_volume, const float* __restrict scale,
                                      const float* __restrict bias, const float* __restrict shift_in,
                                      const float* __restrict slope, const float* __restrict shift_out,
                                      const float* __restrict shortcut) {
#define BSR_VALUE_AT(o)                                                                                            \
  epilogue_value<kHasRPReLU, kHasShortcut>(counts[o], kernel_volume, scale[o], bias[o],                            \
                                           kHasRPReLU ? shift_in[o] : 0.f, kHasRPReLU ? slope[o] : 0.f,            \
                                           kHasRPReLU ? shift_out[o] : 0.f, kHasShortcut ? shortcut + (o) : shortcut)
  int64_t o = 0;
#if BSR_ISA >= 1
  if (kStream)
    for (; o < channels && !stream_aligned(dst + o); ++o) dst[o] = BSR_VALUE_AT(o);
  const vf_t zero = v_set1(0.f);
  for (; o + kFloatsPerVector <= channels; o += kFloatsPerVector) {
    const vf_t y = epilogue_vector<kHasRPReLU, kHasShortcut>(
        v_dot(counts + o, kernel_volume), v_load(scale + o), v_load(bias + o), kHasRPReLU ? v_load(shift_in + o) : zero,
        kHasRPReLU ? v_load(slope + o) : zero, kHasRPReLU ? v_load(shift_out + o) : zero,
        kHasShortcut ? v_load(shortcut + o) : zero);
    v_put<kStream>(dst + o, y);
  }
#endif
  for (; o < channels; ++o) dst[o] = BSR_VALUE_AT(o);
#undef BSR_VALUE_AT
}

// epilogue_row of output channel o, the RPReLU / shortcut instance chosen at run time.
template <bool kStream>
BSR_TARGET static inline void epilogue_row_of_channel(const int32_t* counts, int64_t pixels, float* dst,
                                                      const ConvParams& conv, int64_t o, const float* shortcut) {
  const int32_t kv = conv.kernel_volume;  // K
  const float s = conv.scale[o], b = conv.bias[o];
  if (conv.shift_in) {
    const float si = conv.shift_in[o], sl = conv.slope[o], so = conv.shift_out[o];
    if (shortcut) epilogue_row<true, true, kStream>(counts, pixels, dst, kv, s, b, si, sl, so, shortcut);
    else epilogue_row<true, false, kStream>(counts, pixels, dst, kv, s, b, si, sl, so, shortcut);
  } else {
    if (shortcut) epilogue_row<false, true, kStream>(counts, pixels, dst, kv, s, b, 0.f, 0.f, 0.f, shortcut);
    else epilogue_row<false, false, kStream>(counts, pixels, dst, kv, s, b, 0.f, 0.f, 0.f, shortcut);
  }
}

// epilogue_pixel of channels [o0, o0 + channels) of one pixel (NHWC), the RPReLU / shortcut
// instance chosen at run time; `shortcut` points at channel o0's shortcut value or is null.
template <bool kStream>
BSR_TARGET static inline void epilogue_pixel_channels(const int32_t* counts, float* dst, const ConvParams& conv,
                                                      const float* shortcut, int64_t o0, int64_t channels) {
  const int32_t kv = conv.kernel_volume;  // K
  const float *s = conv.scale + o0, *b = conv.bias + o0;
  if (conv.shift_in) {
    const float *si = conv.shift_in + o0, *sl = conv.slope + o0, *so = conv.shift_out + o0;
    if (shortcut) epilogue_pixel<true, true, kStream>(counts, channels, dst, kv, s, b, si, sl, so, shortcut);
    else epilogue_pixel<true, false, kStream>(counts, channels, dst, kv, s, b, si, sl, so, shortcut);
  } else {
    if (shortcut) epilogue_pixel<false, true, kStream>(counts, channels, dst, kv, s, b, nullptr, nullptr, nullptr,
                                                       shortcut);
    else epilogue_pixel<false, false, kStream>(counts, channels, dst, kv, s, b, nullptr, nullptr, nullptr, shortcut);
  }
}

// n contiguous floats from an L1 buffer to the output (kStream: streaming stores after a scalar
// head up to their alignment).
template <bool kStream>
BSR_TARGET static void store_row(const float* __restrict src, int64_t n, float* __restrict dst) {
  int64_t p = 0;
#if BSR_ISA >= 1
  if (kStream) {
    for (; p < n && !stream_aligned(dst + p); ++p) dst[p] = src[p];
    for (; p + kFloatsPerVector <= n; p += kFloatsPerVector) v_stream(dst + p, v_load(src + p));
  }
#endif
  if (p < n) std::memcpy(dst + p, src + p, (size_t)(n - p) * sizeof(float));
}

// ---- shortcut sources (output size == input size) ----------------------------------------

// The shortcut of output channel o for the tile's pixels, NCHW x: a pointer into x (identity,
// repeat) or the mean of shortcut_k channels written to `scratch`. (Always inlined: it runs once
// per channel and tile, and its callers know the shortcut mode.)
BSR_TARGET static BSR_ALWAYS_INLINE const float* shortcut_row_nchw(const ConvParams& conv, const Tile& tile,
                                                                   int64_t o, float* __restrict scratch) {
  const int64_t plane = conv.Ho * conv.Wo, pixels = tile.pixels;
  const float* x_row = conv.x + tile.image * conv.C * plane + tile.row * conv.Wo + tile.x0;
  switch (conv.shortcut) {
    case kShortcutIdentity: return x_row + o * plane;
    case kShortcutRepeat: return x_row + (o / conv.shortcut_k) * plane;
    case kShortcutMean: {
      const float* src = x_row + o * conv.shortcut_k * plane;
      for (int64_t p = 0; p < pixels; ++p) scratch[p] = src[p];
      for (int64_t j = 1; j < conv.shortcut_k; ++j)
        for (int64_t p = 0; p < pixels; ++p) scratch[p] += src[j * plane + p];
      const float k = (float)conv.shortcut_k;
      for (int64_t p = 0; p < pixels; ++p) scratch[p] = scratch[p] / k;
      return scratch;
    }
    default: return nullptr;
  }
}

// The shortcut of one output pixel, all channels, NHWC x (x_pixel = the pixel's C channels).
BSR_TARGET static const float* shortcut_pixel_nhwc(const ConvParams& conv, const float* x_pixel,
                                                   float* __restrict scratch) {
  const int64_t k = conv.shortcut_k;
  switch (conv.shortcut) {
    case kShortcutIdentity: return x_pixel;
    case kShortcutRepeat: {
      for (int64_t c = 0; c < conv.C; ++c)
        for (int64_t j = 0; j < k; ++j) scratch[c * k + j] = x_pixel[c];
      return scratch;
    }
    case kShortcutMean: {
      const float kf = (float)k;
      for (int64_t o = 0; o < conv.O; ++o) {
        float s = x_pixel[o * k];
        for (int64_t j = 1; j < k; ++j) s += x_pixel[o * k + j];
        scratch[o] = s / kf;
      }
      return scratch;
    }
    default: return nullptr;
  }
}

// The shortcut of one output pixel in the permuted channel order of a pixel-shuffled NHWC
// output (see binary_conv2d): channel q takes input channel shortcut_source[q] (identity,
// repeat) or the mean of shortcut_k channels from there, with shortcut_pixel_nhwc's operations.
BSR_TARGET static const float* shortcut_pixel_shuffled(const ConvParams& conv, const float* x_pixel,
                                                       float* __restrict scratch) {
  const int64_t* source = conv.shortcut_source;
  if (conv.shortcut == kShortcutMean) {
    const int64_t k = conv.shortcut_k;
    const float kf = (float)k;
    for (int64_t q = 0; q < conv.O; ++q) {
      const float* g = x_pixel + source[q];
      float s = g[0];
      for (int64_t j = 1; j < k; ++j) s += g[j];
      scratch[q] = s / kf;
    }
  } else {
    for (int64_t q = 0; q < conv.O; ++q) scratch[q] = x_pixel[source[q]];
  }
  return scratch;
}
