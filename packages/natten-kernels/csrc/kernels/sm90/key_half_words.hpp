// Column words of a key tile for the 64-column mask words (column_words.cuh), host side: a 64-token
// key tile is its own word; a 128-token one (the Hopper forward's, the dQ kernel's with 128-token key
// tiles) is two 64-token halves split on its first axis of more than one token, and `off` holds the
// second half's offset on that axis (0 elsewhere), which the kernels subtract from a row's window
// start before taking the second word (mainloop_consumer.cuh: mask_tile; bwd_dq_mainloop.cuh).
#pragma once

#include "sm90/column_words.cuh"

namespace natten {
namespace sm90 {

inline ColumnWords key_half_words(const int kv_log2[sm80::kRank], int off[sm80::kRank]) {
  int half[sm80::kRank], total = 0;
  for (int a = 0; a < sm80::kRank; ++a) {
    half[a] = kv_log2[a];
    total += half[a];
    off[a] = 0;
  }
  for (int a = 0; a < sm80::kRank && total == 7; ++a) {
    if (half[a] > 0) {
      --half[a];
      off[a] = 1 << half[a];
      break;
    }
  }
  return column_words(half);
}

}  // namespace sm90
}  // namespace natten
