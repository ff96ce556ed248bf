// CPU check of the SM90 backward kernels' 64-column mask words (csrc/kernels/sm90/column_words.cuh):
// for every 64-token tile shape of rank 1-3 (2^log2[a] tokens per axis, sum of log2 = 6) and random
// per-axis intervals [lo, lo + len] (negative, past the tile, empty, the kernels' empty-range
// sentinel lo = 2^29), allowed_columns must set exactly the bits of the columns whose offsets lie in
// the interval on every axis (brute force over the 64 columns).
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels tests/column_words_test.cpp
#include <cstdint>
#include <cstdio>
#include <random>

#include "sm90/column_words.cuh"

using natten::sm90::allowed_columns;
using natten::sm90::column_words;
using natten::sm90::ColumnWords;

int main() {
  std::mt19937 rng(1234);
  long checks = 0;
  for (int l0 = 0; l0 <= 6; ++l0)
    for (int l1 = 0; l0 + l1 <= 6; ++l1) {
      const int log2[3] = {l0, l1, 6 - l0 - l1};
      const ColumnWords cw = column_words(log2);
      for (int it = 0; it < 20000; ++it) {
        int lo[3], len[3];
        for (int a = 0; a < 3; ++a) {
          const int n = 1 << log2[a];
          const int kind = int(rng() % 8);
          if (kind == 0) {
            lo[a] = 1 << 29;  // the dK / dV kernel's empty range
            len[a] = 0;
          } else {
            lo[a] = int(rng() % (3 * n + 6)) - n - 3;
            len[a] = int(rng() % (2 * n + 4)) - 2;
          }
        }
        const uint64_t got = allowed_columns(cw, lo, len);
        uint64_t want = 0;
        for (int c = 0; c < 64; ++c) {
          const int o[3] = {c >> (log2[1] + log2[2]), (c >> log2[2]) & ((1 << log2[1]) - 1), c & ((1 << log2[2]) - 1)};
          bool ok = true;
          for (int a = 0; a < 3; ++a) ok = ok && o[a] >= lo[a] && o[a] <= lo[a] + len[a];
          if (ok) want |= uint64_t(1) << c;
        }
        ++checks;
        if (got != want) {
          std::printf("MISMATCH log2 (%d,%d,%d) lo (%d,%d,%d) len (%d,%d,%d): got %016llx want %016llx\n", log2[0],
                      log2[1], log2[2], lo[0], lo[1], lo[2], len[0], len[1], len[2], (unsigned long long)got,
                      (unsigned long long)want);
          return 1;
        }
      }
    }
  std::printf("OK %ld checks\n", checks);
  return 0;
}
