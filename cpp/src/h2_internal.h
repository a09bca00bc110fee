// Small helpers shared by the HTTP/2 sources (h2_frame.cc, h2_connection.cc);
// not part of the core's public headers.
#pragma once

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <string>

namespace steadyserve {
namespace h2 {
namespace internal {

// A big-endian 32-bit value at p (the caller guarantees 4 bytes).
inline uint32_t ReadU32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
inline uint32_t ReadU32(const char* p) { return ReadU32(reinterpret_cast<const uint8_t*>(p)); }

// printf into a std::string, for error messages (cut at 511 bytes).
std::string Format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string Format(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  if (n < 0) return std::string();
  return std::string(buf, std::min(static_cast<size_t>(n), sizeof(buf) - 1));
}

}  // namespace internal
}  // namespace h2
}  // namespace steadyserve
