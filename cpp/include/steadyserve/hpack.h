// HPACK (RFC 7541): the header compression of HTTP/2, for the native gRPC
// frontend.
//
// HpackDecoder decodes the header blocks a client sends (one per HEADERS
// frame plus its CONTINUATIONs, concatenated by the caller) with a dynamic
// table bounded by our SETTINGS_HEADER_TABLE_SIZE, and refuses a header list
// larger than our SETTINGS_MAX_HEADER_LIST_SIZE while decoding, so a small
// block that references a large table entry many times (an "HPACK bomb") costs
// neither memory nor more than one pass over the block.
//
// HpackEncoder writes the response headers and trailers we send. It never
// inserts into the peer's dynamic table: exact static-table matches are
// indexed (":status: 200"), everything else is a literal without indexing
// (never indexed when marked sensitive), so it keeps no per-connection state
// beyond one pending table size update.
//
// Neither class is thread-safe; a connection owns one of each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "steadyserve/status.h"

namespace steadyserve {

// One header field. In a decoded list the views point into the decoder's
// storage (valid until its next Decode); in an encoder's input, into the
// caller's.
struct HpackField {
  std::string_view name;
  std::string_view value;
  // Decoded: sent as "literal never indexed". Encoded: send it so (for
  // values such as credentials that intermediaries must not index).
  bool never_index = false;
};

// Why a block was refused, for the caller to map onto HTTP/2.
enum class HpackError : uint8_t {
  kNone = 0,
  // Malformed or inconsistent block: connection error COMPRESSION_ERROR. The
  // decoder's table is out of step with the peer's afterwards, so the decoder
  // refuses every later block too.
  kCompression,
  // The decoded list would exceed SETTINGS_MAX_HEADER_LIST_SIZE: refuse the
  // stream (HTTP 431 / gRPC RESOURCE_EXHAUSTED). The whole block was still
  // decoded, so the dynamic table stays in step and the connection lives on.
  kHeaderListTooLarge,
};

struct HpackDecodeResult {
  HpackError error = HpackError::kNone;
  size_t offset = 0;  // byte offset in the block of what was refused
  Status status;      // kInvalidArgument naming what was wrong and the offset
  bool ok() const { return error == HpackError::kNone; }
};

// Integer representation (RFC 7541 Section 5.1) with an N-bit prefix
// (1 <= prefix_bits <= 8). Decoding reads from data[*pos]; the bits above the
// prefix in the first byte are ignored. Refused: a value above 2^32 - 1, more
// than 5 continuation bytes, or the end of the data inside the integer. On
// success *pos is past the integer; *value is 0 on failure.
enum class HpackIntegerStatus : uint8_t { kOk, kTruncated, kOverflow };
HpackIntegerStatus HpackDecodeInteger(const uint8_t* data, size_t size, size_t* pos, int prefix_bits,
                                      uint32_t* value);
// Appends `value` with the first byte's bits above the prefix set to `flags`.
void HpackEncodeInteger(uint32_t value, int prefix_bits, uint8_t flags, std::string* out);

class HpackDecoder {
 public:
  static constexpr uint32_t kDefaultHeaderTableSizeBytes = 4096;  // RFC 7540 initial value
  static constexpr uint32_t kDefaultMaxHeaderListSizeBytes = 16384;

  explicit HpackDecoder(uint32_t header_table_size_bytes = kDefaultHeaderTableSizeBytes,
                        uint32_t max_header_list_size_bytes = kDefaultMaxHeaderListSizeBytes);

  // Our SETTINGS_HEADER_TABLE_SIZE, to call once the peer has acknowledged
  // it. Size updates in later blocks must not exceed it; when it is below the
  // table's current maximum, the next block must start with a size update.
  void SetHeaderTableSizeSetting(uint32_t bytes);

  // Our SETTINGS_MAX_HEADER_LIST_SIZE: the most a decoded list may total,
  // counting each field as name + value + 32 bytes (RFC 7540 Section 6.5.2).
  void SetMaxHeaderListSize(uint32_t bytes) { max_header_list_size_bytes_ = bytes; }

  // Decodes one complete header block. On OK, *fields holds the decoded
  // fields in order, viewing storage this decoder owns until the next call;
  // on an error *fields is empty. The vector and the storage keep their
  // capacity, so a connection decodes block after block without allocating
  // once they have grown to its usual sizes.
  HpackDecodeResult Decode(const uint8_t* data, size_t size, std::vector<HpackField>* fields);

  // The dynamic table, for tests and diagnostics: its size as RFC 7541
  // counts it, its current maximum (set by size updates), and its entries,
  // 0 being the newest (index 62).
  size_t dynamic_table_size_bytes() const { return table_bytes_; }
  uint32_t dynamic_table_max_size_bytes() const { return table_max_bytes_; }
  size_t dynamic_table_entries() const { return count_; }
  HpackField dynamic_entry(size_t i) const;

 private:
  struct Entry {
    std::string name;
    std::string value;
  };
  // Where a decoded field lies in arena_ (offsets: arena_ may grow meanwhile).
  struct Span {
    size_t offset;
    uint32_t name_size;
    uint32_t value_size;
    bool never_index;
  };

  HpackDecodeResult Fail(HpackError error, size_t offset, const std::string& what);
  HpackDecodeResult DecodeBlock(const uint8_t* data, size_t size);
  // Reads a string literal at *pos into *dst; empty result on success.
  bool ReadString(const uint8_t* data, size_t size, size_t* pos, std::string* dst, HpackDecodeResult* result);
  // Looks up index (>= 1) in the static then the dynamic table.
  bool Lookup(uint32_t index, size_t offset, std::string_view* name, std::string_view* value,
              HpackDecodeResult* result);
  // Adds a decoded field to the list unless the list would grow too large.
  void Emit(std::string_view name, std::string_view value, bool never_index, size_t offset);
  void Insert(const std::string& name, const std::string& value);
  void EvictTo(size_t max_bytes);
  const Entry& EntryAt(size_t i) const { return ring_[(first_ + count_ - 1 - i) % ring_.size()]; }

  uint32_t table_size_setting_bytes_;
  uint32_t max_header_list_size_bytes_;
  uint32_t table_max_bytes_;  // the limit the peer's last size update set
  bool size_update_required_ = false;
  bool broken_ = false;  // a compression error happened: refuse everything

  // The dynamic table: a ring of entries whose strings keep their capacity.
  std::vector<Entry> ring_;
  size_t first_ = 0;  // oldest entry
  size_t count_ = 0;
  size_t table_bytes_ = 0;

  // Per block.
  std::string arena_;
  std::vector<Span> spans_;
  std::string name_buf_;
  std::string value_buf_;
  size_t list_bytes_ = 0;
  bool list_too_large_ = false;
  size_t list_too_large_at_ = 0;
};

class HpackEncoder {
 public:
  explicit HpackEncoder(bool huffman = true) : huffman_(huffman) {}

  // Whether literal names and values are Huffman-coded (when that is shorter).
  void set_huffman(bool huffman) { huffman_ = huffman; }

  // The peer's SETTINGS_HEADER_TABLE_SIZE changed: the next block announces
  // again that this encoder's table has size 0. (The first block always does.)
  void OnPeerHeaderTableSizeSetting(uint32_t bytes);

  // Appends one complete header block holding `fields` to *out.
  void EncodeBlock(const HpackField* fields, size_t count, std::string* out);
  void EncodeBlock(const std::vector<HpackField>& fields, std::string* out) {
    EncodeBlock(fields.data(), fields.size(), out);
  }

  // gRPC's response headers: ":status: 200", "content-type: application/grpc",
  // and "x-request-id" when request_id is not empty.
  void EncodeGrpcResponseHeaders(std::string* out, std::string_view request_id = {});
  // gRPC's trailers: "grpc-status" and, when not empty, "grpc-message"
  // (percent-encoded here). With trailers_only, ":status: 200" and the
  // content-type lead (a Trailers-Only response in one HEADERS frame).
  void EncodeGrpcTrailers(int grpc_status, std::string_view grpc_message, std::string* out,
                          bool trailers_only = false, std::string_view request_id = {});

 private:
  void BeginBlock(std::string* out);
  void AddField(std::string_view name, std::string_view value, bool never_index, std::string* out) const;
  void AddString(std::string_view s, std::string* out) const;

  bool huffman_;
  bool size_update_pending_ = true;
  std::string scratch_;
};

// Percent-encodes a grpc-message value per the gRPC HTTP/2 spec: bytes
// outside 0x20-0x7E and '%' become "%XX" (upper-case hex). Replaces *out.
void PercentEncodeGrpcMessage(std::string_view message, std::string* out);

}  // namespace steadyserve
