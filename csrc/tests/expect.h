// The C++ tests' assertion: EXPECT(cond, printf-style message...) prints the
// message and counts a failure; each test's main returns non-zero when any
// failed.  One translation unit per test, so `failures` is per test.
#pragma once

#include <cstdio>

static int failures = 0;

#define EXPECT(cond, ...)                \
  do {                                   \
    if (!(cond)) {                       \
      std::printf("FAIL: " __VA_ARGS__); \
      std::printf("\n");                 \
      ++failures;                        \
    }                                    \
  } while (0)
