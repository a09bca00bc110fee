#include "steadyserve/h2_connection.h"

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

#include "h2_internal.h"

namespace steadyserve {
namespace h2 {

namespace {

using internal::Format;
using internal::ReadU32;

// gRPC status codes the connection answers with by itself.
constexpr int kGrpcResourceExhausted = 8;
constexpr int kGrpcUnimplemented = 12;
constexpr int kGrpcInternal = 13;

// How many closed streams we remember, so that frames the peer sent before it
// saw our RST_STREAM or END_STREAM are told apart from frames on streams that
// never existed. Fixed, so memory does not grow with the streams ever opened.
constexpr size_t kRecentClosed = 256;

// A stream buffer grown past this by one large answer is freed on release
// rather than kept for the next stream that reuses the object.
constexpr size_t kKeepBufferBytes = 64 * 1024;

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

int64_t AddSat(int64_t a, int64_t b) { return a > kNever - b ? kNever : a + b; }

bool KnownFrameType(uint8_t t) { return t <= static_cast<uint8_t>(FrameType::kContinuation); }

// RFC 9113 section 8.2.1: no control characters, upper case, space or DEL in
// a name; the leading ':' of a pseudo-header is checked by the caller.
bool ValidName(std::string_view name) {
  if (name.empty()) return false;
  for (char ch : name) {
    const auto c = static_cast<uint8_t>(ch);
    if (c <= 0x20 || (c >= 'A' && c <= 'Z') || c >= 0x7f) return false;
  }
  return true;
}

bool ValidValue(std::string_view value) {
  for (char c : value) {
    if (c == '\0' || c == '\r' || c == '\n') return false;
  }
  if (!value.empty()) {
    const char first = value.front();
    const char last = value.back();
    if (first == ' ' || first == '\t' || last == ' ' || last == '\t') return false;
  }
  return true;
}

bool ConnectionSpecific(std::string_view name) {
  return name == "connection" || name == "proxy-connection" || name == "keep-alive" ||
         name == "transfer-encoding" || name == "upgrade";
}

// "application/grpc", optionally followed by "+proto", ";charset=..." etc.
bool GrpcContentType(std::string_view ct) {
  constexpr std::string_view kBase = "application/grpc";
  if (ct.substr(0, kBase.size()) != kBase) return false;
  return ct.size() == kBase.size() || ct[kBase.size()] == '+' || ct[kBase.size()] == ';';
}

// content-length: 1 to 18 ASCII digits (no sign, no spaces); -1 when malformed.
int64_t ParseContentLength(std::string_view v) {
  if (v.empty() || v.size() > 18) return -1;
  int64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n;
}

// grpc-timeout: 1 to 8 ASCII digits and a unit (gRPC over HTTP/2). Values too
// large for int64 nanoseconds saturate (they mean "no deadline" in practice).
bool ParseGrpcTimeout(std::string_view v, int64_t* ns) {
  if (v.size() < 2 || v.size() > 9) return false;
  int64_t unit = 0;
  switch (v.back()) {
    case 'H': unit = 3600LL * 1000000000LL; break;
    case 'M': unit = 60LL * 1000000000LL; break;
    case 'S': unit = 1000000000LL; break;
    case 'm': unit = 1000000LL; break;
    case 'u': unit = 1000LL; break;
    case 'n': unit = 1; break;
    default: return false;
  }
  int64_t n = 0;
  for (size_t i = 0; i + 1 < v.size(); ++i) {
    if (v[i] < '0' || v[i] > '9') return false;
    n = n * 10 + (v[i] - '0');
  }
  *ns = n > kNever / unit ? kNever : n * unit;
  return true;
}

// A token bucket: `burst` tokens, refilled at `per_s`. A burst of 0 disables it.
struct Bucket {
  double tokens = 0;
  double burst = 0;
  double per_s = 0;
  int64_t last_ns = 0;

  void Init(uint32_t b, uint32_t rate, int64_t now_ns) {
    burst = b;
    tokens = b;
    per_s = rate;
    last_ns = now_ns;
  }
  bool Take(int64_t now_ns) {
    if (burst <= 0) return true;
    if (now_ns > last_ns) {
      tokens = std::min(burst, tokens + static_cast<double>(now_ns - last_ns) * per_s * 1e-9);
      last_ns = now_ns;
    }
    if (tokens < 1) return false;
    tokens -= 1;
    return true;
  }
  void Refund(uint32_t n) { tokens = std::min(burst, tokens + n); }
};

}  // namespace

struct H2Connection::Stream {
  explicit Stream(size_t max_message_bytes) : reader(max_message_bytes) {}

  uint32_t id = 0;
  bool remote_closed = false;  // the peer sent END_STREAM
  bool started = false;        // the handler got OnStreamStart
  bool finished = false;       // the handler called Finish (or an oversized SendMessage did)
  bool headers_sent = false;
  bool in_queue = false;       // waiting in send_queue_ for flow-control window
  bool in_read_list = false;   // its request is not complete yet (stream_read_timeout)
  bool reader_used = false;    // the reader holds state a new stream must not inherit
  bool window_dirty = false;   // in dirty_ for this Receive call
  int finish_status = 0;       // the handler's Finish, while its trailers wait behind pending
  std::string finish_message;
  std::string request_id;  // echoed as x-request-id in the response headers (empty: none)
  FlowWindow send_window{0};
  FlowWindow recv_window{0};
  uint64_t recv_unacked = 0;  // received bytes not yet given back by WINDOW_UPDATE
  std::string pending;        // DATA bytes (prefixes included) waiting for window
  size_t pending_pos = 0;
  GrpcMessageReader reader;
  int64_t opened_ns = 0;
  // content-length, when the request declared one (RFC 9113 section 8.1.1: the
  // DATA must add up to it), and the DATA payload bytes received so far.
  int64_t content_length = -1;
  uint64_t data_bytes = 0;
  Stream* read_prev = nullptr;
  Stream* read_next = nullptr;

  size_t pending_size() const { return pending.size() - pending_pos; }
};

struct H2Connection::Impl {
  Impl(const ConnectionLimits& l, StreamHandler* h, int64_t now_ns, std::string* o, ConnectionStats* st);

  // ---- entry points ----
  bool Receive(const uint8_t* data, size_t size, int64_t now_ns);
  bool SendMessage(uint32_t id, std::string_view message);
  bool Finish(uint32_t id, int grpc_status, std::string_view grpc_message);
  bool SetRequestId(uint32_t id, std::string_view request_id);
  std::string_view RequestId(uint32_t id);
  void ResetStream(uint32_t id, ErrorCode code);
  void Abort();
  void Shutdown();
  bool Tick(int64_t now_ns);
  int64_t NextDeadline() const;
  bool done() const { return dead_ || ((goaway_sent_ || peer_goaway_) && active_.empty()); }
  size_t MemoryBytes() const;

  // ---- frames ----
  void OnFrame(const Frame& f);
  void OnReaderStreamError(const H2Error& e);
  void OnData(const Frame& f);
  void OnHeaders(const Frame& f);
  void OnContinuation(const Frame& f);
  void OnFieldBlock(std::string_view block);
  void OnNewStream(uint32_t id, bool end_stream, bool too_large, size_t block_size);
  void OnStreamHeaders(uint32_t id, bool end_stream, bool too_large);
  void OnRstStream(const Frame& f);
  void OnSettings(const Frame& f);
  void OnWindowUpdate(const Frame& f);
  bool TakeControl(const char* what);
  void CountSkippedFrames(std::string_view region);

  // ---- streams ----
  Stream* Find(uint32_t id) const;
  Stream* Alloc();
  void Release(Stream* s, bool we_reset);
  void Remember(uint32_t id, bool we_reset);
  int RecentIndex(uint32_t id) const;  // -1 when not remembered
  bool Idle(uint32_t id) const { return (id & 1) == 0 || id > highest_id_; }
  void LinkRead(Stream* s);
  void UnlinkRead(Stream* s);
  void Deliver(Stream* s, std::string_view payload);
  bool DeliverMessage(uint32_t id, std::string_view message);
  void EndOfRequest(Stream* s);
  // Answers a stream the handler was not told of; it never enters the table.
  void AnswerUnstarted(uint32_t id, bool end_stream, int grpc_status, const std::string& message);
  void AnswerHttpStatus(uint32_t id, bool end_stream, const char* status);
  // Ends a stream with our own gRPC error (trailers now, pending dropped).
  void FailStream(Stream* s, int grpc_status, const std::string& message);
  // Stream error: RST_STREAM(code) and the handler told.
  void ResetWithError(Stream* s, ErrorCode code);
  void SendRst(uint32_t id, ErrorCode code);
  void WriteTrailersAndClose(Stream* s, int grpc_status, std::string_view grpc_message);
  void ConnectionError(ErrorCode code, const std::string& message);
  void DropAllStreams();

  // ---- sending ----
  size_t WriteData(uint32_t id, std::string_view a, std::string_view b, size_t budget);
  void SpendWindow(Stream* s, size_t n);
  void Flush();
  void FlushWindowUpdates();

  ConnectionLimits limits;
  StreamHandler* handler;
  std::string& out;
  ConnectionStats& stats;

  FrameReader reader;
  HpackDecoder decoder;
  HpackEncoder encoder;

  // Settings, ours and the peer's.
  uint32_t stream_window_;         // our SETTINGS_INITIAL_WINDOW_SIZE
  uint32_t conn_window_;           // our connection receive window
  uint32_t recv_initial_;          // what a new stream may receive: until ACK, the larger of 65535 and ours
  bool settings_acked_ = false;
  uint32_t peer_initial_window_ = kDefaultInitialWindowSize;
  uint32_t peer_max_frame_ = kDefaultMaxFrameSize;
  uint32_t peer_table_size_ = HpackDecoder::kDefaultHeaderTableSizeBytes;

  FlowWindow conn_send_{kDefaultInitialWindowSize};
  FlowWindow conn_recv_;
  uint64_t conn_unacked_ = 0;

  // Streams: the open ones sorted by id (ids only grow, so opening appends).
  std::vector<Stream*> active_;
  std::vector<std::unique_ptr<Stream>> all_;
  std::vector<Stream*> free_;
  std::vector<Stream*> send_queue_;  // FIFO of streams with pending data
  std::vector<uint32_t> dirty_;      // streams that received DATA in this Receive call
  std::vector<uint32_t> doomed_;     // scratch of DropAllStreams
  Stream* read_head_ = nullptr;      // streams by opening time, request incomplete
  Stream* read_tail_ = nullptr;
  struct Closed {
    uint32_t id = 0;
    bool we_reset = false;  // we sent RST_STREAM: the peer's late frames are ignored
  };
  std::vector<Closed> recent_;
  size_t recent_next_ = 0;

  uint32_t highest_id_ = 0;      // the highest stream id the peer used
  uint32_t last_processed_ = 0;  // the highest stream id we acted on (GOAWAY's last id)

  // The field block being gathered (HEADERS then CONTINUATIONs).
  std::string block_;
  bool block_open_ = false;
  uint32_t block_stream_ = 0;
  bool block_end_stream_ = false;
  bool block_new_ = false;
  int64_t block_started_ns_ = 0;
  std::vector<HpackField> fields_;
  std::vector<HpackField> regular_;
  std::string hblock_;  // scratch for the blocks we encode

  std::string in_;  // the unread tail of the input
  bool preface_seen_ = false;

  Bucket control_;
  Bucket resets_;

  bool dead_ = false;
  bool goaway_sent_ = false;
  bool peer_goaway_ = false;
  int64_t created_ns_;
  int64_t now_ns_;
  int64_t last_activity_ns_;
};

H2Connection::Impl::Impl(const ConnectionLimits& l, StreamHandler* h, int64_t now_ns, std::string* o,
                         ConnectionStats* st)
    : limits(l),
      handler(h),
      out(*o),
      stats(*st),
      reader([&] {
        FrameReader::Options opt;
        opt.server = true;
        opt.max_frame_size = std::min(std::max(l.max_frame_size, kDefaultMaxFrameSize), kMaxAllowedFrameSize);
        opt.max_field_block_size = l.max_field_block_bytes;
        return opt;
      }()),
      decoder(HpackDecoder::kDefaultHeaderTableSizeBytes, l.max_header_list_bytes),
      stream_window_(std::min(l.stream_window_bytes, kMaxWindowSize)),
      conn_window_(std::min(std::max(l.connection_window_bytes, kDefaultInitialWindowSize), kMaxWindowSize)),
      recv_initial_(std::max(stream_window_, kDefaultInitialWindowSize)),
      conn_recv_(conn_window_),
      recent_(kRecentClosed),
      created_ns_(now_ns),
      now_ns_(now_ns),
      last_activity_ns_(now_ns) {
  limits.max_frame_size = reader.max_frame_size();
  control_.Init(l.control_frame_burst, l.control_frames_per_s, now_ns);
  resets_.Init(l.reset_burst, l.resets_per_s, now_ns);
  const Setting settings[] = {
      {static_cast<uint16_t>(SettingId::kMaxConcurrentStreams), l.max_concurrent_streams},
      {static_cast<uint16_t>(SettingId::kInitialWindowSize), stream_window_},
      {static_cast<uint16_t>(SettingId::kMaxFrameSize), limits.max_frame_size},
      {static_cast<uint16_t>(SettingId::kMaxHeaderListSize), l.max_header_list_bytes},
      {static_cast<uint16_t>(SettingId::kEnablePush), 0},
  };
  AppendSettings(settings, sizeof(settings) / sizeof(settings[0]), &out);
  if (conn_window_ > kDefaultInitialWindowSize) {
    AppendWindowUpdate(0, conn_window_ - kDefaultInitialWindowSize, &out);
  }
  active_.reserve(std::min<uint32_t>(l.max_concurrent_streams, 1024));
}

// ---------------------------------------------------------------- input

bool H2Connection::Impl::Receive(const uint8_t* data, size_t size, int64_t now_ns) {
  if (done()) return false;
  now_ns_ = std::max(now_ns_, now_ns);
  last_activity_ns_ = now_ns_;
  // Parse straight from the caller's bytes unless a partial frame is left
  // from the last call; only an unfinished tail is copied.
  const bool buffered = !in_.empty();
  if (buffered) in_.append(reinterpret_cast<const char*>(data), size);
  const std::string_view input =
      buffered ? std::string_view(in_) : std::string_view(reinterpret_cast<const char*>(data), size);
  size_t pos = 0;
  while (!done()) {
    Frame f;
    H2Error e;
    size_t used = 0;
    const std::string_view rest = input.substr(pos);
    const FrameReader::Result r = reader.Next(rest, &used, &f, &e);
    if (r == FrameReader::Result::kError && e.connection()) {
      ConnectionError(e.code, e.message);
      break;
    }
    CountSkippedFrames(rest.substr(0, used));
    pos += used;
    if (dead_) break;
    if (r == FrameReader::Result::kNeedMore) break;
    ++stats.frames_received;
    if (r == FrameReader::Result::kError) {
      OnReaderStreamError(e);
    } else {
      OnFrame(f);
    }
  }
  if (dead_) {
    in_.clear();
    return false;
  }
  if (buffered) {
    in_.erase(0, pos);
  } else {
    in_.assign(input.data() + pos, input.size() - pos);
  }
  FlushWindowUpdates();
  return !done();
}

// Extension frames never reach us (the reader skips them), but they cost
// parsing all the same, so the skipped bytes are walked to charge each one.
void H2Connection::Impl::CountSkippedFrames(std::string_view region) {
  if (region.empty()) return;
  size_t p = 0;
  if (!preface_seen_) {
    preface_seen_ = true;
    p = kClientPreface.size();
  }
  while (!dead_ && p + kFrameHeaderSize <= region.size()) {
    const FrameHeader h = ParseFrameHeader(reinterpret_cast<const uint8_t*>(region.data()) + p);
    if (!KnownFrameType(static_cast<uint8_t>(h.type))) {
      if (!TakeControl("an unknown frame type")) return;
    }
    p += kFrameHeaderSize + h.length;
  }
}

bool H2Connection::Impl::TakeControl(const char* what) {
  if (control_.Take(now_ns_)) return true;
  ConnectionError(ErrorCode::kEnhanceYourCalm,
                  Format("too many PING/SETTINGS/PRIORITY/WINDOW_UPDATE/RST_STREAM/empty/unknown frames (last: %s): "
                         "more than %u in a burst (control_frame_burst), refilled at %u/s (control_frames_per_s)",
                         what, limits.control_frame_burst, limits.control_frames_per_s));
  return false;
}

void H2Connection::Impl::OnFrame(const Frame& f) {
  switch (f.type()) {
    case FrameType::kData:
      OnData(f);
      return;
    case FrameType::kHeaders:
      OnHeaders(f);
      return;
    case FrameType::kContinuation:
      OnContinuation(f);
      return;
    case FrameType::kPriority:
      TakeControl("PRIORITY");  // deprecated (RFC 9113 section 5.3.2): checked by the reader, then ignored
      return;
    case FrameType::kRstStream:
      OnRstStream(f);
      return;
    case FrameType::kSettings:
      OnSettings(f);
      return;
    case FrameType::kPing:
      if (!TakeControl("PING")) return;
      if (!f.ack()) AppendPingAck(reinterpret_cast<const uint8_t*>(f.payload.data()), &out);
      return;
    case FrameType::kGoaway:
      if (!TakeControl("GOAWAY")) return;
      peer_goaway_ = true;  // a client's last-stream-id names pushed streams: we have none
      return;
    case FrameType::kWindowUpdate:
      OnWindowUpdate(f);
      return;
    case FrameType::kPushPromise:
      return;  // the reader refuses it on the server side
  }
}

void H2Connection::Impl::OnReaderStreamError(const H2Error& e) {
  if (!TakeControl("a malformed PRIORITY/WINDOW_UPDATE")) return;
  if (Stream* s = Find(e.stream_id)) {
    ResetWithError(s, e.code);
  } else if (!Idle(e.stream_id)) {
    SendRst(e.stream_id, e.code);
  }
  // On an idle stream RST_STREAM is not allowed (RFC 9113 section 6.4): the
  // frame carried nothing, so it is dropped.
}

void H2Connection::Impl::OnData(const Frame& f) {
  const uint32_t id = f.stream_id();
  const uint32_t len = f.header.length;
  if (len == 0 && !f.end_stream() && !TakeControl("empty DATA")) return;
  if (conn_recv_.Consume(len) != ErrorCode::kNoError) {
    ConnectionError(ErrorCode::kFlowControlError,
                    Format("DATA on stream %u: %u bytes exceed the connection receive window (%lld bytes left of %u)",
                           id, len, static_cast<long long>(conn_recv_.available()), conn_window_));
    return;
  }
  conn_unacked_ += len;  // given back whatever becomes of the payload
  Stream* s = Find(id);
  if (s == nullptr) {
    if (Idle(id)) {
      ConnectionError(ErrorCode::kProtocolError, Format("DATA on stream %u, which is idle", id));
      return;
    }
    const int i = RecentIndex(id);
    if (i < 0) {
      ConnectionError(ErrorCode::kStreamClosed, Format("DATA on stream %u, which is closed", id));
      return;
    }
    if (!recent_[i].we_reset) {
      SendRst(id, ErrorCode::kStreamClosed);
      recent_[i].we_reset = true;
    }
    return;
  }
  if (s->remote_closed) {
    ResetWithError(s, ErrorCode::kStreamClosed);  // half-closed (remote): RFC 9113 section 5.1
    return;
  }
  if (s->recv_window.Consume(len) != ErrorCode::kNoError) {
    ResetWithError(s, ErrorCode::kFlowControlError);
    return;
  }
  s->recv_unacked += len;
  s->data_bytes += f.payload.size();
  if (s->content_length >= 0 &&
      (s->data_bytes > static_cast<uint64_t>(s->content_length) ||
       (f.end_stream() && s->data_bytes != static_cast<uint64_t>(s->content_length)))) {
    ResetWithError(s, ErrorCode::kProtocolError);  // DATA disagrees with content-length: malformed
    return;
  }
  if (!s->window_dirty) {
    s->window_dirty = true;
    dirty_.push_back(id);
  }
  if (!s->finished) Deliver(s, f.payload);
  if (f.end_stream()) {
    s = Find(id);
    if (s != nullptr) {
      s->remote_closed = true;
      UnlinkRead(s);
      EndOfRequest(s);
    }
  }
}

void H2Connection::Impl::OnHeaders(const Frame& f) {
  const uint32_t id = f.stream_id();
  if ((id & 1) == 0) {
    ConnectionError(ErrorCode::kProtocolError,
                    Format("HEADERS on stream %u: a client's streams have odd identifiers", id));
    return;
  }
  block_new_ = id > highest_id_;
  if (block_new_) {
    highest_id_ = id;
  } else if (Find(id) == nullptr && RecentIndex(id) < 0) {
    ConnectionError(ErrorCode::kProtocolError,
                    Format("HEADERS on stream %u: a new stream's id must exceed the last one used (%u)", id,
                           highest_id_));
    return;
  }
  block_stream_ = id;
  block_end_stream_ = f.end_stream();
  if (f.end_headers()) {
    OnFieldBlock(f.payload);
  } else {
    block_.assign(f.payload.data(), f.payload.size());
    block_open_ = true;
    block_started_ns_ = now_ns_;
  }
}

void H2Connection::Impl::OnContinuation(const Frame& f) {
  if (f.payload.empty() && !f.end_headers() && !TakeControl("empty CONTINUATION")) return;
  block_.append(f.payload.data(), f.payload.size());
  if (f.end_headers()) {
    block_open_ = false;
    OnFieldBlock(block_);
  }
}

// Every field block is decoded, even for a stream we refuse: the dynamic
// table must follow the peer's.
void H2Connection::Impl::OnFieldBlock(std::string_view block) {
  const HpackDecodeResult r =
      decoder.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &fields_);
  if (r.error == HpackError::kCompression) {
    ConnectionError(ErrorCode::kCompressionError, r.status.message());
    return;
  }
  const bool too_large = r.error == HpackError::kHeaderListTooLarge;
  if (block_new_) {
    OnNewStream(block_stream_, block_end_stream_, too_large, block.size());
  } else {
    OnStreamHeaders(block_stream_, block_end_stream_, too_large);
  }
}

void H2Connection::Impl::OnNewStream(uint32_t id, bool end_stream, bool too_large, size_t block_size) {
  if (goaway_sent_ || peer_goaway_ || active_.size() >= limits.max_concurrent_streams) {
    AppendRstStream(id, ErrorCode::kRefusedStream, &out);
    Remember(id, true);
    ++stats.streams_refused;
    if (!resets_.Take(now_ns_)) {
      ConnectionError(ErrorCode::kEnhanceYourCalm,
                      Format("too many refused streams: more than %u in a burst (reset_burst), refilled at %u/s "
                             "(resets_per_s)",
                             limits.reset_burst, limits.resets_per_s));
    }
    return;
  }
  last_processed_ = id;
  if (too_large) {
    AnswerUnstarted(id, end_stream, kGrpcResourceExhausted,
                    Format("request header list larger than max_header_list_bytes (%u bytes); its field block "
                           "alone is %zu bytes",
                           limits.max_header_list_bytes, block_size));
    return;
  }

  // RFC 9113 section 8.3 and the gRPC HTTP/2 mapping.
  std::string_view method, scheme, path, authority, host, content_type, grpc_encoding, grpc_timeout, request_id;
  bool has_method = false, has_scheme = false, has_path = false, has_authority = false;
  bool has_content_type = false, has_timeout = false;
  int64_t content_length = -1;
  bool malformed = false;  // RFC 9113 section 8.1.1: a stream error PROTOCOL_ERROR
  bool regular_seen = false;
  regular_.clear();
  for (const HpackField& fld : fields_) {
    const std::string_view n = fld.name;
    if (!n.empty() && n[0] == ':') {
      bool* seen = nullptr;
      std::string_view* slot = nullptr;
      if (n == ":method") {
        seen = &has_method;
        slot = &method;
      } else if (n == ":scheme") {
        seen = &has_scheme;
        slot = &scheme;
      } else if (n == ":path") {
        seen = &has_path;
        slot = &path;
      } else if (n == ":authority") {
        seen = &has_authority;
        slot = &authority;
      }
      // Pseudo-headers lead, once each, and only the four a request has.
      malformed = regular_seen || seen == nullptr || *seen || !ValidValue(fld.value);
      if (malformed) break;
      *seen = true;
      *slot = fld.value;
      continue;
    }
    regular_seen = true;
    malformed = !ValidName(n) || !ValidValue(fld.value) || ConnectionSpecific(n) ||
                (n == "te" && fld.value != "trailers");
    if (malformed) break;
    if (n == "content-type") {
      has_content_type = true;
      content_type = fld.value;
    } else if (n == "grpc-encoding") {
      grpc_encoding = fld.value;
    } else if (n == "grpc-timeout") {
      has_timeout = true;
      grpc_timeout = fld.value;
    } else if (n == "x-request-id") {
      request_id = fld.value;
    } else if (n == "host") {
      host = fld.value;
    } else if (n == "content-length") {
      content_length = ParseContentLength(fld.value);
      malformed = content_length < 0;
      if (malformed) break;
    }
    regular_.push_back(fld);
  }
  malformed = malformed || !has_method || !has_scheme || !has_path || path.empty() ||
              (end_stream && content_length > 0);  // declared a body, sent none
  if (malformed) {
    AppendRstStream(id, ErrorCode::kProtocolError, &out);
    ++stats.protocol_errors;
    Remember(id, true);
    return;
  }
  if (method != "POST") {
    AnswerHttpStatus(id, end_stream, "405");
    return;
  }
  if (!has_content_type || !GrpcContentType(content_type)) {
    AnswerHttpStatus(id, end_stream, "415");
    return;
  }
  if (!grpc_encoding.empty() && grpc_encoding != "identity") {
    // The gRPC compression spec answers an unsupported encoding UNIMPLEMENTED.
    AnswerUnstarted(id, end_stream, kGrpcUnimplemented,
                    "grpc-encoding " + std::string(grpc_encoding) + " is not supported; send grpc-encoding identity");
    return;
  }
  int64_t timeout_ns = -1;
  if (has_timeout && !ParseGrpcTimeout(grpc_timeout, &timeout_ns)) {
    AnswerUnstarted(id, end_stream, kGrpcInternal,
                    "malformed grpc-timeout \"" + std::string(grpc_timeout) +
                        "\": expected 1-8 digits and a unit H, M, S, m, u or n");
    return;
  }

  Stream* s = Alloc();
  s->id = id;
  s->remote_closed = end_stream;
  s->started = true;
  s->send_window = FlowWindow(peer_initial_window_);
  s->recv_window = FlowWindow(recv_initial_);
  s->opened_ns = now_ns_;
  s->content_length = content_length;
  active_.push_back(s);  // ids only grow: the table stays sorted
  if (!end_stream) LinkRead(s);
  ++stats.streams_opened;
  control_.Refund(limits.control_frames_per_stream);

  StreamStart start;
  start.stream_id = id;
  start.path = path;
  start.authority = has_authority ? authority : host;
  start.timeout_ns = timeout_ns;
  start.request_id = request_id;
  s->request_id.assign(request_id.data(), request_id.size());  // pooled: no allocation once warm
  start.headers = &regular_;
  start.end_stream = end_stream;
  handler->OnStreamStart(start);
  if (end_stream) {
    s = Find(id);
    if (s != nullptr && !s->finished) handler->OnStreamHalfClose(id);
  }
}

// A HEADERS on a stream that was opened before: trailers, or an error.
void H2Connection::Impl::OnStreamHeaders(uint32_t id, bool end_stream, bool too_large) {
  Stream* s = Find(id);
  if (s == nullptr) {
    const int i = RecentIndex(id);
    if (i >= 0 && !recent_[i].we_reset) {
      SendRst(id, ErrorCode::kStreamClosed);
      recent_[i].we_reset = true;
    }
    return;
  }
  if (s->remote_closed) {
    ResetWithError(s, ErrorCode::kStreamClosed);
    return;
  }
  if (!end_stream) {
    ResetWithError(s, ErrorCode::kProtocolError);  // a second HEADERS must be trailers
    return;
  }
  if (s->content_length >= 0 && s->data_bytes != static_cast<uint64_t>(s->content_length)) {
    ResetWithError(s, ErrorCode::kProtocolError);  // the body ended short of content-length
    return;
  }
  s->remote_closed = true;
  UnlinkRead(s);
  if (too_large) {
    FailStream(s, kGrpcResourceExhausted,
               Format("request trailers larger than max_header_list_bytes (%u bytes)", limits.max_header_list_bytes));
    return;
  }
  for (const HpackField& fld : fields_) {
    if (fld.name.empty() || fld.name[0] == ':' || !ValidName(fld.name) || !ValidValue(fld.value) ||
        ConnectionSpecific(fld.name)) {
      ResetWithError(s, ErrorCode::kProtocolError);  // trailers carry no pseudo-headers (RFC 9113 8.1)
      return;
    }
  }
  EndOfRequest(s);
}

void H2Connection::Impl::OnRstStream(const Frame& f) {
  const uint32_t id = f.stream_id();
  Stream* s = Find(id);
  if (s == nullptr) {
    if (Idle(id)) {
      ConnectionError(ErrorCode::kProtocolError, Format("RST_STREAM on stream %u, which is idle", id));
      return;
    }
    TakeControl("RST_STREAM on a closed stream");
    return;
  }
  ++stats.streams_reset_by_peer;
  const bool notify = s->started && !s->finished;
  Release(s, false);
  if (notify) handler->OnStreamReset(id);
  if (notify && !dead_ && !resets_.Take(now_ns_)) {
    ConnectionError(ErrorCode::kEnhanceYourCalm,
                    Format("too many streams reset by the peer before an answer: more than %u in a burst "
                           "(reset_burst), refilled at %u/s (resets_per_s)",
                           limits.reset_burst, limits.resets_per_s));
  }
}

void H2Connection::Impl::OnSettings(const Frame& f) {
  if (!TakeControl(f.ack() ? "SETTINGS ACK" : "SETTINGS")) return;
  if (f.ack()) {
    if (!settings_acked_) {
      // From now on the peer counts stream windows from our value, not 65535.
      settings_acked_ = true;
      for (Stream* s : active_) s->recv_window.ApplyInitialChange(recv_initial_, stream_window_);
      recv_initial_ = stream_window_;
    }
    return;
  }
  bool more_window = false;
  for (size_t i = 0; i < f.num_settings; ++i) {
    const Setting& st = f.settings[i];
    switch (static_cast<SettingId>(st.id)) {
      case SettingId::kHeaderTableSize:
        if (st.value != peer_table_size_) {
          peer_table_size_ = st.value;
          encoder.OnPeerHeaderTableSizeSetting(st.value);
        }
        break;
      case SettingId::kInitialWindowSize:
        for (Stream* s : active_) {
          if (s->send_window.ApplyInitialChange(peer_initial_window_, st.value) != ErrorCode::kNoError) {
            ConnectionError(ErrorCode::kFlowControlError,
                            Format("SETTINGS_INITIAL_WINDOW_SIZE %u takes stream %u's send window past 2^31-1",
                                   st.value, s->id));
            return;
          }
        }
        more_window = more_window || st.value > peer_initial_window_;
        peer_initial_window_ = st.value;
        break;
      case SettingId::kMaxFrameSize:
        peer_max_frame_ = st.value;
        break;
      default:
        break;  // ENABLE_PUSH, MAX_CONCURRENT_STREAMS (we never push), MAX_HEADER_LIST_SIZE, unknown ids
    }
  }
  AppendSettingsAck(&out);
  if (more_window) Flush();
}

void H2Connection::Impl::OnWindowUpdate(const Frame& f) {
  if (!TakeControl("WINDOW_UPDATE")) return;
  const uint32_t id = f.stream_id();
  if (id == 0) {
    if (conn_send_.Credit(f.window_increment) != ErrorCode::kNoError) {
      ConnectionError(ErrorCode::kFlowControlError,
                      Format("WINDOW_UPDATE of %u takes the connection's send window past 2^31-1",
                             f.window_increment));
      return;
    }
    Flush();
    return;
  }
  Stream* s = Find(id);
  if (s == nullptr) {
    if (Idle(id)) ConnectionError(ErrorCode::kProtocolError, Format("WINDOW_UPDATE on stream %u, which is idle", id));
    return;
  }
  if (s->send_window.Credit(f.window_increment) != ErrorCode::kNoError) {
    ResetWithError(s, ErrorCode::kFlowControlError);
    return;
  }
  if (s->in_queue) Flush();
}

// ---------------------------------------------------------------- messages

// The common case costs no copy: while the stream's reader holds nothing,
// complete messages are handed out as views of the DATA payload, and only an
// unfinished tail goes into the reader.
void H2Connection::Impl::Deliver(Stream* s, std::string_view p) {
  const uint32_t id = s->id;
  if (s->reader.buffered() == 0) {
    while (p.size() >= kGrpcPrefixSize) {
      const auto flag = static_cast<uint8_t>(p[0]);
      const uint32_t length = ReadU32(p.data() + 1);
      if (flag > 1 || length > limits.max_message_bytes) break;  // the reader words the error
      if (p.size() - kGrpcPrefixSize < length) break;
      if (flag == 1) {
        FailStream(s, kGrpcUnimplemented, "compressed messages are not supported; send grpc-encoding identity");
        return;
      }
      const std::string_view message = p.substr(kGrpcPrefixSize, length);
      p.remove_prefix(kGrpcPrefixSize + length);
      if (!DeliverMessage(id, message)) return;
      s = Find(id);
    }
  }
  if (p.empty()) return;
  s->reader.Append(p);
  s->reader_used = true;
  for (;;) {
    GrpcMessage m;
    Status st;
    const GrpcMessageReader::Result r = s->reader.Next(&m, &st);
    if (r == GrpcMessageReader::Result::kNeedMore) return;
    if (r == GrpcMessageReader::Result::kError) {
      FailStream(s, static_cast<int>(st.code()), st.message());
      return;
    }
    if (m.compressed) {
      FailStream(s, kGrpcUnimplemented, "compressed messages are not supported; send grpc-encoding identity");
      return;
    }
    if (!DeliverMessage(id, m.data)) return;
    s = Find(id);
  }
}

// False when the stream is gone or finished after the handler's call: the
// caller holds no pointer across it.
bool H2Connection::Impl::DeliverMessage(uint32_t id, std::string_view message) {
  Stream* s = Find(id);
  UnlinkRead(s);  // the request is complete enough: the handler has work
  handler->OnStreamMessage(id, message);
  s = Find(id);
  return s != nullptr && !s->finished && !dead_;
}

void H2Connection::Impl::EndOfRequest(Stream* s) {
  if (s->finished) return;
  if (s->reader_used) {
    const Status st = s->reader.Finish();
    if (!st.ok()) {
      FailStream(s, kGrpcInternal, st.message());
      return;
    }
  }
  handler->OnStreamHalfClose(s->id);
}

// ---------------------------------------------------------------- streams

H2Connection::Stream* H2Connection::Impl::Find(uint32_t id) const {
  auto it = std::lower_bound(active_.begin(), active_.end(), id,
                             [](const Stream* s, uint32_t v) { return s->id < v; });
  return it != active_.end() && (*it)->id == id ? *it : nullptr;
}

H2Connection::Stream* H2Connection::Impl::Alloc() {
  if (free_.empty()) {
    all_.push_back(std::make_unique<Stream>(limits.max_message_bytes));
    return all_.back().get();
  }
  Stream* s = free_.back();
  free_.pop_back();
  return s;
}

void H2Connection::Impl::Release(Stream* s, bool we_reset) {
  auto it = std::lower_bound(active_.begin(), active_.end(), s->id,
                             [](const Stream* a, uint32_t v) { return a->id < v; });
  if (it != active_.end() && *it == s) active_.erase(it);
  UnlinkRead(s);
  if (s->in_queue) {
    send_queue_.erase(std::find(send_queue_.begin(), send_queue_.end(), s));
  }
  Remember(s->id, we_reset);
  last_activity_ns_ = now_ns_;

  s->id = 0;
  s->remote_closed = s->started = s->finished = s->headers_sent = false;
  s->in_queue = s->window_dirty = false;
  s->finish_status = 0;
  s->content_length = -1;
  s->data_bytes = 0;
  s->finish_message.clear();
  s->recv_unacked = 0;
  s->pending.clear();
  s->pending_pos = 0;
  if (s->pending.capacity() > kKeepBufferBytes) std::string().swap(s->pending);
  if (s->reader_used) {
    s->reader = GrpcMessageReader(limits.max_message_bytes);
    s->reader_used = false;
  }
  free_.push_back(s);
}

void H2Connection::Impl::Remember(uint32_t id, bool we_reset) {
  recent_[recent_next_] = Closed{id, we_reset};
  recent_next_ = (recent_next_ + 1) % recent_.size();
}

int H2Connection::Impl::RecentIndex(uint32_t id) const {
  if (id == 0) return -1;
  for (size_t i = 0; i < recent_.size(); ++i) {
    if (recent_[i].id == id) return static_cast<int>(i);
  }
  return -1;
}

void H2Connection::Impl::LinkRead(Stream* s) {
  if (limits.stream_read_timeout_ns <= 0 || s->in_read_list) return;
  s->in_read_list = true;
  s->read_prev = read_tail_;
  s->read_next = nullptr;
  if (read_tail_ != nullptr) {
    read_tail_->read_next = s;
  } else {
    read_head_ = s;
  }
  read_tail_ = s;
}

void H2Connection::Impl::UnlinkRead(Stream* s) {
  if (s == nullptr || !s->in_read_list) return;
  if (s->read_prev != nullptr) {
    s->read_prev->read_next = s->read_next;
  } else {
    read_head_ = s->read_next;
  }
  if (s->read_next != nullptr) {
    s->read_next->read_prev = s->read_prev;
  } else {
    read_tail_ = s->read_prev;
  }
  s->read_prev = s->read_next = nullptr;
  s->in_read_list = false;
}

void H2Connection::Impl::AnswerUnstarted(uint32_t id, bool end_stream, int grpc_status, const std::string& message) {
  hblock_.clear();
  encoder.EncodeGrpcTrailers(grpc_status, message, &hblock_, /*trailers_only=*/true);
  AppendHeaders(id, hblock_, true, peer_max_frame_, &out);
  // RFC 9113 section 8.1: a complete answer before the request is; the
  // RST_STREAM(NO_ERROR) tells the client to stop sending.
  if (!end_stream) AppendRstStream(id, ErrorCode::kNoError, &out);
  Remember(id, !end_stream);
}

void H2Connection::Impl::AnswerHttpStatus(uint32_t id, bool end_stream, const char* status) {
  const HpackField f{":status", status, false};
  hblock_.clear();
  encoder.EncodeBlock(&f, 1, &hblock_);
  AppendHeaders(id, hblock_, true, peer_max_frame_, &out);
  if (!end_stream) AppendRstStream(id, ErrorCode::kNoError, &out);
  Remember(id, !end_stream);
}

void H2Connection::Impl::FailStream(Stream* s, int grpc_status, const std::string& message) {
  const uint32_t id = s->id;
  const bool notify = s->started && !s->finished;
  hblock_.clear();
  encoder.EncodeGrpcTrailers(grpc_status, message, &hblock_, !s->headers_sent);
  AppendHeaders(id, hblock_, true, peer_max_frame_, &out);
  const bool rst = !s->remote_closed;
  if (rst) AppendRstStream(id, ErrorCode::kNoError, &out);
  Release(s, rst);
  if (notify) handler->OnStreamReset(id);
}

void H2Connection::Impl::ResetWithError(Stream* s, ErrorCode code) {
  const uint32_t id = s->id;
  const bool notify = s->started && !s->finished;
  SendRst(id, code);
  Release(s, true);
  if (notify) handler->OnStreamReset(id);
}

void H2Connection::Impl::SendRst(uint32_t id, ErrorCode code) {
  AppendRstStream(id, code, &out);
  if (code != ErrorCode::kNoError && code != ErrorCode::kCancel) ++stats.protocol_errors;
}

void H2Connection::Impl::WriteTrailersAndClose(Stream* s, int grpc_status, std::string_view grpc_message) {
  hblock_.clear();
  encoder.EncodeGrpcTrailers(grpc_status, grpc_message, &hblock_, !s->headers_sent, s->request_id);
  AppendHeaders(s->id, hblock_, true, peer_max_frame_, &out);
  const bool rst = !s->remote_closed;  // RFC 9113 section 8.1
  if (rst) AppendRstStream(s->id, ErrorCode::kNoError, &out);
  Release(s, rst);
}

void H2Connection::Impl::ConnectionError(ErrorCode code, const std::string& message) {
  if (dead_) return;
  AppendGoaway(last_processed_, code, message, &out);
  if (code != ErrorCode::kNoError) ++stats.protocol_errors;
  DropAllStreams();
}

// Marks the connection dead first, so whatever the handler calls from
// OnStreamReset finds nothing to act on.
void H2Connection::Impl::DropAllStreams() {
  if (dead_) return;
  dead_ = true;
  block_open_ = false;
  doomed_.clear();
  while (!active_.empty()) {
    Stream* s = active_.back();
    if (s->started && !s->finished) doomed_.push_back(s->id);
    Release(s, true);
  }
  for (uint32_t id : doomed_) handler->OnStreamReset(id);
}

// ---------------------------------------------------------------- output

// DATA frames from the concatenation a + b, at most `budget` bytes of it.
size_t H2Connection::Impl::WriteData(uint32_t id, std::string_view a, std::string_view b, size_t budget) {
  const size_t total = std::min(a.size() + b.size(), budget);
  size_t pos = 0;
  while (pos < total) {
    const size_t n = std::min<size_t>(peer_max_frame_, total - pos);
    FrameHeader h;
    h.length = static_cast<uint32_t>(n);
    h.type = FrameType::kData;
    h.stream_id = id;
    AppendFrameHeader(h, &out);
    size_t left = n;
    if (pos < a.size()) {
      const size_t k = std::min(left, a.size() - pos);
      out.append(a.data() + pos, k);
      left -= k;
    }
    if (left > 0) {
      const size_t from = pos + (n - left) - a.size();
      out.append(b.data() + from, left);
    }
    pos += n;
  }
  return total;
}

void H2Connection::Impl::SpendWindow(Stream* s, size_t n) {
  // Never more than sendable() of either, so neither can fail.
  s->send_window.Consume(n);
  conn_send_.Consume(n);
}

bool H2Connection::Impl::SendMessage(uint32_t id, std::string_view message) {
  if (dead_) return false;
  Stream* s = Find(id);
  if (s == nullptr || s->finished) return false;
  if (message.size() > limits.max_message_bytes) {
    s->finished = true;  // this call is the handler's Finish: no OnStreamReset follows
    UnlinkRead(s);
    const std::string why = Format("response message of %zu bytes exceeds max_message_bytes (%zu)", message.size(),
                                   limits.max_message_bytes);
    FailStream(s, kGrpcResourceExhausted, why);
    return false;
  }
  if (!s->headers_sent) {
    hblock_.clear();
    encoder.EncodeGrpcResponseHeaders(&hblock_, s->request_id);
    AppendHeaders(id, hblock_, false, peer_max_frame_, &out);
    s->headers_sent = true;
  }
  char prefix_bytes[kGrpcPrefixSize];
  {
    const auto len = static_cast<uint32_t>(message.size());
    prefix_bytes[0] = 0;
    prefix_bytes[1] = static_cast<char>(len >> 24);
    prefix_bytes[2] = static_cast<char>(len >> 16);
    prefix_bytes[3] = static_cast<char>(len >> 8);
    prefix_bytes[4] = static_cast<char>(len);
  }
  const std::string_view prefix(prefix_bytes, kGrpcPrefixSize);
  size_t sent = 0;
  if (s->pending_size() == 0) {
    const size_t budget = std::min(s->send_window.sendable(), conn_send_.sendable());
    sent = WriteData(id, prefix, message, budget);
    SpendWindow(s, sent);
  }
  const size_t total = prefix.size() + message.size();
  if (sent < total) {
    if (sent < prefix.size()) {
      s->pending.append(prefix.data() + sent, prefix.size() - sent);
      s->pending.append(message.data(), message.size());
    } else {
      const size_t from = sent - prefix.size();
      s->pending.append(message.data() + from, message.size() - from);
    }
    if (!s->in_queue) {
      s->in_queue = true;
      send_queue_.push_back(s);
    }
  }
  return true;
}

bool H2Connection::Impl::SetRequestId(uint32_t id, std::string_view request_id) {
  if (dead_) return false;
  Stream* s = Find(id);
  if (s == nullptr || s->headers_sent) return false;
  s->request_id.assign(request_id.data(), request_id.size());
  return true;
}

std::string_view H2Connection::Impl::RequestId(uint32_t id) {
  Stream* s = Find(id);
  return s == nullptr ? std::string_view() : std::string_view(s->request_id);
}

bool H2Connection::Impl::Finish(uint32_t id, int grpc_status, std::string_view grpc_message) {
  if (dead_) return false;
  Stream* s = Find(id);
  if (s == nullptr || s->finished) return false;
  s->finished = true;
  UnlinkRead(s);
  if (s->pending_size() > 0) {
    s->finish_status = grpc_status;
    s->finish_message.assign(grpc_message.data(), grpc_message.size());
    return true;
  }
  WriteTrailersAndClose(s, grpc_status, grpc_message);
  return true;
}

void H2Connection::Impl::ResetStream(uint32_t id, ErrorCode code) {
  if (dead_) return;
  Stream* s = Find(id);
  if (s == nullptr) return;
  AppendRstStream(id, code, &out);
  Release(s, true);
}

// Streams waiting for window, oldest first: each takes what the windows allow
// and keeps its place if it is not done. Makes no handler calls.
void H2Connection::Impl::Flush() {
  size_t keep = 0;
  for (size_t i = 0; i < send_queue_.size(); ++i) {
    Stream* s = send_queue_[i];
    const size_t budget = std::min(s->send_window.sendable(), conn_send_.sendable());
    if (budget > 0) {
      const std::string_view rest = std::string_view(s->pending).substr(s->pending_pos);
      const size_t n = AppendData(s->id, rest, false, peer_max_frame_, budget, &out);
      SpendWindow(s, n);
      s->pending_pos += n;
    }
    if (s->pending_size() > 0) {
      send_queue_[keep++] = s;
      continue;
    }
    s->in_queue = false;
    s->pending.clear();
    s->pending_pos = 0;
    if (s->finished) WriteTrailersAndClose(s, s->finish_status, s->finish_message);
  }
  send_queue_.resize(keep);
}

// Gives back what this Receive call consumed once half of a window is used,
// one WINDOW_UPDATE per window rather than one per DATA frame.
void H2Connection::Impl::FlushWindowUpdates() {
  if (conn_unacked_ > 0 && conn_unacked_ >= conn_window_ / 2) {
    AppendWindowUpdate(0, static_cast<uint32_t>(conn_unacked_), &out);
    conn_recv_.Credit(static_cast<uint32_t>(conn_unacked_));
    conn_unacked_ = 0;
  }
  const uint64_t threshold = std::max<uint64_t>(1, stream_window_ / 2);
  for (uint32_t id : dirty_) {
    Stream* s = Find(id);
    if (s == nullptr) continue;
    s->window_dirty = false;
    if (s->remote_closed || s->recv_unacked < threshold) continue;  // nothing more will come
    AppendWindowUpdate(id, static_cast<uint32_t>(s->recv_unacked), &out);
    s->recv_window.Credit(static_cast<uint32_t>(s->recv_unacked));
    s->recv_unacked = 0;
  }
  dirty_.clear();
}

// ---------------------------------------------------------------- lifecycle

void H2Connection::Impl::Abort() { DropAllStreams(); }

void H2Connection::Impl::Shutdown() {
  if (dead_ || goaway_sent_) return;
  goaway_sent_ = true;
  AppendGoaway(last_processed_, ErrorCode::kNoError, "server shutting down", &out);
}

bool H2Connection::Impl::Tick(int64_t now_ns) {
  if (done()) return false;
  now_ns_ = std::max(now_ns_, now_ns);
  const ConnectionLimits& l = limits;
  if (!reader.preface_done() && l.preface_timeout_ns > 0 && now_ns_ - created_ns_ >= l.preface_timeout_ns) {
    ConnectionError(ErrorCode::kProtocolError,
                    Format("no connection preface and SETTINGS within %lld ms (preface_timeout_ns)",
                           static_cast<long long>(l.preface_timeout_ns / 1000000)));
    return false;
  }
  if (block_open_ && l.stream_read_timeout_ns > 0 && now_ns_ - block_started_ns_ >= l.stream_read_timeout_ns) {
    ConnectionError(ErrorCode::kProtocolError,
                    Format("the field block of stream %u was not finished within %lld ms (stream_read_timeout_ns)",
                           block_stream_, static_cast<long long>(l.stream_read_timeout_ns / 1000000)));
    return false;
  }
  while (read_head_ != nullptr && now_ns_ - read_head_->opened_ns >= l.stream_read_timeout_ns) {
    Stream* s = read_head_;
    const uint32_t id = s->id;
    const bool notify = s->started && !s->finished;
    AppendRstStream(id, ErrorCode::kCancel, &out);
    Release(s, true);
    if (notify) handler->OnStreamReset(id);
    if (dead_) return false;
  }
  if (!goaway_sent_ && active_.empty() && l.idle_timeout_ns > 0 && now_ns_ - last_activity_ns_ >= l.idle_timeout_ns) {
    goaway_sent_ = true;
    AppendGoaway(last_processed_, ErrorCode::kNoError,
                 Format("idle for %lld ms (idle_timeout_ns)", static_cast<long long>(l.idle_timeout_ns / 1000000)),
                 &out);
  }
  return !done();
}

int64_t H2Connection::Impl::NextDeadline() const {
  if (done()) return kNever;
  const ConnectionLimits& l = limits;
  int64_t d = kNever;
  if (!reader.preface_done() && l.preface_timeout_ns > 0) d = std::min(d, AddSat(created_ns_, l.preface_timeout_ns));
  if (l.stream_read_timeout_ns > 0) {
    if (block_open_) d = std::min(d, AddSat(block_started_ns_, l.stream_read_timeout_ns));
    if (read_head_ != nullptr) d = std::min(d, AddSat(read_head_->opened_ns, l.stream_read_timeout_ns));
  }
  if (!goaway_sent_ && active_.empty() && l.idle_timeout_ns > 0) {
    d = std::min(d, AddSat(last_activity_ns_, l.idle_timeout_ns));
  }
  return d;
}

size_t H2Connection::Impl::MemoryBytes() const {
  size_t n = sizeof(H2Connection) + sizeof(Impl);
  n += out.capacity() + in_.capacity() + block_.capacity() + hblock_.capacity();
  n += (fields_.capacity() + regular_.capacity()) * sizeof(HpackField);
  n += (active_.capacity() + free_.capacity() + send_queue_.capacity()) * sizeof(Stream*);
  n += all_.capacity() * sizeof(std::unique_ptr<Stream>);
  n += (dirty_.capacity() + doomed_.capacity()) * sizeof(uint32_t);
  n += recent_.capacity() * sizeof(Closed);
  n += decoder.dynamic_table_size_bytes();
  for (const auto& s : all_) {
    n += sizeof(Stream) + s->pending.capacity() + s->finish_message.capacity() + s->reader.buffered();
  }
  return n;
}

// ---------------------------------------------------------------- H2Connection

H2Connection::H2Connection(const ConnectionLimits& limits, StreamHandler* handler, int64_t now_ns)
    : impl_(std::make_unique<Impl>(limits, handler, now_ns, &out_, &stats_)) {}

H2Connection::~H2Connection() { impl_->Abort(); }

bool H2Connection::Receive(const uint8_t* data, size_t size, int64_t now_ns) {
  return impl_->Receive(data, size, now_ns);
}
bool H2Connection::SendMessage(uint32_t stream_id, std::string_view message) {
  return impl_->SendMessage(stream_id, message);
}
bool H2Connection::SetRequestId(uint32_t stream_id, std::string_view request_id) {
  return impl_->SetRequestId(stream_id, request_id);
}

std::string_view H2Connection::RequestId(uint32_t stream_id) { return impl_->RequestId(stream_id); }

bool H2Connection::Finish(uint32_t stream_id, int grpc_status, std::string_view grpc_message) {
  return impl_->Finish(stream_id, grpc_status, grpc_message);
}
void H2Connection::ResetStream(uint32_t stream_id, ErrorCode code) { impl_->ResetStream(stream_id, code); }
void H2Connection::Abort() { impl_->Abort(); }
void H2Connection::Shutdown() { impl_->Shutdown(); }
bool H2Connection::Tick(int64_t now_ns) { return impl_->Tick(now_ns); }
int64_t H2Connection::next_deadline_ns() const { return impl_->NextDeadline(); }

void H2Connection::ConsumeOutput(size_t n) {
  if (n >= out_.size()) {
    out_.clear();
  } else {
    out_.erase(0, n);
  }
}

bool H2Connection::wants_read() const { return out_.size() <= impl_->limits.max_pending_output_bytes; }
bool H2Connection::done() const { return impl_->done(); }
size_t H2Connection::open_streams() const { return impl_->active_.size(); }
size_t H2Connection::memory_bytes() const { return impl_->MemoryBytes(); }

}  // namespace h2
}  // namespace steadyserve
