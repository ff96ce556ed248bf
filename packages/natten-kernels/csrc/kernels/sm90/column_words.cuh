// 64-column score masks as bit words, for the backward kernels' 64 x 64 score tiles (dQ: columns are
// the keys of a 64-token key tile; dK / dV: the queries of a 64-token query tile). Column c holds the
// token at tile offsets row-major over 2^log2[a] tokens per axis. The tokens a row attends form an
// interval per axis, so its column set is, per axis, one run of bits per period of 2^(shift + log2)
// columns, repeated over the word by one multiply; the word is the AND over the axes. Then each
// score needs one bit test (R2P) and a select, instead of three coordinate extractions and range
// compares (hunyuan's masked dK / dV visits: ~320 -> ~150 instructions per thread).
#pragma once

#include <cstdint>

#include "sm80/tile_scheduler.cuh"  // kRank, NATTEN_HD

#if defined(__CUDACC__)
#include <cute/tensor.hpp>
#endif

namespace natten {
namespace sm90 {

// Per-launch constants of a tile shape (filled on the host by column_words).
struct ColumnWords {
  int log2[sm80::kRank];   // tile shape (sum 6)
  int shift[sm80::kRank];  // bit offset of axis a's coordinate in the column index
  uint64_t rep[sm80::kRank];  // sum over k of 2^(k * 2^(shift[a] + log2[a])): repeats one period
};

inline ColumnWords column_words(const int log2[sm80::kRank]) {
  ColumnWords cw{};
  for (int a = 0; a < sm80::kRank; ++a) {
    int s = 0;
    for (int b = a + 1; b < sm80::kRank; ++b) s += log2[b];
    const int period = 1 << (s + log2[a]);  // 1 .. 64
    uint64_t rep = 0;
    for (int k = 0; k < 64; k += period) rep |= uint64_t(1) << k;
    cw.log2[a] = log2[a];
    cw.shift[a] = s;
    cw.rep[a] = rep;
  }
  return cw;
}

// Columns whose offsets lie in [lo[a], lo[a] + len[a]] on every axis (len < 0 or an interval past
// the tile: no column on that axis).
NATTEN_HD uint64_t allowed_columns(const ColumnWords& cw, const int lo[sm80::kRank], const int len[sm80::kRank]) {
  uint64_t w = ~uint64_t(0);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int a = 0; a < sm80::kRank; ++a) {
    const int top = (1 << cw.log2[a]) - 1;
    const int l = lo[a] < 0 ? 0 : lo[a];
    const int h = lo[a] + len[a] > top ? top : lo[a] + len[a];
    const int lc = l > top ? top : l, hc = h < lc ? lc : h;  // shift amounts stay in range when empty
    const int s = cw.shift[a];
    const uint64_t run = (uint64_t(2) << (((hc + 1) << s) - 1)) - (uint64_t(1) << (lc << s));
    w &= l <= h ? run * cw.rep[a] : uint64_t(0);
  }
  return w;
}

#if defined(__CUDACC__)
// s(e) = masked for the scores of a 64 x (64 kHalves) accumulator whose column is not in its row
// slot's word: w[h][r] holds columns [64 h, 64 h + 64) of row slot r. frag_col(ct, e) = 8 j + 2 (ct %
// 4) + i, so one shift per word, then a compile-time bit per score (R2P + select).
template <int kHalves, class TensorS>
__device__ __forceinline__ void mask_by_words(const uint64_t (&w)[kHalves][2], int ct, float masked, TensorS& s) {
  static_assert(int(cute::size(TensorS{})) == 32 * kHalves, "64 x (64 kHalves) accumulator");
  const int q2 = 2 * (ct & 3);
  uint64_t ws[kHalves][2];
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
    ws[h][0] = w[h][0] >> q2;
    ws[h][1] = w[h][1] >> q2;
  }
#pragma unroll
  for (int e = 0; e < 32 * kHalves; ++e) {
    const int j = e >> 2;                       // column group of 8
    const int bit = 8 * (j & 7) + (e & 1);      // frag_col(ct, e) - q2 - 64 * half
    if (((ws[j >> 3][(e >> 1) & 1] >> bit) & 1) == 0) s(e) = masked;  // row slot (e >> 1) & 1
  }
}
#endif

}  // namespace sm90
}  // namespace natten
