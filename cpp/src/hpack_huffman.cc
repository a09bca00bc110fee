#include "steadyserve/hpack_huffman.h"

namespace steadyserve {

namespace {

constexpr int kSymbols = 257;
constexpr int kMaxLength = 30;

// Code length in bits of each symbol 0..255 and EOS (RFC 7541 Appendix B), 16 a row.
constexpr uint8_t kLength[kSymbols] = {
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,  // 0x00
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,  // 0x10
    6,  10, 10, 12, 13, 6,  8,  11, 10, 10, 8,  11, 8,  6,  6,  6,   // 0x20 ' '..'/'
    5,  5,  5,  6,  6,  6,  6,  6,  6,  6,  7,  8,  15, 6,  12, 10,  // 0x30 '0'..'?'
    13, 6,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,  7,   // 0x40 '@'..'O'
    7,  7,  7,  7,  7,  7,  7,  7,  8,  7,  8,  13, 19, 13, 14, 6,   // 0x50 'P'..'_'
    15, 5,  6,  5,  6,  5,  6,  6,  6,  5,  7,  7,  6,  6,  6,  5,   // 0x60 '`'..'o'
    6,  7,  6,  5,  5,  6,  7,  7,  7,  7,  7,  15, 11, 14, 13, 28,  // 0x70 'p'..0x7f
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,  // 0x80
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,  // 0x90
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,  // 0xa0
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,  // 0xb0
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,  // 0xc0
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,  // 0xd0
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,  // 0xe0
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,  // 0xf0
    30,                                                              // EOS
};

// The canonical code derived from kLength: codewords per symbol for the
// encoder, and per length the first codeword, how many there are and where
// their symbols start in `sorted` for the decoder.
struct Tables {
  uint32_t code[kSymbols] = {};
  uint32_t first[kMaxLength + 1] = {};
  uint32_t count[kMaxLength + 1] = {};
  uint32_t offset[kMaxLength + 1] = {};
  uint16_t sorted[kSymbols] = {};

  constexpr Tables() {
    for (int s = 0; s < kSymbols; ++s) ++count[kLength[s]];
    uint32_t next = 0;
    uint32_t index = 0;
    for (int len = 1; len <= kMaxLength; ++len) {
      next <<= 1;
      first[len] = next;
      offset[len] = index;
      uint32_t c = next;
      for (int s = 0; s < kSymbols; ++s) {
        if (kLength[s] != len) continue;
        code[s] = c++;
        sorted[index++] = static_cast<uint16_t>(s);
      }
      next = c;
    }
  }
};

constexpr Tables kTables;

// The decoder's fast path: the symbol whose codeword starts the next 9 bits,
// for codewords of at most 9 bits (every letter, digit and common
// punctuation); length 0 sends the decoder to the canonical search.
constexpr int kFastBits = 9;

struct FastEntry {
  uint8_t symbol = 0;
  uint8_t length = 0;
};

struct FastTable {
  FastEntry entry[1 << kFastBits] = {};

  constexpr FastTable() {
    for (int s = 0; s < kSymbols; ++s) {
      const int len = kLength[s];
      if (len > kFastBits) continue;
      const uint32_t base = kTables.code[s] << (kFastBits - len);
      for (uint32_t fill = 0; fill < (1u << (kFastBits - len)); ++fill) {
        entry[base | fill].symbol = static_cast<uint8_t>(s);
        entry[base | fill].length = static_cast<uint8_t>(len);
      }
    }
  }
};

constexpr FastTable kFast;

}  // namespace

size_t HpackHuffman::EncodedSize(std::string_view s) {
  uint64_t bits = 0;
  for (unsigned char c : s) bits += kLength[c];
  return static_cast<size_t>((bits + 7) / 8);
}

void HpackHuffman::Encode(std::string_view s, std::string* out) {
  uint64_t acc = 0;  // the low `pending` bits are not written yet
  int pending = 0;
  for (unsigned char c : s) {
    acc = (acc << kLength[c]) | kTables.code[c];
    pending += kLength[c];
    while (pending >= 8) {
      pending -= 8;
      out->push_back(static_cast<char>(static_cast<uint8_t>(acc >> pending)));
    }
    acc &= (uint64_t{1} << pending) - 1;
  }
  if (pending > 0) {
    const int pad = 8 - pending;
    out->push_back(static_cast<char>(static_cast<uint8_t>((acc << pad) | ((1u << pad) - 1))));
  }
}

HpackHuffman::DecodeError HpackHuffman::Decode(const uint8_t* data, size_t size, std::string* out) {
  uint64_t buf = 0;  // the next `bits` bits, aligned to the top; zeros below them
  int bits = 0;
  size_t i = 0;
  for (;;) {
    while (bits <= 56 && i < size) {
      buf |= static_cast<uint64_t>(data[i++]) << (56 - bits);
      bits += 8;
    }
    if (bits == 0) break;
    int len = 0;
    int symbol = 0;
    const FastEntry fast = kFast.entry[buf >> (64 - kFastBits)];
    if (fast.length != 0) {
      len = fast.length;
      symbol = fast.symbol;
    } else {
      // A canonical code: the codewords of length `len` are first..first+count-1
      // (the unsigned difference also rejects code < first). The code is
      // complete, so some length up to 30 matches.
      const uint32_t top = static_cast<uint32_t>(buf >> (64 - kMaxLength));
      for (len = kFastBits + 1; len <= kMaxLength; ++len) {
        const uint32_t rank = (top >> (kMaxLength - len)) - kTables.first[len];
        if (rank < kTables.count[len]) {
          symbol = kTables.sorted[kTables.offset[len] + rank];
          break;
        }
      }
    }
    // A codeword running past the end (into the zeros) is not one: what is
    // left is padding.
    if (len > bits) break;
    if (symbol == kEosSymbol) return DecodeError::kEos;
    out->push_back(static_cast<char>(symbol));
    buf <<= len;
    bits -= len;
  }
  // Padding: fewer than 8 bits, all ones (a prefix of EOS).
  if (bits > 7) return DecodeError::kPaddingTooLong;
  if (bits > 0 && (buf >> (64 - bits)) != (uint64_t{1} << bits) - 1) return DecodeError::kPaddingNotOnes;
  return DecodeError::kNone;
}

const char* HpackHuffman::DecodeErrorName(DecodeError error) {
  switch (error) {
    case DecodeError::kNone:
      return "no error";
    case DecodeError::kEos:
      return "EOS symbol inside a Huffman string";
    case DecodeError::kPaddingTooLong:
      return "Huffman padding longer than 7 bits";
    case DecodeError::kPaddingNotOnes:
      return "Huffman padding not all ones";
  }
  return "unknown Huffman error";
}

uint32_t HpackHuffman::Code(int symbol) {
  return symbol >= 0 && symbol < kSymbols ? kTables.code[symbol] : 0;
}

int HpackHuffman::CodeLength(int symbol) { return symbol >= 0 && symbol < kSymbols ? kLength[symbol] : 0; }

}  // namespace steadyserve
