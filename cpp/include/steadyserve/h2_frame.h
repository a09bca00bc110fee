// HTTP/2 frame layer (RFC 9113 section 4 and 6): the 9-byte frame header, an
// incremental FrameReader that checks the connection preface and every frame
// it yields, and writers that append serialized frames to an output buffer.
//
// Frame type and flag numbers, error codes and settings identifiers are the
// RFC's. This layer knows nothing of streams' states, HPACK or gRPC: it checks
// what can be checked from the bytes of one frame (its length, stream id,
// fixed fields, padding, settings values) plus the two rules that span frames
// at this level (the preface, and a field block's CONTINUATION frames being
// contiguous). Stream states, flow-control accounting (h2_flow.h) and header
// decoding belong to the connection above it.
//
// Nothing here allocates per frame once the buffers have grown: the reader's
// frames are views into the caller's buffer, and the writers append to a
// std::string the caller reuses, so several frames coalesce into one write.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace steadyserve {
namespace h2 {

enum class FrameType : uint8_t {
  kData = 0x0,
  kHeaders = 0x1,
  kPriority = 0x2,
  kRstStream = 0x3,
  kSettings = 0x4,
  kPushPromise = 0x5,
  kPing = 0x6,
  kGoaway = 0x7,
  kWindowUpdate = 0x8,
  kContinuation = 0x9,
  // Any other value is an extension frame type; the reader skips those.
};

// Frame flags (a flag's meaning depends on the frame type).
namespace flags {
constexpr uint8_t kEndStream = 0x01;   // DATA, HEADERS
constexpr uint8_t kAck = 0x01;         // SETTINGS, PING
constexpr uint8_t kEndHeaders = 0x04;  // HEADERS, PUSH_PROMISE, CONTINUATION
constexpr uint8_t kPadded = 0x08;      // DATA, HEADERS, PUSH_PROMISE
constexpr uint8_t kPriority = 0x20;    // HEADERS
}  // namespace flags

// Error codes (RFC 9113 section 7). Unknown values are legal on the wire (an
// RST_STREAM or GOAWAY may carry them) and must not be treated as errors.
enum class ErrorCode : uint32_t {
  kNoError = 0x0,
  kProtocolError = 0x1,
  kInternalError = 0x2,
  kFlowControlError = 0x3,
  kSettingsTimeout = 0x4,
  kStreamClosed = 0x5,
  kFrameSizeError = 0x6,
  kRefusedStream = 0x7,
  kCancel = 0x8,
  kCompressionError = 0x9,
  kConnectError = 0xa,
  kEnhanceYourCalm = 0xb,
  kInadequateSecurity = 0xc,
  kHttp11Required = 0xd,
};

// Settings identifiers (RFC 9113 section 6.5.2). Unknown ids are ignored.
enum class SettingId : uint16_t {
  kHeaderTableSize = 0x1,
  kEnablePush = 0x2,
  kMaxConcurrentStreams = 0x3,
  kInitialWindowSize = 0x4,
  kMaxFrameSize = 0x5,
  kMaxHeaderListSize = 0x6,
};

const char* FrameTypeName(FrameType type);  // "DATA", ...; "UNKNOWN" for extensions
const char* ErrorCodeName(ErrorCode code);  // "PROTOCOL_ERROR", ...; "UNKNOWN" otherwise

constexpr size_t kFrameHeaderSize = 9;
constexpr uint32_t kDefaultMaxFrameSize = 16384;        // SETTINGS_MAX_FRAME_SIZE initial and minimum
constexpr uint32_t kMaxAllowedFrameSize = (1u << 24) - 1;  // SETTINGS_MAX_FRAME_SIZE maximum
constexpr uint32_t kMaxWindowSize = 0x7fffffffu;           // 2^31 - 1
constexpr uint32_t kDefaultInitialWindowSize = 65535;
constexpr uint32_t kMaxStreamId = 0x7fffffffu;
constexpr size_t kPingPayloadSize = 8;
// The client connection preface (RFC 9113 section 3.4), 24 bytes.
constexpr std::string_view kClientPreface("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);

// The 9-byte frame header: 24-bit length, 8-bit type, 8-bit flags, 1 reserved
// bit and a 31-bit stream identifier, all big-endian.
struct FrameHeader {
  uint32_t length = 0;  // payload length, < 2^24
  FrameType type = FrameType::kData;
  uint8_t flags = 0;
  uint32_t stream_id = 0;  // the reserved bit is dropped on parse and written as 0

  bool has_flag(uint8_t f) const { return (flags & f) != 0; }
};

// Parses the 9 bytes at `p` (the caller guarantees 9 are there).
FrameHeader ParseFrameHeader(const uint8_t* p);
// Appends the 9-byte header. `length` is masked to 24 bits, `stream_id` to 31.
void AppendFrameHeader(const FrameHeader& header, std::string* out);

struct Setting {
  uint16_t id = 0;  // a SettingId, or an unknown id (kept, to be ignored by the caller)
  uint32_t value = 0;
};

// The PRIORITY fields (of a PRIORITY frame, or of HEADERS with the PRIORITY flag).
// RFC 9113 deprecates the scheme; the fields are parsed so they can be checked
// and then ignored.
struct PrioritySpec {
  bool exclusive = false;
  uint32_t stream_dependency = 0;
  uint8_t weight = 0;  // as on the wire: the weight minus 1
};

// A frame the reader yielded. `payload` and `settings` are views, valid until
// the caller changes the buffer they were read from or calls Next() again.
struct Frame {
  FrameHeader header;
  // The content, with padding and fixed fields removed:
  //   DATA: the data (flow control counts header.length, padding included);
  //   HEADERS, PUSH_PROMISE, CONTINUATION: the field block fragment;
  //   PING: the 8 opaque bytes; GOAWAY: the additional debug data;
  //   SETTINGS: the raw 6-byte entries (also parsed into `settings`);
  //   PRIORITY, RST_STREAM, WINDOW_UPDATE: empty.
  std::string_view payload;
  bool has_priority = false;  // PRIORITY, or HEADERS with the PRIORITY flag
  PrioritySpec priority;
  ErrorCode error_code = ErrorCode::kNoError;  // RST_STREAM, GOAWAY (may be an unknown value)
  uint32_t last_stream_id = 0;                 // GOAWAY
  uint32_t window_increment = 0;               // WINDOW_UPDATE: 1..2^31-1
  uint32_t promised_stream_id = 0;             // PUSH_PROMISE
  const Setting* settings = nullptr;           // SETTINGS (not ACK): entries in order
  size_t num_settings = 0;

  FrameType type() const { return header.type; }
  uint32_t stream_id() const { return header.stream_id; }
  bool end_stream() const { return header.has_flag(flags::kEndStream); }
  bool end_headers() const { return header.has_flag(flags::kEndHeaders); }
  bool ack() const { return header.has_flag(flags::kAck); }
};

// An error found in the input. A connection error ends the connection (send
// GOAWAY with `code`); a stream error resets one stream (send RST_STREAM on
// `stream_id` with `code`) and the connection goes on.
struct H2Error {
  enum class Scope : uint8_t { kConnection, kStream };
  ErrorCode code = ErrorCode::kNoError;
  Scope scope = Scope::kConnection;
  uint32_t stream_id = 0;
  std::string message;  // names the frame and the field, e.g. "WINDOW_UPDATE: increment is 0"

  bool connection() const { return scope == Scope::kConnection; }
};

// Reads frames from a connection's input buffer, which the caller owns:
//
//   std::string in;  // bytes read from the socket are appended here
//   size_t pos = 0;
//   for (;;) {
//     size_t used = 0;
//     auto r = reader.Next(std::string_view(in).substr(pos), &used, &frame, &error);
//     pos += used;
//     if (r == FrameReader::Result::kNeedMore) break;     // read more, erase in[0, pos)
//     if (r == FrameReader::Result::kError) { ... }       // stream error: go on; connection: stop
//     ... handle frame (views into `in`) ...
//   }
//
// Limits are checked as soon as the bytes that break them arrive: an oversized
// frame is refused from its 9-byte header, a wrong preface from its first
// wrong byte, so a peer cannot make the caller buffer more than
// max_frame_size + 9 bytes to learn it is misbehaving.
//
// After a connection error the reader is finished: every later Next() returns
// the same error. A stream error consumes the offending frame and the reader
// goes on.
class FrameReader {
 public:
  enum class Result : uint8_t { kFrame, kNeedMore, kError };

  struct Options {
    // Server side: the input starts with the 24-byte client preface, and a
    // PUSH_PROMISE is a PROTOCOL_ERROR. Client side: no preface bytes, and a
    // SETTINGS_ENABLE_PUSH other than 0 from the server is a PROTOCOL_ERROR.
    // Either way the first frame must be a SETTINGS frame (not an ACK).
    bool server = true;
    // SETTINGS_MAX_FRAME_SIZE this endpoint advertised (in [16384, 2^24-1]).
    uint32_t max_frame_size = kDefaultMaxFrameSize;
    // The wire size of one field block (HEADERS or PUSH_PROMISE and its
    // CONTINUATIONs), 9 bytes per frame included so a flood of empty
    // CONTINUATION frames counts. Over it: ENHANCE_YOUR_CALM, connection error.
    size_t max_field_block_size = 256 * 1024;
  };

  FrameReader();
  explicit FrameReader(const Options& options);

  // Reads the next frame from `input` (the unread part of the connection
  // buffer). *consumed is the number of bytes used (the preface, skipped
  // extension frames and the frame returned); it is set on every result.
  //   kFrame:    *frame is set; its views point into `input`.
  //   kNeedMore: no complete frame yet; call again with the same bytes
  //              (from input + *consumed) and more appended.
  //   kError:    *error is set (a stream error consumed its frame).
  Result Next(std::string_view input, size_t* consumed, Frame* frame, H2Error* error);

  // Call once the peer acknowledged SETTINGS that changed our MAX_FRAME_SIZE.
  // Values outside [16384, 2^24-1] are clamped.
  void set_max_frame_size(uint32_t size);
  uint32_t max_frame_size() const { return options_.max_frame_size; }

  bool preface_done() const { return preface_done_; }  // preface and first SETTINGS seen
  bool failed() const { return failed_; }

 private:
  Result Fail(ErrorCode code, H2Error::Scope scope, uint32_t stream_id, std::string message, H2Error* error);
  Result ParsePayload(const FrameHeader& h, const uint8_t* p, Frame* frame, H2Error* error);

  Options options_;
  bool preface_bytes_done_ = false;  // the 24 bytes (server side)
  bool preface_done_ = false;        // and the first SETTINGS
  bool failed_ = false;
  H2Error failure_;
  // An open field block: the stream its CONTINUATIONs must be on, or 0.
  uint32_t continuation_stream_ = 0;
  size_t field_block_size_ = 0;
  std::vector<Setting> settings_;  // storage behind Frame::settings
};

// ---- Writers: each appends one or more serialized frames to *out. ----
// Stream ids are masked to 31 bits; the caller passes values the RFC allows
// (an increment in 1..2^31-1, a max_frame_size in [16384, 2^24-1] - out of
// range sizes are clamped so splitting always makes progress).

// Any frame: the header (with length = payload.size()) and the payload.
void AppendFrame(FrameType type, uint8_t flags, uint32_t stream_id, std::string_view payload, std::string* out);
void AppendSettings(const Setting* settings, size_t count, std::string* out);
inline void AppendSettings(const std::vector<Setting>& settings, std::string* out) {
  AppendSettings(settings.data(), settings.size(), out);
}
void AppendSettingsAck(std::string* out);
// PING with the 8 opaque bytes of `opaque` (which must hold 8 bytes).
void AppendPing(const uint8_t* opaque, bool ack, std::string* out);
inline void AppendPingAck(const uint8_t* opaque, std::string* out) { AppendPing(opaque, true, out); }
void AppendWindowUpdate(uint32_t stream_id, uint32_t increment, std::string* out);
void AppendRstStream(uint32_t stream_id, ErrorCode code, std::string* out);
void AppendGoaway(uint32_t last_stream_id, ErrorCode code, std::string_view debug_data, std::string* out);
// A field block as HEADERS followed by as many CONTINUATION frames as
// max_frame_size requires; END_HEADERS on the last frame, END_STREAM (if
// asked) on the HEADERS frame. No padding, no priority.
void AppendHeaders(uint32_t stream_id, std::string_view field_block, bool end_stream, uint32_t max_frame_size,
                   std::string* out);
// Writes up to `budget` bytes of `data` (the flow-control window the caller
// may spend: min of the stream's and the connection's) as DATA frames of at
// most max_frame_size bytes. END_STREAM goes on the last frame if `end_stream`
// and all of `data` fit; with empty data and end_stream, one empty DATA frame
// with END_STREAM is written (it costs no window). Returns the bytes of
// `data` written: the caller consumes that much window and keeps the rest.
// END_STREAM was written exactly when end_stream && the result == data.size().
size_t AppendData(uint32_t stream_id, std::string_view data, bool end_stream, uint32_t max_frame_size,
                  size_t budget, std::string* out);

}  // namespace h2
}  // namespace steadyserve
