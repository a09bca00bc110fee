#include "steadyserve/hpack.h"

#include "steadyserve/hpack_huffman.h"

namespace steadyserve {

namespace {

struct StaticEntry {
  std::string_view name;
  std::string_view value;
};

// RFC 7541 Appendix A; index i + 1.
constexpr StaticEntry kStaticTable[] = {
    {":authority", ""},
    {":method", "GET"},
    {":method", "POST"},
    {":path", "/"},
    {":path", "/index.html"},
    {":scheme", "http"},
    {":scheme", "https"},
    {":status", "200"},
    {":status", "204"},
    {":status", "206"},
    {":status", "304"},
    {":status", "400"},
    {":status", "404"},
    {":status", "500"},
    {"accept-charset", ""},
    {"accept-encoding", "gzip, deflate"},
    {"accept-language", ""},
    {"accept-ranges", ""},
    {"accept", ""},
    {"access-control-allow-origin", ""},
    {"age", ""},
    {"allow", ""},
    {"authorization", ""},
    {"cache-control", ""},
    {"content-disposition", ""},
    {"content-encoding", ""},
    {"content-language", ""},
    {"content-length", ""},
    {"content-location", ""},
    {"content-range", ""},
    {"content-type", ""},
    {"cookie", ""},
    {"date", ""},
    {"etag", ""},
    {"expect", ""},
    {"expires", ""},
    {"from", ""},
    {"host", ""},
    {"if-match", ""},
    {"if-modified-since", ""},
    {"if-none-match", ""},
    {"if-range", ""},
    {"if-unmodified-since", ""},
    {"last-modified", ""},
    {"link", ""},
    {"location", ""},
    {"max-forwards", ""},
    {"proxy-authenticate", ""},
    {"proxy-authorization", ""},
    {"range", ""},
    {"referer", ""},
    {"refresh", ""},
    {"retry-after", ""},
    {"server", ""},
    {"set-cookie", ""},
    {"strict-transport-security", ""},
    {"transfer-encoding", ""},
    {"user-agent", ""},
    {"vary", ""},
    {"via", ""},
    {"www-authenticate", ""},
};
constexpr uint32_t kStaticCount = sizeof(kStaticTable) / sizeof(kStaticTable[0]);
static_assert(kStaticCount == 61, "RFC 7541 Appendix A has 61 entries");

constexpr size_t kEntryOverhead = 32;  // RFC 7541 Section 4.1
constexpr int kMaxContinuationBytes = 5;

size_t EntrySize(size_t name, size_t value) { return name + value + kEntryOverhead; }

std::string At(size_t offset) { return " at byte " + std::to_string(offset); }

}  // namespace

HpackIntegerStatus HpackDecodeInteger(const uint8_t* data, size_t size, size_t* pos, int prefix_bits,
                                      uint32_t* value) {
  *value = 0;
  size_t p = *pos;
  if (p >= size) return HpackIntegerStatus::kTruncated;
  const uint32_t mask = (1u << prefix_bits) - 1;
  uint64_t v = data[p++] & mask;
  if (v == mask) {
    int shift = 0;
    for (int n = 0;; ++n) {
      if (n == kMaxContinuationBytes) return HpackIntegerStatus::kOverflow;
      if (p >= size) return HpackIntegerStatus::kTruncated;
      const uint8_t b = data[p++];
      v += static_cast<uint64_t>(b & 0x7f) << shift;
      if (v > UINT32_MAX) return HpackIntegerStatus::kOverflow;
      shift += 7;
      if ((b & 0x80) == 0) break;
    }
  }
  *value = static_cast<uint32_t>(v);
  *pos = p;
  return HpackIntegerStatus::kOk;
}

void HpackEncodeInteger(uint32_t value, int prefix_bits, uint8_t flags, std::string* out) {
  const uint32_t mask = (1u << prefix_bits) - 1;
  if (value < mask) {
    out->push_back(static_cast<char>(flags | value));
    return;
  }
  out->push_back(static_cast<char>(flags | mask));
  value -= mask;
  while (value >= 0x80) {
    out->push_back(static_cast<char>(0x80 | (value & 0x7f)));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

// ---------------------------------------------------------------- decoder

HpackDecoder::HpackDecoder(uint32_t header_table_size_bytes, uint32_t max_header_list_size_bytes)
    : table_size_setting_bytes_(header_table_size_bytes),
      max_header_list_size_bytes_(max_header_list_size_bytes),
      table_max_bytes_(header_table_size_bytes) {}

void HpackDecoder::SetHeaderTableSizeSetting(uint32_t bytes) {
  table_size_setting_bytes_ = bytes;
  if (bytes < table_max_bytes_) size_update_required_ = true;
}

HpackField HpackDecoder::dynamic_entry(size_t i) const {
  if (i >= count_) return HpackField{};
  const Entry& e = EntryAt(i);
  return HpackField{e.name, e.value, false};
}

HpackDecodeResult HpackDecoder::Fail(HpackError error, size_t offset, const std::string& what) {
  if (error == HpackError::kCompression) broken_ = true;
  HpackDecodeResult r;
  r.error = error;
  r.offset = offset;
  r.status = Status(StatusCode::kInvalidArgument, "HPACK: " + what + At(offset));
  return r;
}

HpackDecodeResult HpackDecoder::Decode(const uint8_t* data, size_t size, std::vector<HpackField>* fields) {
  fields->clear();
  arena_.clear();
  spans_.clear();
  list_bytes_ = 0;
  list_too_large_ = false;
  list_too_large_at_ = 0;
  if (broken_) {
    return Fail(HpackError::kCompression, 0, "decoder unusable after an earlier compression error");
  }
  HpackDecodeResult r = DecodeBlock(data, size);
  if (!r.ok()) return r;
  if (list_too_large_) {
    return Fail(HpackError::kHeaderListTooLarge, list_too_large_at_,
                "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE (" +
                    std::to_string(max_header_list_size_bytes_) + " bytes)");
  }
  fields->reserve(spans_.size());
  const char* base = arena_.data();
  for (const Span& s : spans_) {
    fields->push_back(HpackField{std::string_view(base + s.offset, s.name_size),
                                 std::string_view(base + s.offset + s.name_size, s.value_size),
                                 s.never_index});
  }
  return r;
}

HpackDecodeResult HpackDecoder::DecodeBlock(const uint8_t* data, size_t size) {
  HpackDecodeResult r;
  bool at_start = true;  // no header field yet: size updates allowed
  size_t pos = 0;
  while (pos < size) {
    const size_t start = pos;
    const uint8_t b = data[pos];
    if ((b & 0xe0) == 0x20) {  // dynamic table size update
      if (!at_start) {
        return Fail(HpackError::kCompression, start, "dynamic table size update after a header field");
      }
      uint32_t n = 0;
      if (HpackDecodeInteger(data, size, &pos, 5, &n) != HpackIntegerStatus::kOk) {
        return Fail(HpackError::kCompression, start, "malformed integer in a dynamic table size update");
      }
      if (n > table_size_setting_bytes_) {
        return Fail(HpackError::kCompression, start,
                    "dynamic table size update to " + std::to_string(n) +
                        " above SETTINGS_HEADER_TABLE_SIZE " + std::to_string(table_size_setting_bytes_));
      }
      table_max_bytes_ = n;
      EvictTo(n);
      size_update_required_ = false;
      continue;
    }
    if (at_start && size_update_required_) {
      return Fail(HpackError::kCompression, start,
                  "missing dynamic table size update after SETTINGS_HEADER_TABLE_SIZE was lowered");
    }
    at_start = false;
    int prefix = 4;
    bool indexing = false;
    bool never_index = false;
    if (b & 0x80) {
      prefix = 7;
    } else if ((b & 0xc0) == 0x40) {
      prefix = 6;
      indexing = true;
    } else {
      never_index = (b & 0x10) != 0;
    }
    uint32_t index = 0;
    const HpackIntegerStatus is = HpackDecodeInteger(data, size, &pos, prefix, &index);
    if (is != HpackIntegerStatus::kOk) {
      return Fail(HpackError::kCompression, start,
                  is == HpackIntegerStatus::kTruncated ? "truncated index" : "index does not fit 32 bits");
    }
    if (prefix == 7) {  // indexed header field
      if (index == 0) return Fail(HpackError::kCompression, start, "indexed header field with index 0");
      std::string_view name, value;
      if (!Lookup(index, start, &name, &value, &r)) return r;
      Emit(name, value, false, start);
      continue;
    }
    // A literal: the name by index (index > 0) or as a string, then the value.
    if (index > 0) {
      std::string_view name, value;
      if (!Lookup(index, start, &name, &value, &r)) return r;
      name_buf_.assign(name.data(), name.size());
    } else if (!ReadString(data, size, &pos, &name_buf_, &r)) {
      return r;
    }
    if (!ReadString(data, size, &pos, &value_buf_, &r)) return r;
    Emit(name_buf_, value_buf_, never_index, start);
    if (indexing) Insert(name_buf_, value_buf_);
  }
  if (at_start && size_update_required_) {
    return Fail(HpackError::kCompression, size,
                "missing dynamic table size update after SETTINGS_HEADER_TABLE_SIZE was lowered");
  }
  return r;
}

bool HpackDecoder::ReadString(const uint8_t* data, size_t size, size_t* pos, std::string* dst,
                              HpackDecodeResult* result) {
  const size_t start = *pos;
  uint32_t length = 0;
  const HpackIntegerStatus is = HpackDecodeInteger(data, size, pos, 7, &length);
  if (is != HpackIntegerStatus::kOk) {
    *result = Fail(HpackError::kCompression, start,
                   is == HpackIntegerStatus::kTruncated ? "truncated string length"
                                                        : "string length does not fit 32 bits");
    return false;
  }
  const bool huffman = (data[start] & 0x80) != 0;
  const size_t left = size - *pos;
  if (length > left) {
    *result = Fail(HpackError::kCompression, start,
                   "string length " + std::to_string(length) + " past the end of the block (" +
                       std::to_string(left) + " bytes left)");
    return false;
  }
  dst->clear();
  if (huffman) {
    const HpackHuffman::DecodeError e = HpackHuffman::Decode(data + *pos, length, dst);
    if (e != HpackHuffman::DecodeError::kNone) {
      *result = Fail(HpackError::kCompression, start, HpackHuffman::DecodeErrorName(e));
      return false;
    }
  } else {
    dst->assign(reinterpret_cast<const char*>(data + *pos), length);
  }
  *pos += length;
  return true;
}

bool HpackDecoder::Lookup(uint32_t index, size_t offset, std::string_view* name, std::string_view* value,
                          HpackDecodeResult* result) {
  if (index >= 1 && index <= kStaticCount) {
    *name = kStaticTable[index - 1].name;
    *value = kStaticTable[index - 1].value;
    return true;
  }
  const size_t d = static_cast<size_t>(index) - kStaticCount - 1;
  if (index > kStaticCount && d < count_) {
    const Entry& e = EntryAt(d);
    *name = e.name;
    *value = e.value;
    return true;
  }
  *result =
      Fail(HpackError::kCompression, offset,
           "index " + std::to_string(index) + " past the end of the table (" + std::to_string(kStaticCount) +
               " static + " + std::to_string(count_) + " dynamic entries)");
  return false;
}

void HpackDecoder::Emit(std::string_view name, std::string_view value, bool never_index, size_t offset) {
  if (list_too_large_) return;
  const size_t bytes = EntrySize(name.size(), value.size());
  if (list_bytes_ + bytes > max_header_list_size_bytes_) {
    // Stop keeping fields, but decode on: the table must follow the peer's.
    list_too_large_ = true;
    list_too_large_at_ = offset;
    return;
  }
  list_bytes_ += bytes;
  spans_.push_back(Span{arena_.size(), static_cast<uint32_t>(name.size()),
                        static_cast<uint32_t>(value.size()), never_index});
  arena_.append(name.data(), name.size());
  arena_.append(value.data(), value.size());
}

void HpackDecoder::EvictTo(size_t max_bytes) {
  while (count_ > 0 && table_bytes_ > max_bytes) {
    const Entry& e = ring_[first_];
    table_bytes_ -= EntrySize(e.name.size(), e.value.size());
    first_ = (first_ + 1) % ring_.size();
    --count_;
  }
}

void HpackDecoder::Insert(const std::string& name, const std::string& value) {
  const size_t bytes = EntrySize(name.size(), value.size());
  if (bytes > table_max_bytes_) {  // RFC 7541 Section 4.4: empties the table
    EvictTo(0);
    return;
  }
  EvictTo(table_max_bytes_ - bytes);
  if (count_ == ring_.size()) {  // grow the ring, oldest first
    std::vector<Entry> bigger(ring_.empty() ? 8 : ring_.size() * 2);
    for (size_t i = 0; i < count_; ++i) bigger[i] = std::move(ring_[(first_ + i) % ring_.size()]);
    ring_.swap(bigger);
    first_ = 0;
  }
  Entry& slot = ring_[(first_ + count_) % ring_.size()];
  slot.name.assign(name);
  slot.value.assign(value);
  ++count_;
  table_bytes_ += bytes;
}

// ---------------------------------------------------------------- encoder

void HpackEncoder::OnPeerHeaderTableSizeSetting(uint32_t /*bytes*/) { size_update_pending_ = true; }

void HpackEncoder::BeginBlock(std::string* out) {
  if (size_update_pending_) {
    HpackEncodeInteger(0, 5, 0x20, out);  // this encoder keeps no dynamic table
    size_update_pending_ = false;
  }
}

void HpackEncoder::AddString(std::string_view s, std::string* out) const {
  if (huffman_) {
    const size_t coded = HpackHuffman::EncodedSize(s);
    if (coded < s.size()) {
      HpackEncodeInteger(static_cast<uint32_t>(coded), 7, 0x80, out);
      HpackHuffman::Encode(s, out);
      return;
    }
  }
  HpackEncodeInteger(static_cast<uint32_t>(s.size()), 7, 0x00, out);
  out->append(s.data(), s.size());
}

void HpackEncoder::AddField(std::string_view name, std::string_view value, bool never_index,
                            std::string* out) const {
  uint32_t name_index = 0;
  for (uint32_t i = 0; i < kStaticCount; ++i) {
    if (kStaticTable[i].name != name) continue;
    if (!never_index && kStaticTable[i].value == value) {
      HpackEncodeInteger(i + 1, 7, 0x80, out);
      return;
    }
    if (name_index == 0) name_index = i + 1;
  }
  HpackEncodeInteger(name_index, 4, never_index ? 0x10 : 0x00, out);
  if (name_index == 0) AddString(name, out);
  AddString(value, out);
}

void HpackEncoder::EncodeBlock(const HpackField* fields, size_t count, std::string* out) {
  BeginBlock(out);
  for (size_t i = 0; i < count; ++i) AddField(fields[i].name, fields[i].value, fields[i].never_index, out);
}

void HpackEncoder::EncodeGrpcResponseHeaders(std::string* out, std::string_view request_id) {
  BeginBlock(out);
  AddField(":status", "200", false, out);
  AddField("content-type", "application/grpc", false, out);
  if (!request_id.empty()) AddField("x-request-id", request_id, false, out);
}

void HpackEncoder::EncodeGrpcTrailers(int grpc_status, std::string_view grpc_message, std::string* out,
                                      bool trailers_only, std::string_view request_id) {
  BeginBlock(out);
  if (trailers_only) {
    AddField(":status", "200", false, out);
    AddField("content-type", "application/grpc", false, out);
    if (!request_id.empty()) AddField("x-request-id", request_id, false, out);
  }
  AddField("grpc-status", std::to_string(grpc_status), false, out);
  if (!grpc_message.empty()) {
    PercentEncodeGrpcMessage(grpc_message, &scratch_);
    AddField("grpc-message", scratch_, false, out);
  }
}

void PercentEncodeGrpcMessage(std::string_view message, std::string* out) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  out->clear();
  for (unsigned char c : message) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out->push_back(static_cast<char>(c));
    } else {
      out->push_back('%');
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 0xf]);
    }
  }
}

}  // namespace steadyserve
