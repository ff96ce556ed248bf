// CHECK(cond, fmt, ...) of the CPU tests (window_math_test, bwd_tile_math_test, small_window_test,
// sm80_layout_test; compiled one per program by test_window_math.py): counts every check in
// g_checks and every failure in g_failures, printing the first 30 failures with file, line, the
// condition and the formatted context.
#pragma once

#include <cstdio>

static long g_failures = 0;
static long g_checks = 0;

#define CHECK(cond, ...)                                               \
  do {                                                                 \
    ++g_checks;                                                        \
    if (!(cond)) {                                                     \
      if (g_failures < 30) {                                           \
        std::printf("FAIL %s:%d: %s | ", __FILE__, __LINE__, #cond);   \
        std::printf(__VA_ARGS__);                                      \
        std::printf("\n");                                             \
      }                                                                \
      ++g_failures;                                                    \
    }                                                                  \
  } while (0)
