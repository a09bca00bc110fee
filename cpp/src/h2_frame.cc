#include "steadyserve/h2_frame.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "h2_internal.h"

namespace steadyserve {
namespace h2 {

namespace {

using internal::Format;
using internal::ReadU32;

void PutU32(uint32_t v, std::string* out) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                     static_cast<char>(v)};
  out->append(b, 4);
}

uint32_t ClampFrameSize(uint32_t size) {
  return std::min(std::max(size, kDefaultMaxFrameSize), kMaxAllowedFrameSize);
}

bool KnownType(FrameType t) { return static_cast<uint8_t>(t) <= static_cast<uint8_t>(FrameType::kContinuation); }

PrioritySpec ReadPriority(const uint8_t* p) {
  PrioritySpec s;
  const uint32_t dep = ReadU32(p);
  s.exclusive = (dep & 0x80000000u) != 0;
  s.stream_dependency = dep & kMaxStreamId;
  s.weight = p[4];
  return s;
}

}  // namespace

const char* FrameTypeName(FrameType type) {
  switch (type) {
    case FrameType::kData: return "DATA";
    case FrameType::kHeaders: return "HEADERS";
    case FrameType::kPriority: return "PRIORITY";
    case FrameType::kRstStream: return "RST_STREAM";
    case FrameType::kSettings: return "SETTINGS";
    case FrameType::kPushPromise: return "PUSH_PROMISE";
    case FrameType::kPing: return "PING";
    case FrameType::kGoaway: return "GOAWAY";
    case FrameType::kWindowUpdate: return "WINDOW_UPDATE";
    case FrameType::kContinuation: return "CONTINUATION";
  }
  return "UNKNOWN";
}

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kNoError: return "NO_ERROR";
    case ErrorCode::kProtocolError: return "PROTOCOL_ERROR";
    case ErrorCode::kInternalError: return "INTERNAL_ERROR";
    case ErrorCode::kFlowControlError: return "FLOW_CONTROL_ERROR";
    case ErrorCode::kSettingsTimeout: return "SETTINGS_TIMEOUT";
    case ErrorCode::kStreamClosed: return "STREAM_CLOSED";
    case ErrorCode::kFrameSizeError: return "FRAME_SIZE_ERROR";
    case ErrorCode::kRefusedStream: return "REFUSED_STREAM";
    case ErrorCode::kCancel: return "CANCEL";
    case ErrorCode::kCompressionError: return "COMPRESSION_ERROR";
    case ErrorCode::kConnectError: return "CONNECT_ERROR";
    case ErrorCode::kEnhanceYourCalm: return "ENHANCE_YOUR_CALM";
    case ErrorCode::kInadequateSecurity: return "INADEQUATE_SECURITY";
    case ErrorCode::kHttp11Required: return "HTTP_1_1_REQUIRED";
  }
  return "UNKNOWN";
}

FrameHeader ParseFrameHeader(const uint8_t* p) {
  FrameHeader h;
  h.length = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | uint32_t{p[2]};
  h.type = static_cast<FrameType>(p[3]);
  h.flags = p[4];
  h.stream_id = ReadU32(p + 5) & kMaxStreamId;
  return h;
}

void AppendFrameHeader(const FrameHeader& header, std::string* out) {
  const uint32_t len = header.length & 0xffffffu;
  const char b[5] = {static_cast<char>(len >> 16), static_cast<char>(len >> 8), static_cast<char>(len),
                     static_cast<char>(header.type), static_cast<char>(header.flags)};
  out->append(b, 5);
  PutU32(header.stream_id & kMaxStreamId, out);
}

// ---- FrameReader ----

FrameReader::FrameReader() : FrameReader(Options()) {}

FrameReader::FrameReader(const Options& options) : options_(options) {
  options_.max_frame_size = ClampFrameSize(options_.max_frame_size);
  preface_bytes_done_ = !options_.server;
}

void FrameReader::set_max_frame_size(uint32_t size) { options_.max_frame_size = ClampFrameSize(size); }

FrameReader::Result FrameReader::Fail(ErrorCode code, H2Error::Scope scope, uint32_t stream_id, std::string message,
                                      H2Error* error) {
  error->code = code;
  error->scope = scope;
  error->stream_id = stream_id;
  error->message = std::move(message);
  if (scope == H2Error::Scope::kConnection) {
    failed_ = true;
    failure_ = *error;
  }
  return Result::kError;
}

FrameReader::Result FrameReader::Next(std::string_view input, size_t* consumed, Frame* frame, H2Error* error) {
  *consumed = 0;
  *frame = Frame();
  if (failed_) {
    *error = failure_;
    return Result::kError;
  }
  constexpr auto kConn = H2Error::Scope::kConnection;
  const auto* data = reinterpret_cast<const uint8_t*>(input.data());
  size_t pos = 0;

  if (!preface_bytes_done_) {
    const size_t n = std::min(input.size(), kClientPreface.size());
    if (std::memcmp(input.data(), kClientPreface.data(), n) != 0) {
      return Fail(ErrorCode::kProtocolError, kConn, 0,
                  "connection preface: the client must start with \"PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n\"", error);
    }
    if (n < kClientPreface.size()) return Result::kNeedMore;
    preface_bytes_done_ = true;
    pos = kClientPreface.size();
    *consumed = pos;
  }

  for (;;) {
    if (input.size() - pos < kFrameHeaderSize) return Result::kNeedMore;
    const FrameHeader h = ParseFrameHeader(data + pos);
    const char* name = FrameTypeName(h.type);

    // What the header alone decides, before any payload is buffered.
    if (h.length > options_.max_frame_size) {
      return Fail(ErrorCode::kFrameSizeError, kConn, 0,
                  Format("%s frame (type 0x%x) on stream %u: length %u exceeds SETTINGS_MAX_FRAME_SIZE %u", name,
                         static_cast<unsigned>(h.type), h.stream_id, h.length, options_.max_frame_size),
                  error);
    }
    if (!preface_done_ && (h.type != FrameType::kSettings || h.has_flag(flags::kAck))) {
      return Fail(ErrorCode::kProtocolError, kConn, 0,
                  Format("connection preface: the first frame must be SETTINGS (not an ACK), got %s%s", name,
                         h.type == FrameType::kSettings ? " ACK" : ""),
                  error);
    }
    if (continuation_stream_ != 0) {
      if (h.type != FrameType::kContinuation || h.stream_id != continuation_stream_) {
        return Fail(ErrorCode::kProtocolError, kConn, 0,
                    Format("%s frame on stream %u inside the field block of stream %u: expected CONTINUATION", name,
                           h.stream_id, continuation_stream_),
                    error);
      }
    } else if (h.type == FrameType::kContinuation) {
      return Fail(ErrorCode::kProtocolError, kConn, 0,
                  Format("CONTINUATION on stream %u: no HEADERS or PUSH_PROMISE without END_HEADERS precedes it",
                         h.stream_id),
                  error);
    }
    if (h.type == FrameType::kHeaders || h.type == FrameType::kPushPromise || h.type == FrameType::kContinuation) {
      const size_t block = (h.type == FrameType::kContinuation ? field_block_size_ : 0) + kFrameHeaderSize + h.length;
      if (block > options_.max_field_block_size) {
        return Fail(ErrorCode::kEnhanceYourCalm, kConn, 0,
                    Format("%s on stream %u: field block of %zu bytes (with frame headers) exceeds the limit of %zu",
                           name, h.stream_id, block, options_.max_field_block_size),
                    error);
      }
    }

    if (input.size() - pos - kFrameHeaderSize < h.length) return Result::kNeedMore;
    const uint8_t* payload = data + pos + kFrameHeaderSize;
    pos += kFrameHeaderSize + h.length;
    if (!KnownType(h.type)) {  // extension frames are ignored (RFC 9113 section 4.1)
      *consumed = pos;
      continue;
    }
    *consumed = pos;
    const Result r = ParsePayload(h, payload, frame, error);
    if (r != Result::kFrame) return r;
    preface_done_ = true;  // the first frame got this far only if it was SETTINGS
    if (h.type == FrameType::kHeaders || h.type == FrameType::kPushPromise) {
      field_block_size_ = kFrameHeaderSize + h.length;
      continuation_stream_ = h.has_flag(flags::kEndHeaders) ? 0 : h.stream_id;
    } else if (h.type == FrameType::kContinuation) {
      field_block_size_ += kFrameHeaderSize + h.length;
      if (h.has_flag(flags::kEndHeaders)) continuation_stream_ = 0;
    }
    return r;
  }
}

FrameReader::Result FrameReader::ParsePayload(const FrameHeader& h, const uint8_t* p, Frame* frame, H2Error* error) {
  constexpr auto kConn = H2Error::Scope::kConnection;
  constexpr auto kStream = H2Error::Scope::kStream;
  const char* name = FrameTypeName(h.type);
  const uint32_t len = h.length;
  frame->header = h;
  frame->payload = std::string_view(reinterpret_cast<const char*>(p), len);

  auto need_stream = [&]() {
    return Fail(ErrorCode::kProtocolError, kConn, 0, Format("%s frame: stream identifier must not be 0", name),
                error);
  };
  auto need_stream_zero = [&]() {
    return Fail(ErrorCode::kProtocolError, kConn, 0,
                Format("%s frame: stream identifier must be 0, got %u", name, h.stream_id), error);
  };
  // Strips the Pad Length byte and the padding; `fixed` bytes of fixed fields
  // follow the Pad Length. On success frame->payload is what lies between.
  auto strip = [&](size_t fixed, size_t* offset) -> bool {
    size_t pad = 0;
    size_t off = 0;
    if (h.has_flag(flags::kPadded)) {
      if (len < 1) {
        Fail(ErrorCode::kFrameSizeError, kConn, 0, Format("%s frame: PADDED with no Pad Length byte", name), error);
        return false;
      }
      pad = p[0];
      off = 1;
    }
    if (len < off + fixed) {
      Fail(ErrorCode::kFrameSizeError, kConn, 0,
           Format("%s frame: length %u is too short for its %zu bytes of fixed fields", name, len, off + fixed),
           error);
      return false;
    }
    *offset = off;
    off += fixed;
    if (pad > len - off) {
      Fail(ErrorCode::kProtocolError, kConn, 0,
           Format("%s frame: Pad Length %zu exceeds the %zu bytes left in the payload", name, pad, len - off),
           error);
      return false;
    }
    frame->payload = std::string_view(reinterpret_cast<const char*>(p) + off, len - off - pad);
    return true;
  };

  switch (h.type) {
    case FrameType::kData: {
      if (h.stream_id == 0) return need_stream();
      size_t off = 0;
      if (!strip(0, &off)) return Result::kError;
      return Result::kFrame;
    }
    case FrameType::kHeaders: {
      if (h.stream_id == 0) return need_stream();
      const bool prio = h.has_flag(flags::kPriority);
      size_t off = 0;
      if (!strip(prio ? 5 : 0, &off)) return Result::kError;
      if (prio) {
        frame->has_priority = true;
        frame->priority = ReadPriority(p + off);
        // A stream error by the RFC; a connection error here, since the field
        // block must still reach HPACK and a stream error would drop it.
        if (frame->priority.stream_dependency == h.stream_id) {
          return Fail(ErrorCode::kProtocolError, kConn, 0,
                      Format("HEADERS frame: stream %u depends on itself", h.stream_id), error);
        }
      }
      return Result::kFrame;
    }
    case FrameType::kPriority: {
      if (h.stream_id == 0) return need_stream();
      if (len != 5) {
        return Fail(ErrorCode::kFrameSizeError, kStream, h.stream_id,
                    Format("PRIORITY frame: length must be 5, got %u", len), error);
      }
      frame->has_priority = true;
      frame->priority = ReadPriority(p);
      frame->payload = std::string_view();
      if (frame->priority.stream_dependency == h.stream_id) {
        return Fail(ErrorCode::kProtocolError, kStream, h.stream_id,
                    Format("PRIORITY frame: stream %u depends on itself", h.stream_id), error);
      }
      return Result::kFrame;
    }
    case FrameType::kRstStream: {
      if (h.stream_id == 0) return need_stream();
      if (len != 4) {
        return Fail(ErrorCode::kFrameSizeError, kConn, 0, Format("RST_STREAM frame: length must be 4, got %u", len),
                    error);
      }
      frame->error_code = static_cast<ErrorCode>(ReadU32(p));
      frame->payload = std::string_view();
      return Result::kFrame;
    }
    case FrameType::kSettings: {
      if (h.stream_id != 0) return need_stream_zero();
      if (h.has_flag(flags::kAck)) {
        if (len != 0) {
          return Fail(ErrorCode::kFrameSizeError, kConn, 0,
                      Format("SETTINGS frame: ACK must have an empty payload, got length %u", len), error);
        }
        return Result::kFrame;
      }
      if (len % 6 != 0) {
        return Fail(ErrorCode::kFrameSizeError, kConn, 0,
                    Format("SETTINGS frame: length %u is not a multiple of 6", len), error);
      }
      settings_.clear();
      for (uint32_t i = 0; i < len; i += 6) {
        Setting s;
        s.id = static_cast<uint16_t>((p[i] << 8) | p[i + 1]);
        s.value = ReadU32(p + i + 2);
        switch (static_cast<SettingId>(s.id)) {
          case SettingId::kEnablePush:
            if (s.value > 1) {
              return Fail(ErrorCode::kProtocolError, kConn, 0,
                          Format("SETTINGS frame: SETTINGS_ENABLE_PUSH must be 0 or 1, got %u", s.value), error);
            }
            if (!options_.server && s.value != 0) {
              return Fail(ErrorCode::kProtocolError, kConn, 0,
                          "SETTINGS frame: a server must not send SETTINGS_ENABLE_PUSH 1", error);
            }
            break;
          case SettingId::kInitialWindowSize:
            if (s.value > kMaxWindowSize) {
              return Fail(ErrorCode::kFlowControlError, kConn, 0,
                          Format("SETTINGS frame: SETTINGS_INITIAL_WINDOW_SIZE %u exceeds 2^31-1", s.value), error);
            }
            break;
          case SettingId::kMaxFrameSize:
            if (s.value < kDefaultMaxFrameSize || s.value > kMaxAllowedFrameSize) {
              return Fail(ErrorCode::kProtocolError, kConn, 0,
                          Format("SETTINGS frame: SETTINGS_MAX_FRAME_SIZE %u is outside [16384, 16777215]", s.value),
                          error);
            }
            break;
          default:
            break;
        }
        settings_.push_back(s);
      }
      frame->settings = settings_.data();
      frame->num_settings = settings_.size();
      return Result::kFrame;
    }
    case FrameType::kPushPromise: {
      if (options_.server) {
        return Fail(ErrorCode::kProtocolError, kConn, 0, "PUSH_PROMISE frame: a client must not push", error);
      }
      if (h.stream_id == 0) return need_stream();
      size_t off = 0;
      if (!strip(4, &off)) return Result::kError;
      frame->promised_stream_id = ReadU32(p + off) & kMaxStreamId;
      return Result::kFrame;
    }
    case FrameType::kPing: {
      if (h.stream_id != 0) return need_stream_zero();
      if (len != kPingPayloadSize) {
        return Fail(ErrorCode::kFrameSizeError, kConn, 0, Format("PING frame: length must be 8, got %u", len), error);
      }
      return Result::kFrame;
    }
    case FrameType::kGoaway: {
      if (h.stream_id != 0) return need_stream_zero();
      if (len < 8) {
        return Fail(ErrorCode::kFrameSizeError, kConn, 0, Format("GOAWAY frame: length must be >= 8, got %u", len),
                    error);
      }
      frame->last_stream_id = ReadU32(p) & kMaxStreamId;
      frame->error_code = static_cast<ErrorCode>(ReadU32(p + 4));
      frame->payload = std::string_view(reinterpret_cast<const char*>(p) + 8, len - 8);
      return Result::kFrame;
    }
    case FrameType::kWindowUpdate: {
      if (len != 4) {
        return Fail(ErrorCode::kFrameSizeError, kConn, 0,
                    Format("WINDOW_UPDATE frame: length must be 4, got %u", len), error);
      }
      frame->window_increment = ReadU32(p) & kMaxWindowSize;
      frame->payload = std::string_view();
      if (frame->window_increment == 0) {
        if (h.stream_id == 0) {
          return Fail(ErrorCode::kProtocolError, kConn, 0,
                      "WINDOW_UPDATE frame: increment is 0 on the connection (stream 0)", error);
        }
        return Fail(ErrorCode::kProtocolError, kStream, h.stream_id,
                    Format("WINDOW_UPDATE frame: increment is 0 on stream %u", h.stream_id), error);
      }
      return Result::kFrame;
    }
    case FrameType::kContinuation: {
      if (h.stream_id == 0) return need_stream();  // unreachable: the field block's stream is never 0
      return Result::kFrame;
    }
  }
  return Result::kFrame;  // unreachable: Next() skips unknown types
}

// ---- Writers ----

void AppendFrame(FrameType type, uint8_t flags, uint32_t stream_id, std::string_view payload, std::string* out) {
  FrameHeader h;
  h.length = static_cast<uint32_t>(payload.size());
  h.type = type;
  h.flags = flags;
  h.stream_id = stream_id;
  AppendFrameHeader(h, out);
  out->append(payload.data(), payload.size());
}

void AppendSettings(const Setting* settings, size_t count, std::string* out) {
  FrameHeader h;
  h.length = static_cast<uint32_t>(count * 6);
  h.type = FrameType::kSettings;
  AppendFrameHeader(h, out);
  for (size_t i = 0; i < count; ++i) {
    out->push_back(static_cast<char>(settings[i].id >> 8));
    out->push_back(static_cast<char>(settings[i].id));
    PutU32(settings[i].value, out);
  }
}

void AppendSettingsAck(std::string* out) { AppendFrame(FrameType::kSettings, flags::kAck, 0, {}, out); }

void AppendPing(const uint8_t* opaque, bool ack, std::string* out) {
  AppendFrame(FrameType::kPing, ack ? flags::kAck : 0, 0,
              std::string_view(reinterpret_cast<const char*>(opaque), kPingPayloadSize), out);
}

void AppendWindowUpdate(uint32_t stream_id, uint32_t increment, std::string* out) {
  FrameHeader h;
  h.length = 4;
  h.type = FrameType::kWindowUpdate;
  h.stream_id = stream_id;
  AppendFrameHeader(h, out);
  PutU32(increment & kMaxWindowSize, out);
}

void AppendRstStream(uint32_t stream_id, ErrorCode code, std::string* out) {
  FrameHeader h;
  h.length = 4;
  h.type = FrameType::kRstStream;
  h.stream_id = stream_id;
  AppendFrameHeader(h, out);
  PutU32(static_cast<uint32_t>(code), out);
}

void AppendGoaway(uint32_t last_stream_id, ErrorCode code, std::string_view debug_data, std::string* out) {
  FrameHeader h;
  h.length = static_cast<uint32_t>(8 + debug_data.size());
  h.type = FrameType::kGoaway;
  AppendFrameHeader(h, out);
  PutU32(last_stream_id & kMaxStreamId, out);
  PutU32(static_cast<uint32_t>(code), out);
  out->append(debug_data.data(), debug_data.size());
}

void AppendHeaders(uint32_t stream_id, std::string_view field_block, bool end_stream, uint32_t max_frame_size,
                   std::string* out) {
  const size_t max = ClampFrameSize(max_frame_size);
  size_t pos = 0;
  bool first = true;
  do {
    const size_t n = std::min(max, field_block.size() - pos);
    const bool last = pos + n == field_block.size();
    uint8_t f = last ? flags::kEndHeaders : 0;
    if (first && end_stream) f |= flags::kEndStream;
    AppendFrame(first ? FrameType::kHeaders : FrameType::kContinuation, f, stream_id, field_block.substr(pos, n), out);
    pos += n;
    first = false;
  } while (pos < field_block.size());
}

size_t AppendData(uint32_t stream_id, std::string_view data, bool end_stream, uint32_t max_frame_size, size_t budget,
                  std::string* out) {
  const size_t max = ClampFrameSize(max_frame_size);
  const size_t total = std::min(data.size(), budget);
  if (data.empty()) {
    if (end_stream) AppendFrame(FrameType::kData, flags::kEndStream, stream_id, {}, out);
    return 0;
  }
  size_t pos = 0;
  while (pos < total) {
    const size_t n = std::min(max, total - pos);
    const bool ends = end_stream && pos + n == data.size();
    AppendFrame(FrameType::kData, ends ? flags::kEndStream : 0, stream_id, data.substr(pos, n), out);
    pos += n;
  }
  return total;
}

}  // namespace h2
}  // namespace steadyserve
