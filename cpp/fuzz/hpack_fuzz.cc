// libFuzzer target for the HPACK decoder and encoder.
//
// Input: one configuration byte, then header blocks, each prefixed by its
// length as two big-endian bytes (a short last block takes what is left).
// The configuration picks SETTINGS_HEADER_TABLE_SIZE and
// SETTINGS_MAX_HEADER_LIST_SIZE. Every block is decoded on one connection's
// decoder; then the invariants are checked (the table within its bounds, the
// list within its limit), and the decoded fields are re-encoded (with and
// without Huffman) and decoded by a second decoder, which must give them back.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "steadyserve/hpack.h"
#include "steadyserve/hpack_huffman.h"

using namespace steadyserve;

namespace {

constexpr uint32_t kTableSizes[] = {4096, 0, 256, 65536};
constexpr uint32_t kListSizes[] = {16384, 200, 65536, 0};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::vector<HpackField> fields;
  static std::vector<HpackField> again;
  static std::vector<std::string> copy;
  static std::string block;
  if (size < 1) return 0;
  const uint8_t config = data[0];
  const uint32_t table_size = kTableSizes[config & 3];
  const uint32_t list_size = kListSizes[(config >> 2) & 3];
  HpackDecoder decoder(table_size, list_size);
  HpackDecoder checker(65536, 1u << 30);
  HpackEncoder encoder((config & 0x10) != 0);

  size_t pos = 1;
  bool broken = false;
  while (pos < size) {
    size_t n = size - pos;
    if (n >= 2) {
      n = std::min<size_t>(size_t{data[pos]} << 8 | data[pos + 1], size - pos - 2);
      pos += 2;
    } else {
      // One byte left: a block of one byte.
    }
    const HpackDecodeResult r = decoder.Decode(data + pos, n, &fields);
    pos += n;
    FUZZ_CHECK(decoder.dynamic_table_size_bytes() <= decoder.dynamic_table_max_size_bytes());
    FUZZ_CHECK(decoder.dynamic_table_max_size_bytes() <= table_size);
    size_t counted = 0;
    for (size_t i = 0; i < decoder.dynamic_table_entries(); ++i) {
      const HpackField e = decoder.dynamic_entry(i);
      counted += e.name.size() + e.value.size() + 32;
    }
    FUZZ_CHECK(counted == decoder.dynamic_table_size_bytes());
    if (!r.ok()) {
      FUZZ_CHECK(fields.empty());
      FUZZ_CHECK(!r.status.ok() && !r.status.message().empty());
      FUZZ_CHECK(r.offset <= n);
      if (broken) FUZZ_CHECK(r.error == HpackError::kCompression);
      if (r.error == HpackError::kCompression) broken = true;
      continue;
    }
    FUZZ_CHECK(!broken);
    size_t list = 0;
    for (const HpackField& f : fields) list += f.name.size() + f.value.size() + 32;
    FUZZ_CHECK(list <= list_size);

    // Re-encode and decode again: the same fields come back.
    copy.clear();
    for (const HpackField& f : fields) {
      copy.emplace_back(f.name);
      copy.emplace_back(f.value);
    }
    block.clear();
    encoder.EncodeBlock(fields, &block);
    const HpackDecodeResult back =
        checker.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &again);
    FUZZ_CHECK(back.ok());
    FUZZ_CHECK(again.size() == fields.size());
    for (size_t i = 0; i < again.size(); ++i) {
      FUZZ_CHECK(again[i].name == copy[2 * i] && again[i].value == copy[2 * i + 1]);
    }
    FUZZ_CHECK(checker.dynamic_table_entries() == 0);
  }

  // Huffman on the raw bytes: decoding either fails or re-encodes to a
  // string that decodes to the same bytes.
  std::string text;
  if (HpackHuffman::Decode(data, size, &text) == HpackHuffman::DecodeError::kNone) {
    std::string coded;
    HpackHuffman::Encode(text, &coded);
    FUZZ_CHECK(coded.size() == HpackHuffman::EncodedSize(text));
    std::string back;
    FUZZ_CHECK(HpackHuffman::Decode(reinterpret_cast<const uint8_t*>(coded.data()), coded.size(), &back) ==
               HpackHuffman::DecodeError::kNone);
    FUZZ_CHECK(back == text);
  }
  return 0;
}
