// The Huffman code of HPACK (RFC 7541 Section 5.2 and Appendix B).
//
// The code is canonical: codewords are assigned in order of (length, symbol),
// so the table below holds only each symbol's code length and the codewords
// are derived from it (and checked against the RFC in hpack_test.cc).
// Nothing here allocates beyond appending to the caller's string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace steadyserve {

class HpackHuffman {
 public:
  enum class DecodeError : uint8_t {
    kNone = 0,
    kEos,             // the EOS symbol appeared inside the string
    kPaddingTooLong,  // more than 7 bits left over after the last symbol
    kPaddingNotOnes,  // the left-over bits are not a prefix of EOS (all ones)
  };

  static constexpr int kEosSymbol = 256;

  // The number of bytes Encode would append for `s`.
  static size_t EncodedSize(std::string_view s);

  // Appends the Huffman encoding of `s` to *out, padded with ones.
  static void Encode(std::string_view s, std::string* out);

  // Appends the decoded bytes of data[0, size) to *out. On an error *out holds
  // whatever was decoded before it (the caller discards it).
  static DecodeError Decode(const uint8_t* data, size_t size, std::string* out);

  static const char* DecodeErrorName(DecodeError error);

  // The codeword of `symbol` (0..256) in its low CodeLength(symbol) bits.
  static uint32_t Code(int symbol);
  static int CodeLength(int symbol);
};

}  // namespace steadyserve
