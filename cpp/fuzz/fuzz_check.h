// FUZZ_CHECK: an invariant of a fuzz target. It aborts (libFuzzer then keeps
// the input as a crash) rather than asserting, so it also holds in release builds.
#pragma once

#include <cstdlib>

#define FUZZ_CHECK(cond)       \
  do {                         \
    if (!(cond)) std::abort(); \
  } while (0)
