#include "steadyserve/hpack.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "steadyserve/hpack_huffman.h"

using steadyserve::HpackDecodeInteger;
using steadyserve::HpackDecoder;
using steadyserve::HpackDecodeResult;
using steadyserve::HpackEncodeInteger;
using steadyserve::HpackEncoder;
using steadyserve::HpackError;
using steadyserve::HpackField;
using steadyserve::HpackHuffman;
using steadyserve::HpackIntegerStatus;
using steadyserve::StatusCode;

namespace {

std::vector<uint8_t> Hex(const char* s) {
  std::vector<uint8_t> out;
  int nibble = -1;
  for (; *s; ++s) {
    int v;
    if (*s >= '0' && *s <= '9') {
      v = *s - '0';
    } else if (*s >= 'a' && *s <= 'f') {
      v = *s - 'a' + 10;
    } else {
      continue;  // spaces
    }
    if (nibble < 0) {
      nibble = v;
    } else {
      out.push_back(static_cast<uint8_t>(nibble << 4 | v));
      nibble = -1;
    }
  }
  CHECK(nibble < 0);
  return out;
}

std::vector<uint8_t> Bytes(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

struct Pair {
  std::string name;
  std::string value;
};

HpackDecodeResult DecodeHex(HpackDecoder* d, const char* hex, std::vector<HpackField>* fields) {
  const std::vector<uint8_t> block = Hex(hex);
  return d->Decode(block.data(), block.size(), fields);
}

void ExpectFields(const std::vector<HpackField>& got, const std::vector<Pair>& want) {
  CHECK_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    if (got[i].name != want[i].name || got[i].value != want[i].value) {
      std::fprintf(stderr, "field %zu: got %.*s: %.*s, want %s: %s\n", i,
                   static_cast<int>(got[i].name.size()), got[i].name.data(),
                   static_cast<int>(got[i].value.size()), got[i].value.data(), want[i].name.c_str(),
                   want[i].value.c_str());
      CHECK(false);
    }
  }
}

// The dynamic table, newest first, and its size.
void ExpectTable(const HpackDecoder& d, const std::vector<Pair>& want, size_t size) {
  CHECK_EQ(d.dynamic_table_entries(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    CHECK(d.dynamic_entry(i).name == want[i].name);
    CHECK(d.dynamic_entry(i).value == want[i].value);
  }
  CHECK_EQ(d.dynamic_table_size_bytes(), size);
}

void ExpectOk(const HpackDecodeResult& r) {
  if (!r.ok()) std::fprintf(stderr, "unexpected: %s\n", r.status.ToString().c_str());
  CHECK(r.ok());
}

void ExpectCompressionError(const HpackDecodeResult& r, const char* what, size_t offset) {
  if (r.error != HpackError::kCompression || r.offset != offset) {
    std::fprintf(stderr, "want '%s' at %zu, got: %s\n", what, offset, r.status.ToString().c_str());
  }
  CHECK(r.error == HpackError::kCompression);
  CHECK(r.status.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(r.status.message(), what);
  CHECK_EQ(r.offset, offset);
  CHECK_CONTAINS(r.status.message(), ("at byte " + std::to_string(offset)).c_str());
}

void ExpectRefused(HpackDecoder* d, const char* hex, const char* what, size_t offset) {
  std::vector<HpackField> fields;
  fields.push_back(HpackField{"stale", "stale", false});
  ExpectCompressionError(DecodeHex(d, hex, &fields), what, offset);
  CHECK(fields.empty());
}

void ExpectRefusedFresh(const char* hex, const char* what, size_t offset) {
  HpackDecoder d;
  ExpectRefused(&d, hex, what, offset);
}

}  // namespace

// ------------------------------------------------------------------ Huffman

TEST(HuffmanCodeIsTheRfcCode) {
  // Spot checks against RFC 7541 Appendix B (codes derived from the lengths).
  struct {
    int symbol;
    uint32_t code;
    int length;
  } const kCodes[] = {
      {0, 0x1ff8, 13},      {1, 0x7fffd8, 23},     {10, 0x3ffffffc, 30}, {' ', 0x14, 6},
      {'0', 0x0, 5},        {'9', 0x1f, 6},        {':', 0x5c, 7},       {'a', 0x3, 5},
      {'z', 0x7b, 7},       {'\\', 0x7fff0, 19},   {'~', 0x1ffd, 13},    {127, 0xffffffc, 28},
      {128, 0xfffe6, 20},   {200, 0x3ffffe2, 26},  {220, 0xffffffd, 28}, {254, 0x7fffff0, 27},
      {255, 0x3ffffee, 26}, {256, 0x3fffffff, 30},
  };
  for (const auto& c : kCodes) {
    CHECK_EQ(HpackHuffman::Code(c.symbol), c.code);
    CHECK_EQ(HpackHuffman::CodeLength(c.symbol), c.length);
  }
  // A complete prefix code: the Kraft sum is exactly one.
  uint64_t kraft = 0;
  for (int s = 0; s <= 256; ++s) kraft += uint64_t{1} << (30 - HpackHuffman::CodeLength(s));
  CHECK_EQ(kraft, uint64_t{1} << 30);
}

TEST(HuffmanRfcStrings) {
  const struct {
    const char* text;
    const char* hex;
  } kCases[] = {
      {"www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"},
      {"no-cache", "a8eb 1064 9cbf"},
      {"custom-key", "25a8 49e9 5ba9 7d7f"},
      {"custom-value", "25a8 49e9 5bb8 e8b4 bf"},
      {"302", "6402"},
      {"private", "aec3 771a 4b"},
      {"Mon, 21 Oct 2013 20:13:21 GMT", "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff"},
      {"https://www.example.com", "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3"},
      {"gzip", "9bd9 ab"},
      {"", ""},
  };
  for (const auto& c : kCases) {
    const std::vector<uint8_t> coded = Hex(c.hex);
    std::string out;
    HpackHuffman::Encode(c.text, &out);
    CHECK(Bytes(out) == coded);
    CHECK_EQ(HpackHuffman::EncodedSize(c.text), coded.size());
    std::string back;
    CHECK(HpackHuffman::Decode(coded.data(), coded.size(), &back) == HpackHuffman::DecodeError::kNone);
    CHECK(back == c.text);
  }
}

TEST(HuffmanRejectsEosAndBadPadding) {
  using E = HpackHuffman::DecodeError;
  std::string out;
  auto decode = [&](const char* hex) {
    const std::vector<uint8_t> b = Hex(hex);
    out.clear();
    return HpackHuffman::Decode(b.data(), b.size(), &out);
  };
  CHECK(decode("1f") == E::kNone);  // 'a' and three ones of padding
  CHECK(out == "a");
  CHECK(decode("ffff ffff") == E::kEos);        // EOS, then padding
  CHECK(decode("1fff ffff ff") == E::kEos);     // 'a', EOS
  CHECK(decode("1fff") == E::kPaddingTooLong);  // 'a', 11 ones
  CHECK(decode("ff") == E::kPaddingTooLong);    // 8 ones: a whole byte of padding
  CHECK(decode("18") == E::kPaddingNotOnes);    // 'a', 000
  CHECK(decode("1e") == E::kPaddingNotOnes);    // 'a', 110
  CHECK(decode("fe") == E::kPaddingTooLong);    // '!' is 10 bits: 8 bits pending
}

TEST(HuffmanRoundTripsRandomBytes) {
  std::mt19937 rng(7);
  std::string in, coded, back;
  for (int iter = 0; iter < 2000; ++iter) {
    in.resize(rng() % 64);
    for (char& c : in) c = static_cast<char>(rng() % 256);
    coded.clear();
    HpackHuffman::Encode(in, &coded);
    CHECK_EQ(coded.size(), HpackHuffman::EncodedSize(in));
    back.clear();
    CHECK(HpackHuffman::Decode(reinterpret_cast<const uint8_t*>(coded.data()), coded.size(), &back) ==
          HpackHuffman::DecodeError::kNone);
    CHECK(back == in);
  }
}

// The table-driven decoder against a bit-at-a-time one written from the
// codewords, on random bytes (mostly invalid) and random valid strings.
TEST(HuffmanDecoderMatchesABitwiseReference) {
  using E = HpackHuffman::DecodeError;
  auto reference = [](const std::string& in, std::string* out) {
    uint32_t code = 0;
    int len = 0;
    for (unsigned char byte : in) {
      for (int bit = 7; bit >= 0; --bit) {
        code = code << 1 | ((byte >> bit) & 1u);
        ++len;
        for (int s = 0; s <= 256; ++s) {
          if (HpackHuffman::CodeLength(s) == len && HpackHuffman::Code(s) == code) {
            if (s == 256) return E::kEos;
            out->push_back(static_cast<char>(s));
            code = 0;
            len = 0;
            break;
          }
        }
      }
    }
    if (len > 7) return E::kPaddingTooLong;
    return code == (1u << len) - 1 ? E::kNone : E::kPaddingNotOnes;
  };
  std::mt19937 rng(3);
  std::string in, want, got;
  int valid = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    in.resize(rng() % 12);
    for (char& c : in) c = static_cast<char>(iter % 3 == 0 ? 0xf0 | (rng() % 16) : rng() % 256);
    if (iter % 3 == 1) {
      const std::string text = in;
      in.clear();
      HpackHuffman::Encode(text, &in);
    }
    want.clear();
    got.clear();
    const E w = reference(in, &want);
    const E g = HpackHuffman::Decode(reinterpret_cast<const uint8_t*>(in.data()), in.size(), &got);
    CHECK(w == g);
    if (w == E::kNone) {
      CHECK(want == got);
      ++valid;
    }
  }
  CHECK(valid > 1000);
}

// ------------------------------------------------------------------ integers

TEST(IntegerRfcExamples) {
  std::string out;
  HpackEncodeInteger(10, 5, 0, &out);  // C.1.1
  CHECK(Bytes(out) == Hex("0a"));
  out.clear();
  HpackEncodeInteger(1337, 5, 0, &out);  // C.1.2
  CHECK(Bytes(out) == Hex("1f9a0a"));
  out.clear();
  HpackEncodeInteger(42, 8, 0, &out);  // C.1.3
  CHECK(Bytes(out) == Hex("2a"));

  const std::vector<uint8_t> b = Hex("ff9a0a 55");  // the bits above the prefix are ignored
  size_t pos = 0;
  uint32_t v = 0;
  CHECK(HpackDecodeInteger(b.data(), b.size(), &pos, 5, &v) == HpackIntegerStatus::kOk);
  CHECK_EQ(v, 1337u);
  CHECK_EQ(pos, 3u);
}

TEST(IntegerEdgeCases) {
  for (int prefix = 1; prefix <= 8; ++prefix) {
    const uint32_t mask = (1u << prefix) - 1;
    for (uint32_t value :
         {0u, mask - 1, mask, mask + 1, 127u + mask, 128u + mask, 0x7fffffffu, 0xffffffffu}) {
      if (prefix == 1 && value == mask - 1 && mask == 1) value = 0;
      std::string out;
      HpackEncodeInteger(value, prefix, 0, &out);
      size_t pos = 0;
      uint32_t back = 1;
      const auto* data = reinterpret_cast<const uint8_t*>(out.data());
      CHECK(HpackDecodeInteger(data, out.size(), &pos, prefix, &back) == HpackIntegerStatus::kOk);
      CHECK_EQ(back, value);
      CHECK_EQ(pos, out.size());
      // Every proper prefix is truncated and leaves *pos where it was.
      for (size_t n = 0; n < out.size(); ++n) {
        pos = 0;
        CHECK(HpackDecodeInteger(data, n, &pos, prefix, &back) == HpackIntegerStatus::kTruncated);
        CHECK_EQ(pos, 0u);
        CHECK_EQ(back, 0u);
      }
    }
    // 2^32 - 1 plus one: the largest value's last continuation bytes, bumped.
    std::string out;
    HpackEncodeInteger(0xffffffffu, prefix, 0, &out);
    for (size_t i = 1; i < out.size(); ++i) {
      if ((static_cast<uint8_t>(out[i]) & 0x7f) != 0x7f) {
        out[i] = static_cast<char>(out[i] + 1);
        break;
      }
    }
    size_t pos = 0;
    uint32_t back = 1;
    CHECK(HpackDecodeInteger(reinterpret_cast<const uint8_t*>(out.data()), out.size(), &pos, prefix, &back) ==
          HpackIntegerStatus::kOverflow);
    CHECK_EQ(back, 0u);
  }
  size_t pos = 0;
  uint32_t v = 0;
  // Too many continuation bytes, even though the value is small.
  const std::vector<uint8_t> padded = Hex("1f 80 80 80 80 80 00");
  CHECK(HpackDecodeInteger(padded.data(), padded.size(), &pos, 5, &v) == HpackIntegerStatus::kOverflow);
  // Five are fine.
  const std::vector<uint8_t> five = Hex("1f 81 80 80 80 00");
  pos = 0;
  CHECK(HpackDecodeInteger(five.data(), five.size(), &pos, 5, &v) == HpackIntegerStatus::kOk);
  CHECK_EQ(v, 32u);
  const std::vector<uint8_t> big = Hex("1f ff ff ff ff 0f");
  pos = 0;
  CHECK(HpackDecodeInteger(big.data(), big.size(), &pos, 5, &v) == HpackIntegerStatus::kOverflow);
  pos = 0;
  CHECK(HpackDecodeInteger(big.data(), 0, &pos, 5, &v) == HpackIntegerStatus::kTruncated);
}

// ------------------------------------------------------------------ RFC 7541 Appendix C

TEST(RfcC2LiteralsAndIndexed) {
  std::vector<HpackField> f;
  HpackDecoder d;
  ExpectOk(DecodeHex(&d, "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572", &f));  // C.2.1
  ExpectFields(f, {{"custom-key", "custom-header"}});
  ExpectTable(d, {{"custom-key", "custom-header"}}, 55);

  HpackDecoder d2;
  ExpectOk(DecodeHex(&d2, "040c 2f73 616d 706c 652f 7061 7468", &f));  // C.2.2
  ExpectFields(f, {{":path", "/sample/path"}});
  CHECK(!f[0].never_index);
  ExpectTable(d2, {}, 0);

  HpackDecoder d3;
  ExpectOk(DecodeHex(&d3, "1008 7061 7373 776f 7264 0673 6563 7265 74", &f));  // C.2.3
  ExpectFields(f, {{"password", "secret"}});
  CHECK(f[0].never_index);
  ExpectTable(d3, {}, 0);

  HpackDecoder d4;
  ExpectOk(DecodeHex(&d4, "82", &f));  // C.2.4
  ExpectFields(f, {{":method", "GET"}});
  ExpectTable(d4, {}, 0);
}

namespace {

const std::vector<Pair> kReq1 = {
    {":method", "GET"}, {":scheme", "http"}, {":path", "/"}, {":authority", "www.example.com"}};
const std::vector<Pair> kReq2 = {{":method", "GET"},
                                 {":scheme", "http"},
                                 {":path", "/"},
                                 {":authority", "www.example.com"},
                                 {"cache-control", "no-cache"}};
const std::vector<Pair> kReq3 = {{":method", "GET"},
                                 {":scheme", "https"},
                                 {":path", "/index.html"},
                                 {":authority", "www.example.com"},
                                 {"custom-key", "custom-value"}};

void RequestSequence(const char* b1, const char* b2, const char* b3) {
  HpackDecoder d;
  std::vector<HpackField> f;
  ExpectOk(DecodeHex(&d, b1, &f));
  ExpectFields(f, kReq1);
  ExpectTable(d, {{":authority", "www.example.com"}}, 57);
  ExpectOk(DecodeHex(&d, b2, &f));
  ExpectFields(f, kReq2);
  ExpectTable(d, {{"cache-control", "no-cache"}, {":authority", "www.example.com"}}, 110);
  ExpectOk(DecodeHex(&d, b3, &f));
  ExpectFields(f, kReq3);
  ExpectTable(
      d, {{"custom-key", "custom-value"}, {"cache-control", "no-cache"}, {":authority", "www.example.com"}},
      164);
}

const char kDate1[] = "Mon, 21 Oct 2013 20:13:21 GMT";
const char kDate2[] = "Mon, 21 Oct 2013 20:13:22 GMT";
const char kLocation[] = "https://www.example.com";
const char kCookie[] = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

void ResponseSequence(const char* b1, const char* b2, const char* b3) {
  HpackDecoder d(256);
  std::vector<HpackField> f;
  ExpectOk(DecodeHex(&d, b1, &f));
  ExpectFields(f,
               {{":status", "302"}, {"cache-control", "private"}, {"date", kDate1}, {"location", kLocation}});
  ExpectTable(
      d, {{"location", kLocation}, {"date", kDate1}, {"cache-control", "private"}, {":status", "302"}}, 222);
  ExpectOk(DecodeHex(&d, b2, &f));
  ExpectFields(f,
               {{":status", "307"}, {"cache-control", "private"}, {"date", kDate1}, {"location", kLocation}});
  ExpectTable(
      d, {{":status", "307"}, {"location", kLocation}, {"date", kDate1}, {"cache-control", "private"}}, 222);
  ExpectOk(DecodeHex(&d, b3, &f));
  ExpectFields(f, {{":status", "200"},
                   {"cache-control", "private"},
                   {"date", kDate2},
                   {"location", kLocation},
                   {"content-encoding", "gzip"},
                   {"set-cookie", kCookie}});
  ExpectTable(d, {{"set-cookie", kCookie}, {"content-encoding", "gzip"}, {"date", kDate2}}, 215);
}

}  // namespace

TEST(RfcC3RequestsWithoutHuffman) {
  RequestSequence("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "8286 84be 5808 6e6f 2d63 6163 6865",
                  "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65");
}

TEST(RfcC4RequestsWithHuffman) {
  RequestSequence("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", "8286 84be 5886 a8eb 1064 9cbf",
                  "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
}

TEST(RfcC5ResponsesWithoutHuffman) {
  ResponseSequence(
      "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
      "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "4803 3330 37c1 c0bf",
      "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
      "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
      "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31");
}

TEST(RfcC6ResponsesWithHuffman) {
  ResponseSequence(
      "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
      "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
      "4883 640e ffc1 c0bf",
      "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
      "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
      "9587 3160 65c0 03ed 4ee5 b106 3d50 07");
}

// ------------------------------------------------------------------ malformed blocks

TEST(RefusesMalformedBlocks) {
  ExpectRefusedFresh("80", "index 0", 0);
  ExpectRefusedFresh("82 be", "index 62 past the end of the table (61 static + 0 dynamic entries)", 1);
  ExpectRefusedFresh("82 ff 80 80 80 80 80 00", "index does not fit 32 bits", 1);
  ExpectRefusedFresh("82 ff", "truncated index", 1);
  ExpectRefusedFresh("41", "truncated string length", 1);  // name index 1, no value
  ExpectRefusedFresh("400a 6375", "string length 10 past the end of the block (2 bytes left)", 1);
  ExpectRefusedFresh("00 7f ff ff ff ff 0f", "string length does not fit 32 bits", 1);
  ExpectRefusedFresh("04 81 18", "Huffman padding not all ones", 1);
  ExpectRefusedFresh("04 82 1f ff", "Huffman padding longer than 7 bits", 1);
  ExpectRefusedFresh("04 84 ff ff ff ff", "EOS symbol inside a Huffman string", 1);
  ExpectRefusedFresh("82 20", "dynamic table size update after a header field", 1);
  ExpectRefusedFresh("3fe2 1f", "dynamic table size update to 4097 above SETTINGS_HEADER_TABLE_SIZE 4096", 0);
  ExpectRefusedFresh("3f", "malformed integer in a dynamic table size update", 0);

  // An index one past the dynamic table.
  HpackDecoder d;
  std::vector<HpackField> f;
  ExpectOk(DecodeHex(&d, "4003 666f 6f03 6261 72", &f));  // foo: bar, indexed
  ExpectOk(DecodeHex(&d, "be", &f));
  ExpectFields(f, {{"foo", "bar"}});
  ExpectRefused(&d, "82 bf", "index 63 past the end of the table (61 static + 1 dynamic entries)", 1);
  // After a compression error the decoder stays refused (its table is out of step).
  ExpectRefused(&d, "82", "decoder unusable", 0);
}

TEST(SizeUpdatesAtTheStartAreAppliedAndBounded) {
  HpackDecoder d;
  std::vector<HpackField> f;
  ExpectOk(DecodeHex(&d, "4003 666f 6f03 6261 72", &f));
  ExpectTable(d, {{"foo", "bar"}}, 38);
  ExpectOk(DecodeHex(&d, "20 3f e1 1f 82", &f));  // 0 then 4096: empties the table, two updates allowed
  ExpectFields(f, {{":method", "GET"}});
  ExpectTable(d, {}, 0);
  CHECK_EQ(d.dynamic_table_max_size_bytes(), 4096u);
  // An update alone is a valid block.
  ExpectOk(DecodeHex(&d, "3f 11", &f));  // 48
  CHECK(f.empty());
  CHECK_EQ(d.dynamic_table_max_size_bytes(), 48u);
  ExpectOk(DecodeHex(&d, "4003 666f 6f03 6261 72", &f));  // 38 bytes fit
  ExpectOk(DecodeHex(&d, "4003 6261 7a03 7175 78", &f));  // baz: qux evicts foo: bar
  ExpectTable(d, {{"baz", "qux"}}, 38);
}

TEST(LoweredSettingRequiresASizeUpdate) {
  HpackDecoder d;
  std::vector<HpackField> f;
  ExpectOk(DecodeHex(&d, "4003 666f 6f03 6261 72", &f));
  d.SetHeaderTableSizeSetting(100);
  // The update may not exceed the new setting.
  HpackDecoder d2;
  d2.SetHeaderTableSizeSetting(100);
  ExpectRefused(&d2, "3f 46", "dynamic table size update to 101 above SETTINGS_HEADER_TABLE_SIZE 100", 0);
  HpackDecoder d3;
  d3.SetHeaderTableSizeSetting(100);
  ExpectRefused(&d3, "82", "missing dynamic table size update", 0);
  HpackDecoder d4;
  d4.SetHeaderTableSizeSetting(100);
  ExpectRefused(&d4, "", "missing dynamic table size update", 0);

  ExpectOk(DecodeHex(&d, "20 82", &f));
  ExpectTable(d, {}, 0);
  ExpectOk(DecodeHex(&d, "82", &f));  // required only once
  // Raising the setting requires nothing; the peer may use it by an update.
  d.SetHeaderTableSizeSetting(8192);
  ExpectOk(DecodeHex(&d, "82", &f));
  ExpectOk(DecodeHex(&d, "3f e1 3f", &f));  // 8192
  CHECK_EQ(d.dynamic_table_max_size_bytes(), 8192u);
}

// ------------------------------------------------------------------ header list size

TEST(HeaderListSizeLimitKeepsTheTableInStep) {
  HpackDecoder d(4096, 100);
  std::vector<HpackField> f;
  // foo: bar (38) + :method GET (42) = 80 fit.
  ExpectOk(DecodeHex(&d, "4003 666f 6f03 6261 72 82", &f));
  CHECK_EQ(f.size(), 2u);
  // A third field (80 + 38 > 100) is refused, but the insert after it still happens.
  const HpackDecodeResult r = DecodeHex(&d, "be 82 4003 6261 7a03 7175 78", &f);
  CHECK(r.error == HpackError::kHeaderListTooLarge);
  CHECK(r.status.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(r.status.message(),
                 "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE (100 bytes) at byte 2");
  CHECK(f.empty());
  ExpectTable(d, {{"baz", "qux"}, {"foo", "bar"}}, 76);
  // The connection goes on.
  ExpectOk(DecodeHex(&d, "be bf", &f));
  ExpectFields(f, {{"baz", "qux"}, {"foo", "bar"}});
  // Exactly at the limit is fine.
  d.SetMaxHeaderListSize(76);
  ExpectOk(DecodeHex(&d, "be bf", &f));
  d.SetMaxHeaderListSize(75);
  CHECK(DecodeHex(&d, "be bf", &f).error == HpackError::kHeaderListTooLarge);
}

TEST(HpackBombIsRefusedAtTheFieldThatCrossesTheLimit) {
  HpackDecoder d(4096, 16384);
  std::vector<HpackField> f;
  // One entry of 4032 bytes: "x" and a 3999-byte value.
  std::string block;
  block.push_back(0x40);
  HpackEncodeInteger(1, 7, 0, &block);
  block += "x";
  HpackEncodeInteger(3999, 7, 0, &block);
  block.append(3999, 'v');
  ExpectOk(d.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &f));
  CHECK_EQ(d.dynamic_table_size_bytes(), 4032u);
  // 100000 one-byte references to it: 400 MB if it were expanded.
  const std::vector<uint8_t> bomb(100000, 0xbe);
  const HpackDecodeResult r = d.Decode(bomb.data(), bomb.size(), &f);
  CHECK(r.error == HpackError::kHeaderListTooLarge);
  CHECK_EQ(r.offset, 4u);  // 4 * 4032 = 16128 fit, the fifth does not
  CHECK(f.empty());
  // The decoder is still usable and the bomb kept nothing.
  ExpectOk(DecodeHex(&d, "be", &f));
  CHECK_EQ(f.size(), 1u);
  CHECK_EQ(f[0].value.size(), 3999u);
}

// ------------------------------------------------------------------ eviction

TEST(EvictionOldestFirstAndOversizedEntriesEmptyTheTable) {
  HpackDecoder d(100);
  std::vector<HpackField> f;
  // Entries of 1 + 7 + 32 = 40 bytes.
  ExpectOk(DecodeHex(&d, "4001 6107 3131 3131 3131 31", &f));  // a: 1111111
  ExpectOk(DecodeHex(&d, "4001 6207 3232 3232 3232 32", &f));  // b: 2222222
  ExpectTable(d, {{"b", "2222222"}, {"a", "1111111"}}, 80);
  ExpectOk(DecodeHex(&d, "4001 6307 3333 3333 3333 33 be bf", &f));  // c evicts a
  ExpectFields(f, {{"c", "3333333"}, {"c", "3333333"}, {"b", "2222222"}});
  ExpectTable(d, {{"c", "3333333"}, {"b", "2222222"}}, 80);
  // A literal whose name is the entry it evicts: the name survives.
  ExpectOk(DecodeHex(&d,
                     "7f00 3c"
                     "3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434"
                     "3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434 3434",
                     &f));  // name index 63 ("b"), 60-byte value: 93 bytes, evicts both
  ExpectFields(f, {{"b", std::string(60, '4')}});
  ExpectTable(d, {{"b", std::string(60, '4')}}, 93);
  // An entry larger than the table empties it and is not added.
  ExpectOk(DecodeHex(&d,
                     "4001 6144"
                     "3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535"
                     "3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535 3535"
                     "3535 3535",
                     &f));  // a: 68 bytes -> 101
  ExpectFields(f, {{"a", std::string(68, '5')}});
  ExpectTable(d, {}, 0);
}

TEST(ManyEntriesGrowTheRingInOrder) {
  HpackDecoder d(65536);
  std::vector<HpackField> f;
  std::string block;
  for (int i = 0; i < 1000; ++i) {
    const std::string name = "k" + std::to_string(i);
    block.push_back(0x40);
    HpackEncodeInteger(static_cast<uint32_t>(name.size()), 7, 0, &block);
    block += name;
    block += std::string(1, '\0');  // empty value
    if (i % 97 == 0) {
      ExpectOk(d.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &f));
      block.clear();
    }
  }
  ExpectOk(d.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &f));
  // Entries of 32 + 2..4 bytes; 65536 holds about 1800, so all 1000 stay.
  CHECK_EQ(d.dynamic_table_entries(), 1000u);
  for (size_t i = 0; i < 1000; ++i) CHECK(d.dynamic_entry(i).name == "k" + std::to_string(999 - i));
  // And with a smaller table the oldest go first.
  ExpectOk(DecodeHex(&d, "3f e1 1f", &f));  // 4096
  CHECK(d.dynamic_table_size_bytes() <= 4096u);
  CHECK(d.dynamic_entry(0).name == "k999");
  const size_t n = d.dynamic_table_entries();
  CHECK(d.dynamic_entry(n - 1).name == "k" + std::to_string(1000 - n));
}

// ------------------------------------------------------------------ encoder

TEST(EncoderWritesGrpcHeadersAndTrailers) {
  HpackEncoder e(/*huffman=*/false);
  std::string out;
  e.EncodeGrpcResponseHeaders(&out);
  // Size update to 0, ":status: 200" indexed (8), content-type by name index 31.
  CHECK(Bytes(out) == Hex("20 88 0f10 10 6170 706c 6963 6174 696f 6e2f 6772 7063"));
  out.clear();
  e.EncodeGrpcResponseHeaders(&out);
  CHECK(Bytes(out) == Hex("88 0f10 10 6170 706c 6963 6174 696f 6e2f 6772 7063"));  // no update again

  HpackDecoder d;
  std::vector<HpackField> f;
  out.clear();
  e.EncodeGrpcTrailers(3, "bad input: 100% \xe2\x9c\x97\n", &out);
  ExpectOk(d.Decode(reinterpret_cast<const uint8_t*>(out.data()), out.size(), &f));
  ExpectFields(f, {{"grpc-status", "3"}, {"grpc-message", "bad input: 100%25 %E2%9C%97%0A"}});
  out.clear();
  e.OnPeerHeaderTableSizeSetting(0);
  e.set_huffman(true);
  e.EncodeGrpcTrailers(0, "", &out, /*trailers_only=*/true);
  CHECK_EQ(static_cast<uint8_t>(out[0]), 0x20u);
  ExpectOk(d.Decode(reinterpret_cast<const uint8_t*>(out.data()), out.size(), &f));
  ExpectFields(f, {{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "0"}});
  ExpectTable(d, {}, 0);
}

TEST(EncoderIndexesExactStaticMatchesOnly) {
  HpackEncoder e(false);
  std::string out;
  const std::vector<HpackField> fields = {{":method", "GET", false},    {":path", "/", false},
                                          {":status", "404", false},    {":status", "201", false},
                                          {"password", "secret", true}, {":status", "200", true}};
  e.EncodeBlock(fields, &out);
  CHECK(Bytes(out) ==
        Hex("20 82 84 8d 08 03 3230 31 10 08 7061 7373 776f 7264 06 7365 6372 6574 18 03 3230 30"));
  HpackDecoder d;
  std::vector<HpackField> f;
  ExpectOk(d.Decode(reinterpret_cast<const uint8_t*>(out.data()), out.size(), &f));
  CHECK_EQ(f.size(), fields.size());
  for (size_t i = 0; i < f.size(); ++i) {
    CHECK(f[i].name == fields[i].name && f[i].value == fields[i].value);
    CHECK(f[i].never_index == fields[i].never_index);
  }
}

TEST(PercentEncodesGrpcMessage) {
  std::string out = "stale";
  steadyserve::PercentEncodeGrpcMessage("plain text ~!", &out);
  CHECK(out == "plain text ~!");
  steadyserve::PercentEncodeGrpcMessage(std::string("a%b\x7f\x1f\x00\xff", 7), &out);
  CHECK(out == "a%25b%7F%1F%00%FF");
  steadyserve::PercentEncodeGrpcMessage("", &out);
  CHECK(out.empty());
}

TEST(EncoderOutputRoundTripsThroughTheDecoder) {
  std::mt19937 rng(42);
  const char* const kNames[] = {":status", "content-type", "grpc-status", "grpc-message", "date", "x-custom",
                                ""};
  HpackDecoder d(4096, 1 << 20);
  std::vector<HpackField> got;
  std::vector<std::string> storage;
  std::vector<HpackField> fields;
  for (int iter = 0; iter < 500; ++iter) {
    HpackEncoder e(iter % 2 == 0);
    storage.clear();
    const size_t n = rng() % 12;
    for (size_t i = 0; i < n; ++i) {
      std::string name = kNames[rng() % 7];
      if (name.empty()) {
        name.resize(1 + rng() % 20);
        for (char& c : name) c = static_cast<char>('a' + rng() % 26);
      }
      std::string value;
      if (rng() % 4 == 0) {
        value = "200";
      } else {
        value.resize(rng() % 300);
        for (char& c : value) c = static_cast<char>(rng() % 256);
      }
      storage.push_back(name);
      storage.push_back(value);
    }
    fields.clear();
    for (size_t i = 0; i < n; ++i) fields.push_back({storage[2 * i], storage[2 * i + 1], rng() % 5 == 0});
    std::string block;
    e.EncodeBlock(fields, &block);
    ExpectOk(d.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &got));
    CHECK_EQ(got.size(), fields.size());
    for (size_t i = 0; i < n; ++i) {
      CHECK(got[i].name == fields[i].name);
      CHECK(got[i].value == fields[i].value);
      // Exact static matches are indexed, which cannot carry never-indexed.
      CHECK(got[i].never_index == fields[i].never_index);
    }
    CHECK_EQ(d.dynamic_table_entries(), 0u);  // the encoder never indexes
  }
}

TEST_MAIN()
