// Role: the ops of the bit-packed XNOR-popcount engine (CPU inference of binarized convs and
// linears): argument checks, the run-time choice of the instruction set, buffers and threads;
// the kernels themselves are in the headers (README.md: the files, the layout, the ISA paths).
// x86-64 only (common.h stops the build elsewhere; build.py does not try it there).
//
// Semantics (the float simulation, bsr_plugin/deploy/engine/kernels.py):
//   xb  = x - threshold[c] >= 0 ? +1 : -1;  padded with +1 (sign of a zero-padded input)
//   dot = conv2d(xb, sign(w)) (groups 1, any kernel, stride, dilation)
//   y   = scale[o] * dot + bias[o];  optional RPReLU;  + real shortcut of x;  optional pixel shuffle
//
// Bit layout (that of bsr_plugin.core.bits): bit 1 = sign +1 (value >= 0), bit 0 = -1.
//   packed input   int64 [N, Hp, Wp, in_words]   NHWC words, in_words = ceil(C / 64); channel c
//                                                is bit c % 64 of word c / 64; padding pixels
//                                                have all valid lanes set; lanes >= C are 0.
//   packed weight  int64 [O, KH, KW, in_words]   (linear: [N, in_words]), same lane rule.
// With lanes beyond C zero in both operands, for one output (pixel, channel):
//   dot = K - 2 * sum over taps and words of popcount(a XOR w),   K = C * KH * KW,
// the sum being over steps = KH * KW * in_words; step t reads the input word at a fixed offset
// step_offsets[t] = (kh * dh * Wp + kw * dw) * in_words + word from the pixel's window origin,
// so one loop handles every kernel size, dilation and channel count, and the stride only
// changes the distance between neighbouring output pixels.
//
// Tiles (tiles.h) are spread over threads with at::parallel_for (torch.set_num_threads
// applies). Fused pixel shuffle (binary_conv2d, r > 1): the output is F.pixel_shuffle(y, r),
// written directly (pixel_shuffle.h for NCHW; channels_last permutes the conv's channels, see
// shuffle_permutation below). Same float operations as unshuffled, so the result equals
// F.pixel_shuffle of the unshuffled output bit for bit.
//
// Argument errors are TORCH_CHECK_VALUE (Python: ValueError; kernels.py raises EngineError for
// them); any other failure is a RuntimeError.

#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common.h"

// ---- the three ISA builds of the kernels (isa_kernels.h) ---------------------------------
// Register tiles of the micro-kernels (pixels x blocks of output channels): compile-time
// tuning knobs, the defaults measured best on Zen 4 (-DBSR_AVX512_P=... to try others).
#ifndef BSR_AVX512_P
#define BSR_AVX512_P 4
#endif
#ifndef BSR_AVX512_OB
#define BSR_AVX512_OB 4
#endif
#ifndef BSR_AVX2_P
#define BSR_AVX2_P 3
#endif
#ifndef BSR_AVX2_OB
#define BSR_AVX2_OB 2
#endif

namespace bsr_engine {

namespace scalar {
namespace {
#define BSR_ISA 0
#define BSR_TARGET
#include "isa_kernels.h"
#undef BSR_TARGET
#undef BSR_ISA
}  // namespace
}  // namespace scalar

namespace avx2 {
namespace {
#define BSR_ISA 1
#define BSR_TARGET __attribute__((target("avx2,popcnt,bmi2")))
#include "isa_kernels.h"
#undef BSR_TARGET
#undef BSR_ISA
}  // namespace
}  // namespace avx2

namespace avx512 {
namespace {
#define BSR_ISA 2
#define BSR_TARGET __attribute__((target("avx2,popcnt,bmi2,avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
#include "isa_kernels.h"
#undef BSR_TARGET
#undef BSR_ISA
}  // namespace
}  // namespace avx512

namespace {

// ---- run-time ISA selection ------------------------------------------------------------
// What engine.cpp needs of one ISA build.
struct IsaImpl {
  const char* name;
  int lanes, words_per_input_word;
  ExpandInputFn expand_input;  // null when the micro-kernel reads the packed words as they are
  void (*pack_rows)(const PackParams&, int64_t, int64_t);
  int64_t (*blocked_weight_words)(int64_t, int64_t);
  void (*repack_weights)(const uint64_t*, int64_t, int64_t, int64_t, uint64_t*);
  void (*conv_tiles)(const ConvParams&, int64_t, int64_t, const TileBuffers&);
  uint64_t (*roofline)(const uint64_t*, const uint64_t*, int64_t, int64_t);
};

#define BSR_IMPL(ns)                                                                                          \
  IsaImpl {                                                                                                   \
    #ns, ns::kLanes, ns::kWordsPerInputWord, ns::kExpandInput, ns::pack_rows, ns::blocked_weight_words,       \
        ns::repack_weights, ns::conv_tiles, ns::roofline                                                      \
  }
enum Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kIsaCount = 3;
const IsaImpl kImpls[kIsaCount] = {BSR_IMPL(scalar), BSR_IMPL(avx2), BSR_IMPL(avx512)};
#undef BSR_IMPL
const char* kRequirements[kIsaCount] = {"nothing", "AVX2, POPCNT and BMI2", "AVX-512 F, BW, VL and VPOPCNTDQ"};

// The ISA setting: an Isa, or one of these.
constexpr int kIsaAuto = -1;     // the best the CPU has
constexpr int kIsaFromEnv = -2;  // BSR_ENGINE_ISA, resolved on first use
constexpr int kIsaUnknown = -3;  // a name that is no setting

bool cpu_supports(int isa) {
  __builtin_cpu_init();
  switch (isa) {
    case kScalar: return true;
    case kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi2");
    case kAvx512:
      return cpu_supports(kAvx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
    default: return false;
  }
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (int i = kIsaCount - 1; i >= 0; --i)
    if (cpu_supports(i)) names.emplace_back(kImpls[i].name);
  return names;
}

int setting_of(const std::string& name) {
  if (name.empty() || name == "auto") return kIsaAuto;
  for (int i = 0; i < kIsaCount; ++i)
    if (name == kImpls[i].name) return i;
  return kIsaUnknown;
}

// Why `name` (given as origin=name) cannot be the setting, or "" when it can.
std::string isa_error(const std::string& name, const char* origin) {
  const int setting = setting_of(name);
  const std::string given = std::string(origin) + "=" + name;
  if (setting == kIsaUnknown) return given + " is not an ISA of the packed engine: choose auto, avx512, avx2 or scalar";
  if (setting >= 0 && !cpu_supports(setting)) {
    std::string supported;
    for (const auto& isa : available_isas()) supported += (supported.empty() ? "" : ", ") + isa;
    return given + " needs " + kRequirements[setting] + ", which this CPU lacks; it supports: " + supported +
           " (or use auto)";
  }
  return "";
}

int parse_isa(const std::string& name, const char* origin) {
  const std::string error = isa_error(name, origin);
  TORCH_CHECK_VALUE(error.empty(), error);
  return setting_of(name);
}

std::string env_isa() {
  const char* env = std::getenv("BSR_ENGINE_ISA");
  return env ? env : "";
}

std::atomic<int> g_isa{kIsaFromEnv};

int current_isa() {
  int setting = g_isa.load();
  if (setting == kIsaFromEnv) {
    setting = parse_isa(env_isa(), "BSR_ENGINE_ISA");
    g_isa.store(setting);
  }
  if (setting == kIsaAuto) return cpu_supports(kAvx512) ? kAvx512 : (cpu_supports(kAvx2) ? kAvx2 : kScalar);
  return setting;
}

// Why the ops cannot run now (BSR_ENGINE_ISA names an unknown ISA or one this CPU lacks), or "".
std::string isa_problem() { return g_isa.load() == kIsaFromEnv ? isa_error(env_isa(), "BSR_ENGINE_ISA") : ""; }

void set_isa(c10::string_view name) {
  const std::string s(name.data(), name.size());
  if (s == "env") g_isa.store(kIsaFromEnv);  // back to BSR_ENGINE_ISA (resolved on next use)
  else g_isa.store(parse_isa(s, "isa"));
}

std::string get_isa() { return kImpls[current_isa()].name; }

// The selection itself: "env" (BSR_ENGINE_ISA, not resolved yet), "auto" or an ISA name.
std::string isa_setting() {
  const int setting = g_isa.load();
  return setting == kIsaFromEnv ? "env" : (setting == kIsaAuto ? "auto" : kImpls[setting].name);
}

// ---- argument checks (ValueError in Python) ------------------------------------------------
void check_cpu_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), what, " must be on the CPU, got ", t.device());
  TORCH_CHECK_VALUE(t.scalar_type() == at::kFloat, what, " must be float32, got ", t.scalar_type());
}

// A per-channel float vector of n values (contiguous float32), or an undefined tensor.
at::Tensor channel_vector(const c10::optional<at::Tensor>& t, int64_t n, const char* what) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_cpu_float(*t, what);
  TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == n, what, " must have shape [", n, "], got ", t->sizes());
  return t->contiguous();
}

bool defined(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// (top, bottom, left, right)
std::array<int64_t, 4> four(c10::IntArrayRef v, const char* what) {
  TORCH_CHECK_VALUE(v.size() == 4, what, " must have 4 values (top, bottom, left, right), got ", v.size());
  for (auto p : v) TORCH_CHECK_VALUE(p >= 0, what, " must be non-negative, got ", v);
  return {v[0], v[1], v[2], v[3]};
}

std::array<int64_t, 2> two(c10::IntArrayRef v, const char* what) {
  TORCH_CHECK_VALUE(v.size() == 2, what, " must have 2 values, got ", v.size());
  for (auto p : v) TORCH_CHECK_VALUE(p >= 1, what, " must be >= 1, got ", v);
  return {v[0], v[1]};
}

void check_packed_input(const at::Tensor& xp) {
  TORCH_CHECK_VALUE(xp.device().is_cpu() && xp.scalar_type() == at::kLong && xp.dim() == 4,
                    "packed input must be a CPU int64 tensor [N, Hp, Wp, in_words] (from pack_input), got ",
                    xp.scalar_type(), " ", xp.sizes());
}

void check_packed_weight(const at::Tensor& wp, int64_t C) {
  TORCH_CHECK_VALUE(wp.device().is_cpu() && wp.scalar_type() == at::kLong && wp.dim() == 4,
                    "packed weight must be a CPU int64 tensor [O, KH, KW, in_words] (from pack_weight), got ",
                    wp.scalar_type(), " ", wp.sizes());
  TORCH_CHECK_VALUE(wp.size(3) == ceil_div(C, 64), "packed weight has ", wp.size(3), " words per tap but ", C,
                    " input channels need ", ceil_div(C, 64));
  TORCH_CHECK_VALUE(wp.size(0) >= 1 && wp.size(1) >= 1 && wp.size(2) >= 1,
                    "packed weight has an empty dimension: ", wp.sizes());
}

void check_packed_linear_weight(const at::Tensor& wp, int64_t K) {
  TORCH_CHECK_VALUE(wp.device().is_cpu() && wp.scalar_type() == at::kLong && wp.dim() == 2 && wp.size(0) >= 1 &&
                        wp.size(1) == ceil_div(K, 64),
                    "packed linear weight must be a CPU int64 tensor [N, ", ceil_div(K, 64),
                    "] (from pack_weight), got ", wp.scalar_type(), " ", wp.sizes());
}

// x [N, C, H, W] and the layer's weight / pixel shuffle of binary_conv2d.
void check_conv_input(const at::Tensor& x, const at::Tensor& wp, int64_t C, int64_t r) {
  check_cpu_float(x, "x");
  TORCH_CHECK_VALUE(x.dim() == 4, "x must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK_VALUE(x.size(1) == C, "x has ", x.size(1), " channels, the layer ", C);
  check_packed_weight(wp, C);
  // r <= O / r first: r * r cannot overflow
  TORCH_CHECK_VALUE(r >= 1 && r <= wp.size(0) / r && wp.size(0) % (r * r) == 0, "pixel_shuffle=", r,
                    " needs the output channels (", wp.size(0), ") to be a multiple of pixel_shuffle^2: use a conv ",
                    "with out_channels = k * ", r, "^2, or pixel_shuffle=1");
  TORCH_CHECK_VALUE(C * wp.size(1) * wp.size(2) < (1 << 24), "C * KH * KW must be below 2^24");
}

// Output size of one dimension; checks the kernel fits.
int64_t out_size(int64_t in_padded, int64_t k, int64_t s, int64_t d, const char* dim) {
  const int64_t span = d * (k - 1) + 1;
  TORCH_CHECK_VALUE(in_padded >= span, "the padded input ", dim, " (", in_padded,
                    ") is smaller than the dilated kernel (", span, ")");
  return (in_padded - span) / s + 1;
}

// The shortcut code and its k (repeat: O = k C, mean: C = k O) into conv.
void set_shortcut(ConvParams& conv, int64_t shortcut, int64_t O, int64_t C) {
  TORCH_CHECK_VALUE(shortcut >= kShortcutNone && shortcut <= kShortcutMean,
                    "shortcut code must be 0 (none), 1 (identity), 2 (repeat) or 3 (mean), got ", shortcut);
  conv.shortcut = shortcut;
  if (shortcut == kShortcutIdentity)
    TORCH_CHECK_VALUE(O == C, "identity shortcut needs as many outputs as inputs, got ", C, " -> ", O);
  if (shortcut == kShortcutRepeat) {
    TORCH_CHECK_VALUE(O % C == 0, "repeat shortcut needs outputs = k * inputs, got ", C, " -> ", O);
    conv.shortcut_k = O / C;
  }
  if (shortcut == kShortcutMean) {
    TORCH_CHECK_VALUE(C % O == 0, "mean shortcut needs inputs = k * outputs, got ", C, " -> ", O);
    conv.shortcut_k = C / O;
  }
}

// Scale / bias / RPReLU / shortcut arguments into conv; returns the tensors to keep alive.
std::vector<at::Tensor> set_epilogue(ConvParams& conv, int64_t O, int64_t C, const at::Tensor& scale,
                                     const c10::optional<at::Tensor>& bias, int64_t shortcut,
                                     const c10::optional<at::Tensor>& shift_in, const c10::optional<at::Tensor>& slope,
                                     const c10::optional<at::Tensor>& shift_out) {
  std::vector<at::Tensor> keep;
  keep.push_back(channel_vector(scale, O, "scale"));
  at::Tensor b = channel_vector(bias, O, "bias");
  if (!b.defined()) b = at::zeros({O}, scale.options());
  keep.push_back(b);
  conv.scale = keep[0].data_ptr<float>();
  conv.bias = b.data_ptr<float>();
  if (defined(shift_in) || defined(slope) || defined(shift_out)) {
    auto si = channel_vector(shift_in, O, "rprelu shift_in"), sl = channel_vector(slope, O, "rprelu slope"),
         so = channel_vector(shift_out, O, "rprelu shift_out");
    TORCH_CHECK_VALUE(si.defined() && sl.defined() && so.defined(),
                      "rprelu needs all of shift_in, slope and shift_out");
    keep.insert(keep.end(), {si, sl, so});
    conv.shift_in = si.data_ptr<float>();
    conv.slope = sl.data_ptr<float>();
    conv.shift_out = so.data_ptr<float>();
  }
  set_shortcut(conv, shortcut, O, C);
  return keep;
}

// ---- buffers, packing and the conv run -------------------------------------------------------

// Layout of x for the engine: channels_last stays channels_last, anything else becomes NCHW.
bool take_layout(at::Tensor& x) {
  const bool nhwc = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  x = x.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  return nhwc;
}

// Pack x (NCHW contiguous or channels_last) into out [N, Hp, Wp, in_words], padded by
// pad = (top, bottom, left, right).
void pack_into(const IsaImpl& impl, const at::Tensor& x, bool nhwc, const at::Tensor& threshold,
               const std::array<int64_t, 4>& pad, at::Tensor& out) {
  PackParams pack;
  pack.x = x.data_ptr<float>();
  pack.nhwc = nhwc;
  pack.N = x.size(0);
  pack.C = x.size(1);
  pack.H = x.size(2);
  pack.W = x.size(3);
  pack.threshold = threshold.defined() ? threshold.data_ptr<float>() : nullptr;
  pack.pad_top = pad[0];
  pack.pad_left = pad[2];
  pack.Hp = pack.H + pad[0] + pad[1];
  pack.Wp = pack.W + pad[2] + pad[3];
  pack.in_words = ceil_div(pack.C, 64);
  pack.out = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const int64_t rows = pack.N * pack.Hp;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, pack.W * pack.C / 64 + 1));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) { impl.pack_rows(pack, b, e); });
}

// The rows of x [M, K] as the pixels of a 1 x M channels_last image, packed into xp
// [1, 1, M, in_words]; the row is split over threads by pixel ranges.
void pack_linear_rows(const IsaImpl& impl, const at::Tensor& x, const at::Tensor& threshold, at::Tensor& xp) {
  const int64_t M = x.size(0), K = x.size(1);
  PackParams pack;
  pack.x = x.data_ptr<float>();
  pack.nhwc = true;
  pack.N = 1;
  pack.C = K;
  pack.H = 1;
  pack.W = M;
  pack.threshold = threshold.defined() ? threshold.data_ptr<float>() : nullptr;
  pack.Hp = 1;
  pack.Wp = M;
  pack.in_words = ceil_div(K, 64);
  pack.out = reinterpret_cast<uint64_t*>(xp.data_ptr<int64_t>());
  at::parallel_for(0, M, 256, [&](int64_t b, int64_t e) {
    PackParams part = pack;
    part.x = pack.x + b * K;
    part.W = e - b;
    part.Wp = e - b;
    part.out = pack.out + b * pack.in_words;
    impl.pack_rows(part, 0, 1);
  });
}

// Buffers a conv needs besides its tensors: blocked weights and per-step input offsets; for a
// channels_last pixel shuffle also the permuted epilogue parameters and shortcut sources.
struct ConvStorage {
  std::vector<uint64_t> blocked_weights;
  std::vector<int64_t> step_offsets;
  std::vector<float> params;
  std::vector<int64_t> shortcut_source;
};

// The packed weight [O, steps] in the ISA's blocked layout, rows permuted by perm (O entries,
// or null for the identity: conv channel q is the weight's channel perm[q]).
void block_weights(const IsaImpl& impl, const at::Tensor& wp, const int64_t* perm, ConvParams& conv,
                   ConvStorage& st) {
  const at::Tensor wpc = wp.contiguous();
  const uint64_t* w = reinterpret_cast<const uint64_t*>(wpc.data_ptr<int64_t>());
  std::vector<uint64_t> permuted;
  if (perm) {
    permuted.resize((size_t)(conv.O * conv.steps));
    for (int64_t q = 0; q < conv.O; ++q)
      std::memcpy(permuted.data() + q * conv.steps, w + perm[q] * conv.steps, (size_t)conv.steps * sizeof(uint64_t));
    w = permuted.data();
  }
  st.blocked_weights.assign((size_t)impl.blocked_weight_words(conv.out_padded, conv.steps), 0);
  impl.repack_weights(w, conv.O, conv.steps, conv.out_padded, st.blocked_weights.data());
  conv.blocked_weights = st.blocked_weights.data();
}

// conv's geometry (conv.Ho / conv.Wo set by the caller), blocked weights, per-step input offsets
// and the tiling, for a padded input of N x Hp x Wp pixels (perm: see block_weights).
void prepare_conv(const IsaImpl& impl, int64_t N, int64_t Hp, int64_t Wp, const at::Tensor& wp, int64_t C,
                  const std::array<int64_t, 2>& stride, const std::array<int64_t, 2>& dilation, ConvParams& conv,
                  ConvStorage& st, const int64_t* perm = nullptr) {
  const int64_t KH = wp.size(1), KW = wp.size(2), in_words = wp.size(3);
  conv.N = N;
  conv.Hp = Hp;
  conv.Wp = Wp;
  conv.in_words = in_words;
  conv.C = C;
  conv.O = wp.size(0);
  conv.out_padded = ceil_div(conv.O, 8) * 8;
  conv.stride_h = stride[0];
  conv.stride_w = stride[1];
  conv.steps = KH * KW * in_words;
  conv.kernel_volume = (int32_t)(C * KH * KW);
  block_weights(impl, wp, perm, conv, st);
  st.step_offsets.assign((size_t)conv.steps, 0);
  for (int64_t kh = 0, t = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw)
      for (int64_t word = 0; word < in_words; ++word, ++t)
        st.step_offsets[(size_t)t] =
            ((kh * dilation[0] * Wp + kw * dilation[1]) * in_words + word) * impl.words_per_input_word;
  conv.step_offsets = st.step_offsets.data();
  // tiles: a row segment of up to 64 pixels, fewer for wide layers (count buffer <= 16 KB)
  int64_t tile_w = std::max<int64_t>(8, std::min<int64_t>(64, (4096 / conv.out_padded) / 8 * 8));
  tile_w = std::min(tile_w, ceil_div(conv.Wo, 8) * 8);
  conv.tile_w = tile_w;
  conv.tiles_per_row = ceil_div(conv.Wo, tile_w);
}

// Per-thread buffers of the tiles (see TileBuffers).
struct TileScratch {
  std::vector<int32_t> counts;
  std::vector<float> scratch;
  explicit TileScratch(const ConvParams& conv)
      : counts((size_t)(2 * conv.tile_w * conv.out_padded)),
        scratch((size_t)std::max((2 * conv.shuffle + 1) * conv.tile_w, conv.out_padded)) {}
  TileBuffers buffers() {
    return TileBuffers{counts.data(), counts.data() + counts.size() / 2, scratch.data()};
  }
};

// The conv of a packed input xp [N, Hp, Wp, in_words].
void run_packed(const IsaImpl& impl, const at::Tensor& xp, ConvParams& conv) {
  conv.packed_input = reinterpret_cast<const uint64_t*>(xp.data_ptr<int64_t>());
  std::vector<uint64_t> expanded;  // the micro-kernel's input form, when it is not the packed words
  if (impl.expand_input) {
    const int64_t words = xp.numel();
    expanded.resize((size_t)(words * impl.words_per_input_word));
    at::parallel_for(0, words, 4096,
                     [&](int64_t b, int64_t e) { impl.expand_input(conv.packed_input, b, e, expanded.data()); });
    conv.packed_input = expanded.data();
  }
  const int64_t tiles = conv.N * conv.Ho * conv.tiles_per_row;
  if (tiles == 0) return;
  at::parallel_for(0, tiles, 1, [&](int64_t b, int64_t e) {
    TileScratch scratch(conv);
    impl.conv_tiles(conv, b, e, scratch.buffers());
  });
}

// channels_last pixel shuffle by r: conv channel q = (i r + j) Cs + c is the layer's
// o = c r^2 + i r + j (see finish_tile_nhwc in tiles.h). Permutes the epilogue parameters and
// the shortcut sources (into st); returns perm (perm[q] = o) for the weight rows.
std::vector<int64_t> shuffle_permutation(ConvParams& conv, ConvStorage& st, int64_t O, int64_t r) {
  const int64_t Cs = O / (r * r);
  std::vector<int64_t> perm((size_t)O);
  for (int64_t q = 0; q < O; ++q) perm[(size_t)q] = (q % Cs) * r * r + q / Cs;
  const float* src[5] = {conv.scale, conv.bias, conv.shift_in, conv.slope, conv.shift_out};
  const float** dst[5] = {&conv.scale, &conv.bias, &conv.shift_in, &conv.slope, &conv.shift_out};
  st.params.resize((size_t)(5 * O));
  for (int k = 0; k < 5; ++k) {
    if (!src[k]) continue;  // no RPReLU
    float* pk = st.params.data() + k * O;
    for (int64_t q = 0; q < O; ++q) pk[q] = src[k][perm[(size_t)q]];
    *dst[k] = pk;
  }
  if (conv.shortcut != kShortcutNone) {
    st.shortcut_source.resize((size_t)O);
    for (int64_t q = 0; q < O; ++q) {
      const int64_t o = perm[(size_t)q];
      st.shortcut_source[(size_t)q] = conv.shortcut == kShortcutRepeat ? o / conv.shortcut_k
                                      : conv.shortcut == kShortcutMean ? o * conv.shortcut_k
                                                                       : o;
    }
    conv.shortcut_source = st.shortcut_source.data();
  }
  return perm;
}

// ---- ops -------------------------------------------------------------------------------
at::Tensor pack_input(const at::Tensor& x_in, const c10::optional<at::Tensor>& threshold, c10::IntArrayRef padding) {
  check_cpu_float(x_in, "x");
  TORCH_CHECK_VALUE(x_in.dim() == 4, "x must be [N, C, H, W], got ", x_in.sizes());
  TORCH_CHECK_VALUE(x_in.size(1) >= 1, "x has no channels");
  const auto pad = four(padding, "padding");
  at::Tensor x = x_in;
  const bool nhwc = take_layout(x);
  const at::Tensor thr = channel_vector(threshold, x.size(1), "threshold");
  at::Tensor out = at::empty({x.size(0), x.size(2) + pad[0] + pad[1], x.size(3) + pad[2] + pad[3],
                              ceil_div(x.size(1), 64)}, x.options().dtype(at::kLong));
  pack_into(kImpls[current_isa()], x, nhwc, thr, pad, out);
  return out;
}

at::Tensor pack_weight(const at::Tensor& w_in) {
  check_cpu_float(w_in, "weight");
  TORCH_CHECK_VALUE(w_in.dim() == 4 || w_in.dim() == 2,
                    "weight must be a conv weight [O, C, KH, KW] or a linear weight [N, K], got ", w_in.sizes());
  const at::Tensor w = w_in.contiguous();
  const bool conv = w.dim() == 4;
  const int64_t O = w.size(0), C = w.size(1), KH = conv ? w.size(2) : 1, KW = conv ? w.size(3) : 1;
  TORCH_CHECK_VALUE(C >= 1, "weight has no input channels");
  const int64_t in_words = ceil_div(C, 64);
  at::Tensor out = conv ? at::empty({O, KH, KW, in_words}, w.options().dtype(at::kLong))
                        : at::empty({O, in_words}, w.options().dtype(at::kLong));
  const float* src = w.data_ptr<float>();
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, O, 16, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      for (int64_t k = 0; k < KH * KW; ++k)
        for (int64_t word = 0; word < in_words; ++word) {
          uint64_t bits = 0;
          for (int64_t c = word * 64; c < std::min(C, word * 64 + 64); ++c)
            bits |= (uint64_t)(src[(o * C + c) * KH * KW + k] >= 0.0f) << (c - word * 64);
          dst[(o * KH * KW + k) * in_words + word] = bits;
        }
  });
  return out;
}

at::Tensor conv_counts(const at::Tensor& xp_in, const at::Tensor& wp, int64_t C, c10::IntArrayRef stride,
                       c10::IntArrayRef dilation) {
  check_packed_input(xp_in);
  check_packed_weight(wp, C);
  TORCH_CHECK_VALUE(C >= 1 && C * wp.size(1) * wp.size(2) < (1 << 24), "in_channels out of range: ", C);
  TORCH_CHECK_VALUE(xp_in.size(3) == wp.size(3), "packed input has ", xp_in.size(3), " words per pixel, the weight ",
                    wp.size(3));
  const auto s = two(stride, "stride"), d = two(dilation, "dilation");
  const at::Tensor xp = xp_in.contiguous();
  ConvParams conv;
  conv.Ho = out_size(xp.size(1), wp.size(1), s[0], d[0], "height");
  conv.Wo = out_size(xp.size(2), wp.size(2), s[1], d[1], "width");
  at::Tensor out = at::empty({xp.size(0), wp.size(0), conv.Ho, conv.Wo}, xp.options().dtype(at::kInt));
  conv.out_counts = out.data_ptr<int32_t>();
  const IsaImpl& impl = kImpls[current_isa()];
  ConvStorage st;
  prepare_conv(impl, xp.size(0), xp.size(1), xp.size(2), wp, C, s, d, conv, st);
  run_packed(impl, xp, conv);
  return out;
}

at::Tensor binary_conv2d(const at::Tensor& x_in, const at::Tensor& wp, int64_t C, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& threshold,
                         int64_t shortcut, const c10::optional<at::Tensor>& shift_in,
                         const c10::optional<at::Tensor>& slope, const c10::optional<at::Tensor>& shift_out,
                         int64_t pixel_shuffle) {
  const int64_t r = pixel_shuffle;
  check_conv_input(x_in, wp, C, r);
  const auto pad = four(padding, "padding");
  const auto s = two(stride, "stride"), d = two(dilation, "dilation");
  at::Tensor x = x_in;
  const bool nhwc = take_layout(x);
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), Hp = H + pad[0] + pad[1], Wp = W + pad[2] + pad[3];
  const int64_t O = wp.size(0);
  const IsaImpl& impl = kImpls[current_isa()];
  ConvParams conv;
  conv.Ho = out_size(Hp, wp.size(1), s[0], d[0], "height");
  conv.Wo = out_size(Wp, wp.size(2), s[1], d[1], "width");
  auto keep = set_epilogue(conv, O, C, scale, bias, shortcut, shift_in, slope, shift_out);
  TORCH_CHECK_VALUE(shortcut == kShortcutNone || (conv.Ho == H && conv.Wo == W), "a shortcut needs the output size (",
                    conv.Ho, "x", conv.Wo, ") to equal the input size (", H, "x", W, ")");
  const at::Tensor thr = channel_vector(threshold, C, "threshold");
  // pixel shuffle r: [N, O / r^2, Ho r, Wo r] (r = 1: the conv's [N, O, Ho, Wo])
  at::Tensor out = at::empty({N, O / (r * r), conv.Ho * r, conv.Wo * r},
                             x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                            : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  conv.out = out.data_ptr<float>();
  conv.out_nhwc = nhwc;
  conv.stream = out.nbytes() >= kStreamBytes;
  conv.x = x.data_ptr<float>();
  conv.shuffle = r;
  ConvStorage st;
  const std::vector<int64_t> perm = nhwc && r > 1 ? shuffle_permutation(conv, st, O, r) : std::vector<int64_t>();
  prepare_conv(impl, N, Hp, Wp, wp, C, s, d, conv, st, perm.empty() ? nullptr : perm.data());
  at::Tensor xp = at::empty({N, conv.Hp, conv.Wp, conv.in_words}, x.options().dtype(at::kLong));
  pack_into(impl, x, nhwc, thr, pad, xp);
  run_packed(impl, xp, conv);
  return out;
}

at::Tensor binary_linear(const at::Tensor& x_in, const at::Tensor& wp, int64_t K, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& threshold,
                         int64_t shortcut, const c10::optional<at::Tensor>& shift_in,
                         const c10::optional<at::Tensor>& slope, const c10::optional<at::Tensor>& shift_out) {
  check_cpu_float(x_in, "x");
  TORCH_CHECK_VALUE(x_in.dim() >= 1 && x_in.size(-1) == K, "x must be [..., ", K, "], got ", x_in.sizes());
  TORCH_CHECK_VALUE(K >= 1 && K < (1 << 24), "in_features out of range: ", K);
  check_packed_linear_weight(wp, K);
  const int64_t O = wp.size(0);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = O;
  const IsaImpl& impl = kImpls[current_isa()];
  ConvParams conv;
  auto keep = set_epilogue(conv, O, K, scale, bias, shortcut, shift_in, slope, shift_out);
  const at::Tensor thr = channel_vector(threshold, K, "threshold");
  // rows of x = the pixels of a 1 x M channels_last image; the linear is its 1x1 conv
  const at::Tensor x = x_in.reshape({-1, K}).contiguous();
  const int64_t M = x.size(0);
  at::Tensor out = at::empty({M, O}, x.options());
  if (M == 0) return out.reshape(out_shape);
  at::Tensor xp = at::empty({1, 1, M, ceil_div(K, 64)}, x.options().dtype(at::kLong));
  pack_linear_rows(impl, x, thr, xp);
  conv.Ho = 1;
  conv.Wo = M;
  conv.out = out.data_ptr<float>();
  conv.out_nhwc = true;
  conv.stream = out.nbytes() >= kStreamBytes;
  conv.x = x.data_ptr<float>();
  const at::Tensor wp4 = wp.reshape({O, 1, 1, wp.size(1)});
  ConvStorage st;
  prepare_conv(impl, 1, 1, M, wp4, K, {1, 1}, {1, 1}, conv, st);
  run_packed(impl, xp, conv);
  return out.reshape(out_shape);
}

// Debug op: XOR + popcount roofline. Every thread runs `repeats` passes over a (n words,
// L1-resident) against 4 register-held operands from w (>= 32 words); returns the total
// popcount. Word operations done = threads * repeats * n * 4.
int64_t xor_popcount_roofline(const at::Tensor& a, const at::Tensor& w, int64_t repeats) {
  TORCH_CHECK_VALUE(a.device().is_cpu() && a.scalar_type() == at::kLong && a.dim() == 1 && a.numel() % 8 == 0 &&
                        a.numel() > 0 && a.is_contiguous(),
                    "a must be a contiguous CPU int64 vector of a multiple of 8 words");
  TORCH_CHECK_VALUE(w.device().is_cpu() && w.scalar_type() == at::kLong && w.dim() == 1 && w.numel() >= 32 &&
                        w.is_contiguous(),
                    "w must be a contiguous CPU int64 vector of at least 32 words");
  TORCH_CHECK_VALUE(repeats >= 1, "repeats must be >= 1");
  const IsaImpl& impl = kImpls[current_isa()];
  const auto* pa = reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>());
  const auto* pw = reinterpret_cast<const uint64_t*>(w.data_ptr<int64_t>());
  const int64_t threads = at::get_num_threads();
  std::vector<uint64_t> res((size_t)threads, 0);
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) res[(size_t)i] = impl.roofline(pa, pw, a.numel(), repeats);
  });
  uint64_t total = 0;
  for (auto v : res) total += v;
  return (int64_t)total;
}

}  // namespace
}  // namespace bsr_engine

TORCH_LIBRARY(bsr_engine, m) {
  m.def("pack_input(Tensor x, Tensor? threshold, int[] padding) -> Tensor");
  m.def("pack_weight(Tensor w) -> Tensor");
  m.def("conv_counts(Tensor xp, Tensor wp, int in_channels, int[] stride, int[] dilation) -> Tensor");
  m.def("binary_conv2d(Tensor x, Tensor wp, int in_channels, int[] stride, int[] padding, int[] dilation, "
        "Tensor scale, Tensor? bias, Tensor? threshold, int shortcut, Tensor? shift_in, Tensor? slope, "
        "Tensor? shift_out, int pixel_shuffle=1) -> Tensor");
  m.def("binary_linear(Tensor x, Tensor wp, int in_features, Tensor scale, Tensor? bias, Tensor? threshold, "
        "int shortcut, Tensor? shift_in, Tensor? slope, Tensor? shift_out) -> Tensor");
  m.def("xor_popcount_roofline(Tensor a, Tensor w, int repeats) -> int");
  m.def("set_isa(str name) -> ()", &bsr_engine::set_isa);
  m.def("get_isa() -> str", &bsr_engine::get_isa);
  m.def("isa_setting() -> str", &bsr_engine::isa_setting);
  m.def("isa_problem() -> str", &bsr_engine::isa_problem);
  m.def("available_isas() -> str[]", &bsr_engine::available_isas);
}

TORCH_LIBRARY_IMPL(bsr_engine, CPU, m) {
  m.impl("pack_input", &bsr_engine::pack_input);
  m.impl("pack_weight", &bsr_engine::pack_weight);
  m.impl("conv_counts", &bsr_engine::conv_counts);
  m.impl("binary_conv2d", &bsr_engine::binary_conv2d);
  m.impl("binary_linear", &bsr_engine::binary_linear);
  m.impl("xor_popcount_roofline", &bsr_engine::xor_popcount_roofline);
}

// Importing bsr_plugin.deploy.engine._C loads this library, whose static initialisers above
// register the ops in torch.ops.bsr_engine; the module itself is empty.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "bsr_engine ops (see torch.ops.bsr_engine)", -1, nullptr,
                            nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&def);
}
