// Bit-packed XNOR-popcount engine: CPU inference kernels for binarized convs and linears.
//
// Semantics (the float simulation, bsr_plugin/deploy/engine/kernels.py):
//   xb  = x - threshold[c] >= 0 ? +1 : -1;  padded with +1 (sign of a zero-padded input)
//   dot = conv2d(xb, sign(w)) (groups 1, any kernel, stride, dilation)
//   y   = scale[o] * dot + bias[o];  optional RPReLU;  + real shortcut of x
//
// Bit layout (that of bsr_plugin.core.bits): bit 1 = sign +1 (value >= 0), bit 0 = -1.
//   packed input   int64 [N, Hp, Wp, CW]   NHWC words, CW = ceil(C / 64); channel c is bit
//                                          c % 64 of word c / 64; padding pixels have all
//                                          valid lanes set; lanes >= C are always 0.
//   packed weight  int64 [O, KH, KW, CW]   (linear: [N, CW]), same lane rule.
// With lanes beyond C zero in both operands, for one output (pixel, channel):
//   dot = K - 2 * sum over taps and words of popcount(a XOR w),   K = C * KH * KW,
// the sum being over T = KH * KW * CW "steps"; step t reads the input word at a fixed offset
// offs[t] = (kh * dh * Wp + kw * dw) * CW + cw from the pixel's window origin, so one loop
// handles every kernel size, dilation and channel count, and the stride only changes the
// distance between neighbouring output pixels.
//
// Popcount schemes (kernels.h, one build per ISA, chosen at run time):
//   AVX-512 (F/BW/VL/VPOPCNTDQ): lanes = output channels. The pixel's input word is broadcast,
//     XORed with 8 channels' weight words, VPOPCNTQ + VPADDQ accumulate per lane; a register
//     tile of 4 pixels x 32 channels reuses each broadcast 4 times and each weight load 4 times.
//   AVX2: lanes = 4 output channels, VPSHUFB nibble lookup. Input and weights are split into
//     low / high nibbles once per call, so a 4-word popcount is 2 XOR + 2 VPSHUFB + 2 byte adds;
//     byte counts accumulate over up to 31 steps before VPSADBW folds them into 64-bit lanes.
//   scalar: __builtin_popcountll.
// Tiles: one output row segment (tile_w pixels) x all output channels; counts go to a small
// pixel-major int32 buffer (L1); the epilogue converts them to floats, applies scale, bias,
// RPReLU and shortcut and writes channels_last pixels directly or, for NCHW, transposes the
// tile in 8 x 8 blocks and writes each channel's row segment contiguously. Outputs of 8 MiB
// and more are written with streaming stores. Tiles are spread over threads with
// at::parallel_for (torch.set_num_threads applies).
//
// Fused pixel shuffle (binary_conv2d, r > 1): the output is F.pixel_shuffle(y, r), written
// directly: conv channel o = c r^2 + i r + j of pixel (y, x) goes to channel c, pixel
// (y r + i, x r + j). A tile then fills r output rows, each with one contiguous run. NCHW: the
// run of row y r + i of channel c interleaves the r consecutive conv channels (c r + i) r + j,
// for r = 2, 3, 4 zipped in registers (r epilogue vectors -> r interleaved output vectors:
// permutes; r = 4 as two levels of r = 2; AVX-512 ends rows with a masked step), for larger r
// through an L1 buffer. channels_last: the conv's channels are permuted (weight rows, epilogue
// parameters, shortcut sources) to q = (i r + j) O / r^2 + c, so the pixel's channels
// [i O / r, (i + 1) O / r) are exactly the run of output row y r + i (r pixels x O / r^2
// channels) and the plain per-pixel epilogue writes it (a repeat shortcut with k = r^2, the
// usual upsampler, then reads the input pixel as it is). Same float operations as unshuffled,
// so the result equals F.pixel_shuffle of the unshuffled output bit for bit.
//
// Packing: from NCHW, per 8 channels x 8 (AVX-512: 16) pixels, sign movemasks along the row
// form an 8 x 8 bit matrix that one bit-matrix transpose turns into 8 bits of 8 pixels' words
// (8 channel planes at a time over bands of rows, so the prefetchers follow); from NHWC a word
// is the movemask of 64 contiguous channels. Sign and pack are one pass.

#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace bsr_engine {
namespace {

// Float outputs of at least this size are written with streaming (non-temporal) stores: far
// larger than the L2, they would only evict the input on their way to memory.
constexpr size_t kStreamBytes = size_t(8) << 20;

enum Shortcut : int64_t { SC_NONE = 0, SC_IDENTITY = 1, SC_REPEAT = 2, SC_MEAN = 3 };

// The valid lanes of word cw for C channels (what a padding pixel holds).
inline uint64_t lane_mask(int64_t C, int64_t cw) {
  const int64_t rem = C - cw * 64;
  return rem >= 64 ? ~0ull : ((1ull << rem) - 1ull);
}

struct PackParams {
  const float* x = nullptr;  // [N, C, H, W] contiguous, or channels_last when nhwc
  bool nhwc = false;
  int64_t N = 0, C = 0, H = 0, W = 0;
  const float* thr = nullptr;  // [C] or null
  int64_t pt = 0, pl = 0;      // top / left padding (bottom / right follow from Hp, Wp)
  uint64_t* out = nullptr;     // [N, Hp, Wp, CW]
  int64_t Hp = 0, Wp = 0, CW = 0;
};

struct ConvParams {
  const uint64_t* xp = nullptr;  // packed padded input [N, Hp, Wp, CW]
  int64_t N = 0, Hp = 0, Wp = 0, CW = 0, C = 0;
  int64_t O = 0, Opad = 0, Ho = 0, Wo = 0, sh = 1, sw = 1;
  const uint64_t* wb = nullptr;  // weights in the ISA's blocked layout
  const int64_t* offs = nullptr;
  int64_t T = 0;
  int32_t kv = 0;  // K = C * KH * KW
  int64_t tile_w = 0, tiles_per_row = 0;
  // output: exactly one of out (float) / out_i32 (dot products, NCHW)
  float* out = nullptr;
  int32_t* out_i32 = nullptr;
  bool out_nhwc = false;
  bool stream = false;  // streaming (non-temporal) stores of the float output
  int64_t ps = 1;       // pixel shuffle factor r of the float output (1: none)
  const float* scale = nullptr;
  const float* bias = nullptr;
  const float* shift_in = nullptr;  // RPReLU when non-null (then slope, shift_out too)
  const float* slope = nullptr;
  const float* shift_out = nullptr;
  int64_t shortcut = SC_NONE, sc_k = 1;
  const float* x = nullptr;  // original input (same layout as the output) for the shortcut
  // channels_last pixel shuffle: per (permuted) output channel, the first input channel of its
  // shortcut (identity / repeat: the channel, mean: the first of sc_k)
  const int64_t* sc_src = nullptr;
};

}  // namespace

// ---- the three ISA builds of kernels.h ---------------------------------------------------
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

namespace scalar {
namespace {
#define BSR_ISA 0
#define BSR_TARGET
#include "kernels.h"
#undef BSR_TARGET
#undef BSR_ISA
}  // namespace
}  // namespace scalar

namespace avx2 {
namespace {
#define BSR_ISA 1
#define BSR_TARGET __attribute__((target("avx2,popcnt,bmi2")))
#include "kernels.h"
#undef BSR_TARGET
#undef BSR_ISA
}  // namespace
}  // namespace avx2

namespace avx512 {
namespace {
#define BSR_ISA 2
#define BSR_TARGET __attribute__((target("avx2,popcnt,bmi2,avx512f,avx512bw,avx512vl,avx512vpopcntdq")))
#include "kernels.h"
#undef BSR_TARGET
#undef BSR_ISA
}  // namespace
}  // namespace avx512

namespace {

// ---- run-time ISA selection ------------------------------------------------------------
struct IsaImpl {
  const char* name;
  int lanes, in_words;
  void (*expand)(const uint64_t*, int64_t, int64_t, uint64_t*);
  void (*pack_rows)(const PackParams&, int64_t, int64_t);
  int64_t (*weight_words)(int64_t, int64_t);
  void (*repack)(const uint64_t*, int64_t, int64_t, int64_t, uint64_t*);
  void (*conv_tiles)(const ConvParams&, int64_t, int64_t, int32_t*, int32_t*, float*);
  uint64_t (*roofline)(const uint64_t*, const uint64_t*, int64_t, int64_t);
};

#define BSR_IMPL(ns) \
  IsaImpl { #ns, ns::LANES, ns::IN_WORDS, ns::expand_input, ns::pack_rows, ns::blocked_weight_words, ns::repack_weights, ns::conv_tiles, ns::roofline }
const IsaImpl kImpls[3] = {BSR_IMPL(scalar), BSR_IMPL(avx2), BSR_IMPL(avx512)};
#undef BSR_IMPL

bool cpu_supports(int isa) {
  __builtin_cpu_init();
  switch (isa) {
    case 0: return true;
    case 1:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi2");
    case 2:
      return cpu_supports(1) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
    default: return false;
  }
}

std::string supported_list() {
  std::string s;
  for (int i = 2; i >= 0; --i)
    if (cpu_supports(i)) s += std::string(s.empty() ? "" : ", ") + kImpls[i].name;
  return s;
}

const char* kRequirements[3] = {"nothing", "AVX2, POPCNT and BMI2", "AVX-512 F, BW, VL and VPOPCNTDQ"};

// -1: auto (the best the CPU has); resolved from BSR_ENGINE_ISA on first use unless set_isa ran.
std::atomic<int> g_isa{-2};

int parse_isa(const std::string& name, const char* origin) {
  int isa = -3;
  if (name.empty() || name == "auto") isa = -1;
  else
    for (int i = 0; i < 3; ++i)
      if (name == kImpls[i].name) isa = i;
  TORCH_CHECK(isa != -3, origin, "=", name, " is not an ISA of the packed engine: choose auto, avx512, avx2 or scalar");
  if (isa >= 0)
    TORCH_CHECK(cpu_supports(isa), origin, "=", name, " needs ", kRequirements[isa],
                ", which this CPU lacks; it supports: ", supported_list(), " (or use auto)");
  return isa;
}

int current_isa() {
  int v = g_isa.load();
  if (v == -2) {
    const char* env = std::getenv("BSR_ENGINE_ISA");
    v = parse_isa(env ? env : "", "BSR_ENGINE_ISA");
    g_isa.store(v);
  }
  if (v == -1) v = cpu_supports(2) ? 2 : (cpu_supports(1) ? 1 : 0);
  return v;
}

void set_isa(c10::string_view name) {
  const std::string s(name.data(), name.size());
  if (s == "env") g_isa.store(-2);  // back to BSR_ENGINE_ISA (resolved on next use)
  else g_isa.store(parse_isa(s, "isa"));
}

std::string get_isa() { return kImpls[current_isa()].name; }

// The selection itself: "env" (BSR_ENGINE_ISA, not resolved yet), "auto" or an ISA name.
std::string isa_setting() {
  const int v = g_isa.load();
  return v == -2 ? "env" : (v == -1 ? "auto" : kImpls[v].name);
}

std::vector<std::string> available_isas() {
  std::vector<std::string> v;
  for (int i = 2; i >= 0; --i)
    if (cpu_supports(i)) v.emplace_back(kImpls[i].name);
  return v;
}

// ---- argument checks -------------------------------------------------------------------
void check_cpu_float(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu(), what, " must be on the CPU, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, what, " must be float32, got ", t.scalar_type());
}

// A per-channel float vector of n values (contiguous float32), or an undefined tensor.
at::Tensor channel_vector(const c10::optional<at::Tensor>& t, int64_t n, const char* what) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_cpu_float(*t, what);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == n, what, " must have shape [", n, "], got ", t->sizes());
  return t->contiguous();
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Pack x (NCHW contiguous or channels_last) into out [N, Hp, Wp, CW].
void pack_into(const IsaImpl& impl, const at::Tensor& x, bool nhwc, const at::Tensor& thr, int64_t pt, int64_t pb,
               int64_t pl, int64_t pr, at::Tensor& out) {
  PackParams pp;
  pp.x = x.data_ptr<float>();
  pp.nhwc = nhwc;
  pp.N = x.size(0);
  pp.C = x.size(1);
  pp.H = x.size(2);
  pp.W = x.size(3);
  pp.thr = thr.defined() ? thr.data_ptr<float>() : nullptr;
  pp.pt = pt;
  pp.pl = pl;
  pp.Hp = pp.H + pt + pb;
  pp.Wp = pp.W + pl + pr;
  pp.CW = ceil_div(pp.C, 64);
  pp.out = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const int64_t rows = pp.N * pp.Hp;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, pp.W * pp.C / 64 + 1));
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t e) { impl.pack_rows(pp, b, e); });
}

// Layout of x for the engine: channels_last stays channels_last, anything else becomes NCHW.
bool take_layout(at::Tensor& x) {
  const bool nhwc = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  x = x.contiguous(nhwc ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  return nhwc;
}

std::array<int64_t, 4> four(c10::IntArrayRef v, const char* what) {
  TORCH_CHECK(v.size() == 4, what, " must have 4 values (top, bottom, left, right), got ", v.size());
  for (auto p : v) TORCH_CHECK(p >= 0, what, " must be non-negative, got ", v);
  return {v[0], v[1], v[2], v[3]};
}

std::array<int64_t, 2> two(c10::IntArrayRef v, const char* what) {
  TORCH_CHECK(v.size() == 2, what, " must have 2 values, got ", v.size());
  for (auto p : v) TORCH_CHECK(p >= 1, what, " must be >= 1, got ", v);
  return {v[0], v[1]};
}

void check_packed_weight(const at::Tensor& wp, int64_t C) {
  TORCH_CHECK(wp.device().is_cpu() && wp.scalar_type() == at::kLong && wp.dim() == 4,
              "packed weight must be a CPU int64 tensor [O, KH, KW, CW] (from pack_weight), got ", wp.scalar_type(),
              " ", wp.sizes());
  TORCH_CHECK(wp.size(3) == ceil_div(C, 64), "packed weight has ", wp.size(3), " words per tap but ", C,
              " input channels need ", ceil_div(C, 64));
  TORCH_CHECK(wp.size(0) >= 1 && wp.size(1) >= 1 && wp.size(2) >= 1, "packed weight has an empty dimension: ",
              wp.sizes());
}

// Buffers a conv needs besides its tensors: blocked weights and per-step input offsets; for a
// channels_last pixel shuffle also the permuted epilogue parameters and shortcut sources.
struct ConvStorage {
  std::vector<uint64_t> wb;
  std::vector<int64_t> offs;
  std::vector<float> params;
  std::vector<int64_t> sc_src;
};

// cp's geometry (cp.Ho / cp.Wo set by the caller), weights in the ISA's blocked layout, per-step
// input offsets and the tiling, for a padded input of N x Hp x Wp pixels. perm (O entries, or
// null for the identity): the conv's output channel q is the weight's channel perm[q].
void prepare_conv(const IsaImpl& impl, int64_t N, int64_t Hp, int64_t Wp, const at::Tensor& wp, int64_t C, int64_t sh,
                  int64_t sw, int64_t dh, int64_t dw, ConvParams& cp, ConvStorage& st,
                  const int64_t* perm = nullptr) {
  const int64_t KH = wp.size(1), KW = wp.size(2), CW = wp.size(3);
  cp.N = N;
  cp.Hp = Hp;
  cp.Wp = Wp;
  cp.CW = CW;
  cp.C = C;
  cp.O = wp.size(0);
  cp.Opad = ceil_div(cp.O, 8) * 8;
  cp.sh = sh;
  cp.sw = sw;
  cp.T = KH * KW * CW;
  cp.kv = (int32_t)(C * KH * KW);
  const at::Tensor wpc = wp.contiguous();
  const uint64_t* w = reinterpret_cast<const uint64_t*>(wpc.data_ptr<int64_t>());
  std::vector<uint64_t> permuted;  // the weight rows in the order perm gives
  if (perm) {
    permuted.resize((size_t)(cp.O * cp.T));
    for (int64_t q = 0; q < cp.O; ++q)
      std::memcpy(permuted.data() + q * cp.T, w + perm[q] * cp.T, (size_t)cp.T * sizeof(uint64_t));
    w = permuted.data();
  }
  st.wb.assign((size_t)impl.weight_words(cp.Opad, cp.T), 0);
  impl.repack(w, cp.O, cp.T, cp.Opad, st.wb.data());
  st.offs.assign((size_t)cp.T, 0);
  for (int64_t kh = 0, t = 0; kh < KH; ++kh)
    for (int64_t kw = 0; kw < KW; ++kw)
      for (int64_t cw = 0; cw < CW; ++cw, ++t)
        st.offs[(size_t)t] = ((kh * dh * Wp + kw * dw) * CW + cw) * impl.in_words;
  cp.wb = st.wb.data();
  cp.offs = st.offs.data();
  // tiles: a row segment of up to 64 pixels, fewer for wide layers (count buffer <= 16 KB)
  int64_t tw = std::max<int64_t>(8, std::min<int64_t>(64, (4096 / cp.Opad) / 8 * 8));
  tw = std::min(tw, ceil_div(cp.Wo, 8) * 8);
  cp.tile_w = tw;
  cp.tiles_per_row = ceil_div(cp.Wo, tw);
}

// Per-thread scratch of the tiles (see conv_tiles and finish_tile).
struct TileScratch {
  std::vector<int32_t> cnt;
  std::vector<float> tmp;
  explicit TileScratch(const ConvParams& cp)
      : cnt((size_t)(2 * cp.tile_w * cp.Opad)), tmp((size_t)std::max((2 * cp.ps + 1) * cp.tile_w, cp.Opad)) {}
  int32_t* counts() { return cnt.data(); }
  int32_t* transposed() { return cnt.data() + cnt.size() / 2; }
};

// The conv of a packed input xp [N, Hp, Wp, CW].
void run_packed(const IsaImpl& impl, const at::Tensor& xp, ConvParams& cp) {
  cp.xp = reinterpret_cast<const uint64_t*>(xp.data_ptr<int64_t>());
  std::vector<uint64_t> expanded;  // the micro-kernel's input form, when it is not the packed words
  if (impl.in_words != 1) {
    const int64_t nw = xp.numel();
    expanded.resize((size_t)(nw * impl.in_words));
    at::parallel_for(0, nw, 4096, [&](int64_t b, int64_t e) { impl.expand(cp.xp, b, e, expanded.data()); });
    cp.xp = expanded.data();
  }
  const int64_t ntiles = cp.N * cp.Ho * cp.tiles_per_row;
  if (ntiles == 0) return;
  at::parallel_for(0, ntiles, 1, [&](int64_t b, int64_t e) {
    TileScratch sc(cp);
    impl.conv_tiles(cp, b, e, sc.counts(), sc.transposed(), sc.tmp.data());
  });
}

// Output size of one dimension; checks the kernel fits.
int64_t out_size(int64_t in_padded, int64_t k, int64_t s, int64_t d, const char* dim) {
  const int64_t span = d * (k - 1) + 1;
  TORCH_CHECK(in_padded >= span, "the padded input ", dim, " (", in_padded, ") is smaller than the dilated kernel (",
              span, ")");
  return (in_padded - span) / s + 1;
}

// Scale / bias / RPReLU / shortcut arguments into cp; returns the tensors to keep alive.
std::vector<at::Tensor> set_epilogue(ConvParams& cp, int64_t O, int64_t C, const at::Tensor& scale,
                                     const c10::optional<at::Tensor>& bias, int64_t shortcut,
                                     const c10::optional<at::Tensor>& shift_in, const c10::optional<at::Tensor>& slope,
                                     const c10::optional<at::Tensor>& shift_out) {
  std::vector<at::Tensor> keep;
  keep.push_back(channel_vector(scale, O, "scale"));
  at::Tensor b = channel_vector(bias, O, "bias");
  if (!b.defined()) b = at::zeros({O}, scale.options());
  keep.push_back(b);
  cp.scale = keep[0].data_ptr<float>();
  cp.bias = b.data_ptr<float>();
  const bool any_rp = (shift_in.has_value() && shift_in->defined()) || (slope.has_value() && slope->defined()) ||
                      (shift_out.has_value() && shift_out->defined());
  if (any_rp) {
    auto si = channel_vector(shift_in, O, "rprelu shift_in"), sl = channel_vector(slope, O, "rprelu slope"),
         so = channel_vector(shift_out, O, "rprelu shift_out");
    TORCH_CHECK(si.defined() && sl.defined() && so.defined(), "rprelu needs all of shift_in, slope and shift_out");
    keep.insert(keep.end(), {si, sl, so});
    cp.shift_in = si.data_ptr<float>();
    cp.slope = sl.data_ptr<float>();
    cp.shift_out = so.data_ptr<float>();
  }
  TORCH_CHECK(shortcut >= SC_NONE && shortcut <= SC_MEAN, "shortcut code must be 0 (none), 1 (identity), "
              "2 (repeat) or 3 (mean), got ", shortcut);
  cp.shortcut = shortcut;
  if (shortcut == SC_IDENTITY) TORCH_CHECK(O == C, "identity shortcut needs as many outputs as inputs, got ", C,
                                           " -> ", O);
  if (shortcut == SC_REPEAT) {
    TORCH_CHECK(O % C == 0, "repeat shortcut needs outputs = k * inputs, got ", C, " -> ", O);
    cp.sc_k = O / C;
  }
  if (shortcut == SC_MEAN) {
    TORCH_CHECK(C % O == 0, "mean shortcut needs inputs = k * outputs, got ", C, " -> ", O);
    cp.sc_k = C / O;
  }
  return keep;
}

// ---- ops -------------------------------------------------------------------------------
at::Tensor pack_input(const at::Tensor& x_in, const c10::optional<at::Tensor>& threshold, c10::IntArrayRef padding) {
  check_cpu_float(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4, "x must be [N, C, H, W], got ", x_in.sizes());
  TORCH_CHECK(x_in.size(1) >= 1, "x has no channels");
  const auto pad = four(padding, "padding");
  at::Tensor x = x_in;
  const bool nhwc = take_layout(x);
  const at::Tensor thr = channel_vector(threshold, x.size(1), "threshold");
  at::Tensor out = at::empty({x.size(0), x.size(2) + pad[0] + pad[1], x.size(3) + pad[2] + pad[3],
                              ceil_div(x.size(1), 64)}, x.options().dtype(at::kLong));
  pack_into(kImpls[current_isa()], x, nhwc, thr, pad[0], pad[1], pad[2], pad[3], out);
  return out;
}

at::Tensor pack_weight(const at::Tensor& w_in) {
  check_cpu_float(w_in, "weight");
  TORCH_CHECK(w_in.dim() == 4 || w_in.dim() == 2, "weight must be a conv weight [O, C, KH, KW] or a linear weight "
              "[N, K], got ", w_in.sizes());
  const at::Tensor w = w_in.contiguous();
  const bool conv = w.dim() == 4;
  const int64_t O = w.size(0), C = w.size(1), KH = conv ? w.size(2) : 1, KW = conv ? w.size(3) : 1;
  TORCH_CHECK(C >= 1, "weight has no input channels");
  const int64_t CW = ceil_div(C, 64);
  at::Tensor out = conv ? at::empty({O, KH, KW, CW}, w.options().dtype(at::kLong))
                        : at::empty({O, CW}, w.options().dtype(at::kLong));
  const float* src = w.data_ptr<float>();
  uint64_t* dst = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  at::parallel_for(0, O, 16, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o)
      for (int64_t k = 0; k < KH * KW; ++k)
        for (int64_t cw = 0; cw < CW; ++cw) {
          uint64_t word = 0;
          for (int64_t c = cw * 64; c < std::min(C, cw * 64 + 64); ++c)
            word |= (uint64_t)(src[(o * C + c) * KH * KW + k] >= 0.0f) << (c - cw * 64);
          dst[(o * KH * KW + k) * CW + cw] = word;
        }
  });
  return out;
}

at::Tensor conv_counts(const at::Tensor& xp_in, const at::Tensor& wp, int64_t C, c10::IntArrayRef stride,
                       c10::IntArrayRef dilation) {
  TORCH_CHECK(xp_in.device().is_cpu() && xp_in.scalar_type() == at::kLong && xp_in.dim() == 4,
              "packed input must be a CPU int64 tensor [N, Hp, Wp, CW] (from pack_input), got ", xp_in.scalar_type(),
              " ", xp_in.sizes());
  TORCH_CHECK(C >= 1 && C * wp.size(1) * wp.size(2) < (1 << 24), "in_channels out of range: ", C);
  check_packed_weight(wp, C);
  TORCH_CHECK(xp_in.size(3) == wp.size(3), "packed input has ", xp_in.size(3), " words per pixel, the weight ",
              wp.size(3));
  const auto s = two(stride, "stride"), d = two(dilation, "dilation");
  const at::Tensor xp = xp_in.contiguous();
  ConvParams cp;
  cp.Ho = out_size(xp.size(1), wp.size(1), s[0], d[0], "height");
  cp.Wo = out_size(xp.size(2), wp.size(2), s[1], d[1], "width");
  at::Tensor out = at::empty({xp.size(0), wp.size(0), cp.Ho, cp.Wo}, xp.options().dtype(at::kInt));
  cp.out_i32 = out.data_ptr<int32_t>();
  const IsaImpl& impl = kImpls[current_isa()];
  ConvStorage st;
  prepare_conv(impl, xp.size(0), xp.size(1), xp.size(2), wp, C, s[0], s[1], d[0], d[1], cp, st);
  run_packed(impl, xp, cp);
  return out;
}

at::Tensor binary_conv2d(const at::Tensor& x_in, const at::Tensor& wp, int64_t C, c10::IntArrayRef stride,
                         c10::IntArrayRef padding, c10::IntArrayRef dilation, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& threshold,
                         int64_t shortcut, const c10::optional<at::Tensor>& shift_in,
                         const c10::optional<at::Tensor>& slope, const c10::optional<at::Tensor>& shift_out,
                         int64_t pixel_shuffle) {
  check_cpu_float(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4, "x must be [N, C, H, W], got ", x_in.sizes());
  TORCH_CHECK(x_in.size(1) == C, "x has ", x_in.size(1), " channels, the layer ", C);
  const int64_t r = pixel_shuffle;
  // r <= O / r first: r * r cannot overflow
  TORCH_CHECK(r >= 1 && r <= wp.size(0) / r && wp.size(0) % (r * r) == 0, "pixel_shuffle=", r,
              " needs the output channels (", wp.size(0), ") to be a multiple of pixel_shuffle^2: use a conv with ",
              "out_channels = k * ", r, "^2, or pixel_shuffle=1");
  check_packed_weight(wp, C);
  TORCH_CHECK(C * wp.size(1) * wp.size(2) < (1 << 24), "C * KH * KW must be below 2^24");
  const auto pad = four(padding, "padding");
  const auto s = two(stride, "stride"), d = two(dilation, "dilation");
  at::Tensor x = x_in;
  const bool nhwc = take_layout(x);
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), O = wp.size(0);
  const IsaImpl& impl = kImpls[current_isa()];
  ConvParams cp;
  cp.Ho = out_size(H + pad[0] + pad[1], wp.size(1), s[0], d[0], "height");
  cp.Wo = out_size(W + pad[2] + pad[3], wp.size(2), s[1], d[1], "width");
  auto keep = set_epilogue(cp, O, C, scale, bias, shortcut, shift_in, slope, shift_out);
  TORCH_CHECK(shortcut == SC_NONE || (cp.Ho == H && cp.Wo == W), "a shortcut needs the output size (", cp.Ho, "x",
              cp.Wo, ") to equal the input size (", H, "x", W, ")");
  const at::Tensor thr = channel_vector(threshold, C, "threshold");
  // pixel shuffle r: [N, O / r^2, Ho r, Wo r] (r = 1: the conv's [N, O, Ho, Wo])
  at::Tensor out = at::empty({N, O / (r * r), cp.Ho * r, cp.Wo * r},
                             x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                            : at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  cp.out = out.data_ptr<float>();
  cp.out_nhwc = nhwc;
  cp.stream = out.nbytes() >= kStreamBytes;
  cp.x = x.data_ptr<float>();
  cp.ps = r;
  ConvStorage st;
  std::vector<int64_t> perm;
  if (nhwc && r > 1) {
    // channels_last shuffle: conv channel q = (i r + j) Cs + c is the layer's o = c r^2 + i r + j
    // (see finish_tile); permute the weight rows, the epilogue parameters and the shortcut sources
    const int64_t Cs = O / (r * r);
    perm.resize((size_t)O);
    for (int64_t q = 0; q < O; ++q) perm[(size_t)q] = (q % Cs) * r * r + q / Cs;
    const float* src[5] = {cp.scale, cp.bias, cp.shift_in, cp.slope, cp.shift_out};
    const float** dst[5] = {&cp.scale, &cp.bias, &cp.shift_in, &cp.slope, &cp.shift_out};
    st.params.resize((size_t)(5 * O));
    for (int k = 0; k < 5; ++k) {
      if (!src[k]) continue;  // no RPReLU
      float* pk = st.params.data() + k * O;
      for (int64_t q = 0; q < O; ++q) pk[q] = src[k][perm[(size_t)q]];
      *dst[k] = pk;
    }
    if (shortcut != SC_NONE) {
      st.sc_src.resize((size_t)O);
      for (int64_t q = 0; q < O; ++q) {
        const int64_t o = perm[(size_t)q];
        st.sc_src[(size_t)q] = shortcut == SC_REPEAT ? o / cp.sc_k : (shortcut == SC_MEAN ? o * cp.sc_k : o);
      }
      cp.sc_src = st.sc_src.data();
    }
  }
  prepare_conv(impl, N, H + pad[0] + pad[1], W + pad[2] + pad[3], wp, C, s[0], s[1], d[0], d[1], cp, st,
               perm.empty() ? nullptr : perm.data());
  at::Tensor xp = at::empty({N, cp.Hp, cp.Wp, cp.CW}, x.options().dtype(at::kLong));
  pack_into(impl, x, nhwc, thr, pad[0], pad[1], pad[2], pad[3], xp);
  run_packed(impl, xp, cp);
  return out;
}

at::Tensor binary_linear(const at::Tensor& x_in, const at::Tensor& wp, int64_t K, const at::Tensor& scale,
                         const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& threshold,
                         int64_t shortcut, const c10::optional<at::Tensor>& shift_in,
                         const c10::optional<at::Tensor>& slope, const c10::optional<at::Tensor>& shift_out) {
  check_cpu_float(x_in, "x");
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) == K, "x must be [..., ", K, "], got ", x_in.sizes());
  TORCH_CHECK(K >= 1 && K < (1 << 24), "in_features out of range: ", K);
  TORCH_CHECK(wp.device().is_cpu() && wp.scalar_type() == at::kLong && wp.dim() == 2 && wp.size(0) >= 1 &&
                  wp.size(1) == ceil_div(K, 64),
              "packed linear weight must be a CPU int64 tensor [N, ", ceil_div(K, 64), "] (from pack_weight), got ",
              wp.scalar_type(), " ", wp.sizes());
  const int64_t O = wp.size(0);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = O;
  const IsaImpl& impl = kImpls[current_isa()];
  ConvParams cp;
  auto keep = set_epilogue(cp, O, K, scale, bias, shortcut, shift_in, slope, shift_out);
  const at::Tensor thr = channel_vector(threshold, K, "threshold");
  // rows of x = the pixels of a 1 x M channels_last image; the linear is its 1x1 conv
  const at::Tensor x = x_in.reshape({-1, K}).contiguous();
  const int64_t M = x.size(0);
  at::Tensor out = at::empty({M, O}, x.options());
  if (M == 0) return out.reshape(out_shape);
  at::Tensor xp = at::empty({1, 1, M, ceil_div(K, 64)}, x.options().dtype(at::kLong));
  {
    PackParams pp;
    pp.x = x.data_ptr<float>();
    pp.nhwc = true;
    pp.N = 1;
    pp.C = K;
    pp.H = 1;
    pp.W = M;
    pp.thr = thr.defined() ? thr.data_ptr<float>() : nullptr;
    pp.Hp = 1;
    pp.Wp = M;
    pp.CW = ceil_div(K, 64);
    pp.out = reinterpret_cast<uint64_t*>(xp.data_ptr<int64_t>());
    // one "row" of M pixels: split it over threads by pixel ranges
    at::parallel_for(0, M, 256, [&](int64_t b, int64_t e) {
      PackParams part = pp;
      part.x = pp.x + b * K;
      part.W = e - b;
      part.Wp = e - b;
      part.out = pp.out + b * pp.CW;
      impl.pack_rows(part, 0, 1);
    });
  }
  cp.Ho = 1;
  cp.Wo = M;
  cp.out = out.data_ptr<float>();
  cp.out_nhwc = true;
  cp.stream = out.nbytes() >= kStreamBytes;
  cp.x = x.data_ptr<float>();
  const at::Tensor wp4 = wp.reshape({O, 1, 1, wp.size(1)});
  ConvStorage st;
  prepare_conv(impl, 1, 1, M, wp4, K, 1, 1, 1, 1, cp, st);
  run_packed(impl, xp, cp);
  return out.reshape(out_shape);
}

// Debug op: XOR + popcount roofline. Every thread runs `repeats` passes over a (n words,
// L1-resident) against 4 register-held operands from w (>= 32 words); returns the total
// popcount. Word operations done = threads * repeats * n * 4.
int64_t xor_popcount_roofline(const at::Tensor& a, const at::Tensor& w, int64_t repeats) {
  TORCH_CHECK(a.device().is_cpu() && a.scalar_type() == at::kLong && a.dim() == 1 && a.numel() % 8 == 0 &&
                  a.numel() > 0 && a.is_contiguous(),
              "a must be a contiguous CPU int64 vector of a multiple of 8 words");
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kLong && w.dim() == 1 && w.numel() >= 32 &&
                  w.is_contiguous(),
              "w must be a contiguous CPU int64 vector of at least 32 words");
  TORCH_CHECK(repeats >= 1, "repeats must be >= 1");
  const IsaImpl& impl = kImpls[current_isa()];
  const auto* pa = reinterpret_cast<const uint64_t*>(a.data_ptr<int64_t>());
  const auto* pw = reinterpret_cast<const uint64_t*>(w.data_ptr<int64_t>());
  const int64_t nt = at::get_num_threads();
  std::vector<uint64_t> res((size_t)nt, 0);
  at::parallel_for(0, nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) res[(size_t)i] = impl.roofline(pa, pw, a.numel(), repeats);
  });
  uint64_t s = 0;
  for (auto v : res) s += v;
  return (int64_t)s;
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
