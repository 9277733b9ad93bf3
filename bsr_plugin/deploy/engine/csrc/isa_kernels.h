// Role: one ISA's build of the kernels. engine.cpp includes this file three times (no include
// guard on purpose), each time inside its own namespace (scalar, avx2, avx512) and with
//   BSR_TARGET  the function attribute of that ISA: empty for the portable scalar build,
//               __attribute__((target("avx2,popcnt,bmi2"))) or the AVX-512 one;
//   BSR_ISA     0 = scalar, 1 = AVX2, 2 = AVX-512 (F, BW, VL, VPOPCNTDQ).
// Every function that runs per pixel carries BSR_TARGET, and everything here has internal
// linkage, so nothing compiled for AVX2 / AVX-512 leaks into code that runs on a CPU without it.
// What each build exports to engine.cpp: kLanes, kWordsPerInputWord, kExpandInput, pack_rows,
// blocked_weight_words, repack_weights, conv_tiles, roofline.

#ifndef BSR_ISA
#error "isa_kernels.h is included by engine.cpp only"
#endif

// The popcount micro-kernel, the weight block layout and the roofline of this ISA; the float
// vector helpers of the epilogue (the scalar build has none: its epilogue loops are scalar).
#if BSR_ISA == 2
#include "popcount_avx512.h"
#include "vectors_avx512.h"
#elif BSR_ISA == 1
#include "popcount_avx2.h"
#include "vectors_avx2.h"
#else
#include "popcount_scalar.h"
#endif

#include "pack.h"           // sign + bit packing of float inputs
#include "weights.h"        // weights into the blocked layout; micro-kernel choice by block count
#include "epilogue.h"       // scale, bias, RPReLU, shortcut: counts -> floats
#include "pixel_shuffle.h"  // the epilogue writing pixel-shuffled NCHW output
#include "tiles.h"          // the conv: tiles of micro-kernel calls, then their epilogue
