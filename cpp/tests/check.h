// A minimal test harness: CHECK macros and a registry of test functions.
// The core has no third-party dependencies; its tests have none either.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

namespace steadyserve_test {

struct TestCase {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<TestCase>& Registry() {
  static std::vector<TestCase> tests;
  return tests;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { Registry().push_back({name, std::move(fn)}); }
};

inline int RunAll() {
  int failed = 0;
  for (const auto& t : Registry()) {
    std::printf("[ RUN  ] %s\n", t.name);
    std::fflush(stdout);
    t.fn();
    std::printf("[  OK  ] %s\n", t.name);
  }
  std::printf("%zu passed, %d failed\n", Registry().size(), failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace steadyserve_test

#define SS_CONCAT2(a, b) a##b
#define SS_CONCAT(a, b) SS_CONCAT2(a, b)
#define TEST(name)                                                           \
  static void name();                                                        \
  static steadyserve_test::Register SS_CONCAT(register_, name)(#name, name); \
  static void name()

// A failed check ends the process at once: later checks would only cascade.
#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

#define CHECK_EQ(a, b)                                                                                  \
  do {                                                                                                  \
    const auto va = (a);                                                                                \
    const auto vb = (b);                                                                                \
    if (!(va == vb)) {                                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%s vs %s)\n", __FILE__, __LINE__, #a, #b, \
                   std::to_string(va).c_str(), std::to_string(vb).c_str());                             \
      std::exit(1);                                                                                     \
    }                                                                                                   \
  } while (0)

#define CHECK_CONTAINS(haystack, needle)                                                                  \
  do {                                                                                                    \
    const std::string h = (haystack);                                                                     \
    if (h.find(needle) == std::string::npos) {                                                            \
      std::fprintf(stderr, "%s:%d: '%s' does not contain '%s'\n", __FILE__, __LINE__, h.c_str(), needle); \
      std::exit(1);                                                                                       \
    }                                                                                                     \
  } while (0)

#define TEST_MAIN() \
  int main() { return steadyserve_test::RunAll(); }
