// Tests of H2Connection (h2_connection.h): a "client" made of the frame
// writers and an HpackEncoder drives one connection, and the connection's
// output is read back with a client-side FrameReader and an HpackDecoder.
#include "steadyserve/h2_connection.h"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "check.h"
#include "steadyserve/grpc_message.h"
#include "steadyserve/h2_frame.h"
#include "steadyserve/hpack.h"

using namespace steadyserve;
using namespace steadyserve::h2;

namespace {

int Code(ErrorCode c) { return static_cast<int>(c); }
int Type(FrameType t) { return static_cast<int>(t); }

constexpr int64_t kSecond = 1'000'000'000;

// What the handler saw, in order, plus hooks for re-entrancy tests.
class Recorder : public StreamHandler {
 public:
  std::vector<std::string> log;
  std::map<uint32_t, int> resets;  // per stream: must never exceed 1
  int starts = 0;
  StreamStart last;  // views copied into the strings below
  std::string path, authority, request_id;
  std::vector<std::pair<std::string, std::string>> headers;
  std::vector<std::string> messages;
  std::vector<const char*> message_ptrs;
  std::function<void(const StreamStart&)> on_start;
  std::function<void(uint32_t, std::string_view)> on_message;
  std::function<void(uint32_t)> on_half_close;
  std::function<void(uint32_t)> on_reset;

  void OnStreamStart(const StreamStart& s) override {
    ++starts;
    last = s;
    path = std::string(s.path);
    authority = std::string(s.authority);
    request_id = std::string(s.request_id);
    headers.clear();
    for (const HpackField& f : *s.headers) headers.emplace_back(std::string(f.name), std::string(f.value));
    log.push_back("start " + std::to_string(s.stream_id) + (s.end_stream ? " end" : ""));
    if (on_start) on_start(s);
  }
  void OnStreamMessage(uint32_t id, std::string_view m) override {
    messages.emplace_back(m);
    message_ptrs.push_back(m.data());
    log.push_back("msg " + std::to_string(id) + " " + std::string(m.substr(0, 32)));
    if (on_message) on_message(id, m);
  }
  void OnStreamHalfClose(uint32_t id) override {
    log.push_back("half " + std::to_string(id));
    if (on_half_close) on_half_close(id);
  }
  void OnStreamReset(uint32_t id) override {
    ++resets[id];
    CHECK_EQ(resets[id], 1);
    log.push_back("reset " + std::to_string(id));
    if (on_reset) on_reset(id);
  }
  int reset_count() const {
    int n = 0;
    for (const auto& r : resets) n += r.second;
    return n;
  }
};

// A frame the server sent, decoded.
struct Out {
  FrameType type = FrameType::kData;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;  // DATA: the data; GOAWAY: debug data
  std::vector<std::pair<std::string, std::string>> headers;  // HEADERS (+ CONTINUATION) decoded
  std::vector<Setting> settings;
  ErrorCode code = ErrorCode::kNoError;
  uint32_t last_stream_id = 0;
  uint32_t increment = 0;

  bool end_stream() const { return (flags & flags::kEndStream) != 0; }
  bool ack() const { return (flags & flags::kAck) != 0; }
  std::string header(const std::string& name) const {
    for (const auto& h : headers) {
      if (h.first == name) return h.second;
    }
    return "<none>";
  }
};

FrameReader::Options ClientOptions() {
  FrameReader::Options o;
  o.server = false;
  return o;
}

std::string Msg(const std::string& payload, bool compressed = false) {
  std::string s;
  AppendGrpcPrefix(compressed, static_cast<uint32_t>(payload.size()), &s);
  return s + payload;
}

std::string DataFrame(uint32_t id, const std::string& payload, bool end_stream = false) {
  std::string s;
  AppendFrame(FrameType::kData, end_stream ? flags::kEndStream : 0, id, payload, &s);
  return s;
}

std::string RstFrame(uint32_t id, ErrorCode code) {
  std::string s;
  AppendRstStream(id, code, &s);
  return s;
}

std::string WindowFrame(uint32_t id, uint32_t inc) {
  std::string s;
  AppendWindowUpdate(id, inc, &s);
  return s;
}

std::string SettingsFrame(std::vector<Setting> settings) {
  std::string s;
  AppendSettings(settings, &s);
  return s;
}

std::string PingFrame(uint8_t v) {
  const uint8_t opaque[8] = {v, 1, 2, 3, 4, 5, 6, 7};
  std::string s;
  AppendPing(opaque, false, &s);
  return s;
}

using Fields = std::vector<std::pair<std::string, std::string>>;

Fields GrpcRequest(const std::string& path = "/pkg.Svc/Call") {
  return {{":method", "POST"},
          {":scheme", "http"},
          {":path", path},
          {":authority", "localhost:8001"},
          {"content-type", "application/grpc"},
          {"te", "trailers"}};
}

// One connection and its client.
struct Harness {
  ConnectionLimits limits;
  Recorder handler;
  std::unique_ptr<H2Connection> conn;
  HpackEncoder enc{false};
  FrameReader reader{ClientOptions()};
  HpackDecoder dec{4096, 1u << 24};
  std::string unread;
  std::string block;  // a HEADERS block the server has not finished
  Out pending_headers;
  int64_t now = 5 * kSecond;
  bool server_failed = false;

  explicit Harness(ConnectionLimits l = ConnectionLimits()) : limits(l) {
    conn = std::make_unique<H2Connection>(limits, &handler, now);
  }

  bool Send(const std::string& bytes) {
    return conn->Receive(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), now);
  }

  std::string Headers(uint32_t id, const Fields& fields, bool end_stream) {
    std::vector<HpackField> hf;
    for (const auto& f : fields) hf.push_back(HpackField{f.first, f.second, false});
    std::string b;
    enc.EncodeBlock(hf, &b);
    std::string s;
    AppendHeaders(id, b, end_stream, kDefaultMaxFrameSize, &s);
    return s;
  }

  // Preface, client SETTINGS and the ACK of the server's SETTINGS.
  void Handshake(std::vector<Setting> settings = {}) {
    std::string s(kClientPreface);
    s += SettingsFrame(std::move(settings));
    AppendSettingsAck(&s);
    CHECK(Send(s));
  }

  // Everything the server wrote since the last call, decoded.
  std::vector<Out> Read() {
    unread += conn->output();
    conn->ConsumeOutput(conn->output().size());
    std::vector<Out> frames;
    size_t pos = 0;
    for (;;) {
      Frame f;
      H2Error e;
      size_t used = 0;
      const auto r = reader.Next(std::string_view(unread).substr(pos), &used, &f, &e);
      pos += used;
      if (r == FrameReader::Result::kNeedMore) break;
      if (r == FrameReader::Result::kError) {
        std::fprintf(stderr, "server output broke the client reader: %s\n", e.message.c_str());
        CHECK(false);
      }
      Out o;
      o.type = f.type();
      o.flags = f.header.flags;
      o.stream = f.stream_id();
      o.payload = std::string(f.payload);
      o.settings.assign(f.settings, f.settings + f.num_settings);
      o.code = f.error_code;
      o.last_stream_id = f.last_stream_id;
      o.increment = f.window_increment;
      if (f.type() == FrameType::kHeaders) {
        block = o.payload;
        pending_headers = o;
        if (!f.end_headers()) continue;
      } else if (f.type() == FrameType::kContinuation) {
        block += o.payload;
        if (!f.end_headers()) continue;
        o = pending_headers;
      }
      if (f.type() == FrameType::kHeaders || f.type() == FrameType::kContinuation) {
        std::vector<HpackField> fields;
        const auto res = dec.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &fields);
        CHECK(res.ok());
        for (const auto& hf : fields) o.headers.emplace_back(std::string(hf.name), std::string(hf.value));
        o.payload.clear();
      }
      frames.push_back(std::move(o));
    }
    unread.erase(0, pos);
    return frames;
  }
};

std::vector<Out> OfType(const std::vector<Out>& frames, FrameType t) {
  std::vector<Out> r;
  for (const auto& f : frames) {
    if (f.type == t) r.push_back(f);
  }
  return r;
}

std::string DataOf(const std::vector<Out>& frames, uint32_t stream) {
  std::string s;
  for (const auto& f : frames) {
    if (f.type == FrameType::kData && f.stream == stream) s += f.payload;
  }
  return s;
}

// The one GOAWAY in `frames`.
Out Goaway(const std::vector<Out>& frames) {
  const auto g = OfType(frames, FrameType::kGoaway);
  CHECK_EQ(g.size(), 1u);
  return g[0];
}

bool HasRst(const std::vector<Out>& frames, uint32_t stream, ErrorCode code) {
  for (const auto& f : frames) {
    if (f.type == FrameType::kRstStream && f.stream == stream && f.code == code) return true;
  }
  return false;
}

// A ready connection (handshake read off).
struct Ready : Harness {
  explicit Ready(ConnectionLimits l = ConnectionLimits(), std::vector<Setting> client_settings = {}) : Harness(l) {
    Handshake(std::move(client_settings));
    Read();
  }
};

// ---------------------------------------------------------------- handshake

TEST(ServerPrefaceAndSettings) {
  ConnectionLimits l;
  l.max_concurrent_streams = 77;
  l.stream_window_bytes = 100000;
  l.connection_window_bytes = 1u << 20;
  l.max_frame_size = 32768;
  l.max_header_list_bytes = 9000;
  Harness h(l);
  CHECK(!h.conn->output().empty());  // before any input
  auto out = h.Read();
  CHECK_EQ(out.size(), 2u);
  CHECK_EQ(Type(out[0].type), Type(FrameType::kSettings));
  std::map<uint16_t, uint32_t> s;
  for (const Setting& st : out[0].settings) s[st.id] = st.value;
  CHECK_EQ(s[static_cast<uint16_t>(SettingId::kMaxConcurrentStreams)], 77u);
  CHECK_EQ(s[static_cast<uint16_t>(SettingId::kInitialWindowSize)], 100000u);
  CHECK_EQ(s[static_cast<uint16_t>(SettingId::kMaxFrameSize)], 32768u);
  CHECK_EQ(s[static_cast<uint16_t>(SettingId::kMaxHeaderListSize)], 9000u);
  CHECK(s.count(static_cast<uint16_t>(SettingId::kEnablePush)) == 1);
  CHECK_EQ(s[static_cast<uint16_t>(SettingId::kEnablePush)], 0u);
  CHECK(s.count(static_cast<uint16_t>(SettingId::kHeaderTableSize)) == 0);
  CHECK_EQ(Type(out[1].type), Type(FrameType::kWindowUpdate));
  CHECK_EQ(out[1].stream, 0u);
  CHECK_EQ(out[1].increment, (1u << 20) - 65535u);

  // The client's SETTINGS is acknowledged; PING answered with the same bytes.
  h.Handshake({{static_cast<uint16_t>(SettingId::kMaxFrameSize), 20000}});
  CHECK(h.Send(PingFrame(9)));
  out = h.Read();
  CHECK_EQ(out.size(), 2u);
  CHECK_EQ(Type(out[0].type), Type(FrameType::kSettings));
  CHECK(out[0].ack());
  CHECK_EQ(Type(out[1].type), Type(FrameType::kPing));
  CHECK(out[1].ack());
  CHECK_EQ(static_cast<uint8_t>(out[1].payload[0]), 9);
  // A PING ACK is not answered.
  const uint8_t opaque[8] = {};
  std::string ack;
  AppendPing(opaque, true, &ack);
  CHECK(h.Send(ack));
  CHECK(h.Read().empty());
  CHECK(!h.conn->done());
  CHECK(h.conn->wants_read());
}

TEST(BadPrefaceIsGoawayProtocolError) {
  Harness h;
  CHECK(!h.Send("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto out = h.Read();
  const Out g = Goaway(out);
  CHECK_EQ(Code(g.code), Code(ErrorCode::kProtocolError));
  CHECK_EQ(g.last_stream_id, 0u);
  CHECK(h.conn->done());
  CHECK(!h.Send(std::string(kClientPreface)));  // ignored from now on
  CHECK(h.Read().empty());
  CHECK_EQ(h.conn->stats().protocol_errors, 1u);
}

TEST(PrefaceInTinyChunks) {
  Harness h;
  std::string s(kClientPreface);
  s += SettingsFrame({});
  s += h.Headers(1, GrpcRequest(), false);
  s += DataFrame(1, Msg("hello"), true);
  for (char c : s) CHECK(h.Send(std::string(1, c)));
  CHECK(h.handler.log == (std::vector<std::string>{"start 1", "msg 1 hello", "half 1"}));
}

// ---------------------------------------------------------------- unary

TEST(UnaryCall) {
  Ready h;
  Fields req = GrpcRequest("/inference.GRPCInferenceService/ModelInfer");
  req.push_back({"grpc-timeout", "250m"});
  req.push_back({"x-request-id", "req-42"});
  req.push_back({"custom-meta", "v"});
  CHECK(h.Send(h.Headers(1, req, false) + DataFrame(1, Msg("request-bytes"), true)));
  CHECK(h.handler.log == (std::vector<std::string>{"start 1", "msg 1 request-bytes", "half 1"}));
  CHECK(h.handler.path == "/inference.GRPCInferenceService/ModelInfer");
  CHECK(h.handler.authority == "localhost:8001");
  CHECK(h.handler.request_id == "req-42");
  CHECK_EQ(h.handler.last.timeout_ns, 250'000'000LL);
  CHECK(!h.handler.last.end_stream);
  // Regular headers only, in order.
  CHECK_EQ(h.handler.headers.size(), 5u);
  CHECK(h.handler.headers[0].first == "content-type");
  CHECK(h.handler.headers[4].first == "custom-meta");
  CHECK_EQ(h.conn->open_streams(), 1u);

  CHECK(h.conn->SendMessage(1, "response-bytes"));
  CHECK(h.conn->Finish(1, 3, "bad input: é 100%"));
  auto out = h.Read();
  CHECK_EQ(out.size(), 3u);
  CHECK_EQ(Type(out[0].type), Type(FrameType::kHeaders));
  CHECK(out[0].header(":status") == "200");
  CHECK(out[0].header("content-type") == "application/grpc");
  CHECK(!out[0].end_stream());
  CHECK_EQ(Type(out[1].type), Type(FrameType::kData));
  CHECK(out[1].payload == Msg("response-bytes"));
  CHECK(!out[1].end_stream());
  CHECK_EQ(Type(out[2].type), Type(FrameType::kHeaders));
  CHECK(out[2].end_stream());
  CHECK(out[2].header("grpc-status") == "3");
  CHECK(out[2].header("grpc-message") == "bad input: %C3%A9 100%25");
  CHECK(out[2].header(":status") == "<none>");
  CHECK_EQ(h.conn->open_streams(), 0u);
  CHECK(!h.conn->SendMessage(1, "x"));
  CHECK(!h.conn->Finish(1, 0, ""));
  CHECK(h.handler.resets.empty());
  CHECK_EQ(h.conn->stats().streams_opened, 1u);
}

TEST(MessagesSplitAndCoalesced) {
  Ready h;
  const std::string big(40000, 'b');
  const std::string wire = Msg(big);
  std::string s = h.Headers(1, GrpcRequest(), false);
  s += DataFrame(1, wire.substr(0, 3));  // inside the prefix
  s += DataFrame(1, wire.substr(3, 16000));
  s += DataFrame(1, wire.substr(16003, 16000));
  s += DataFrame(1, wire.substr(32003) + Msg("one") + Msg("") + Msg("three").substr(0, 4));
  s += DataFrame(1, Msg("three").substr(4) + Msg("four"), true);
  CHECK(h.Send(s));
  CHECK_EQ(h.handler.messages.size(), 5u);
  CHECK(h.handler.messages[0] == big);
  CHECK(h.handler.messages[1] == "one");
  CHECK(h.handler.messages[2].empty());
  CHECK(h.handler.messages[3] == "three");
  CHECK(h.handler.messages[4] == "four");
  CHECK(h.handler.log.back() == "half 1");
}

TEST(WholeMessagesAreViewsOfTheInput) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false)));
  const std::string frame = DataFrame(1, Msg("first") + Msg("second"));
  CHECK(h.Send(frame));
  CHECK_EQ(h.handler.message_ptrs.size(), 2u);
  for (const char* p : h.handler.message_ptrs) CHECK(p >= frame.data() && p < frame.data() + frame.size());
}

TEST(TrailersFromTheClientHalfClose) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + DataFrame(1, Msg("m")) +
               h.Headers(1, {{"x-trailer", "1"}}, true)));
  CHECK(h.handler.log == (std::vector<std::string>{"start 1", "msg 1 m", "half 1"}));
  // A second HEADERS without END_STREAM is a stream error.
  CHECK(h.Send(h.Headers(3, GrpcRequest(), false) + h.Headers(3, {{"x-more", "1"}}, false)));
  CHECK(HasRst(h.Read(), 3, ErrorCode::kProtocolError));
  CHECK_EQ(h.handler.resets[3], 1);
  // Trailers carrying a pseudo-header are malformed.
  CHECK(h.Send(h.Headers(5, GrpcRequest(), false) + h.Headers(5, {{":path", "/x"}}, true)));
  CHECK(HasRst(h.Read(), 5, ErrorCode::kProtocolError));
  CHECK_EQ(h.handler.resets[5], 1);
}

TEST(HeadersWithEndStreamStartAndHalfClose) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true)));
  CHECK(h.handler.log == (std::vector<std::string>{"start 1 end", "half 1"}));
  CHECK(h.conn->Finish(1, 0, ""));
  auto out = h.Read();
  CHECK_EQ(out.size(), 1u);  // trailers-only, no RST: the client had finished
  CHECK(out[0].header(":status") == "200");
  CHECK(out[0].header("grpc-status") == "0");
  CHECK(out[0].end_stream());
}

// ---------------------------------------------------------------- flow control

TEST(ResponseWaitsForTheClientsWindow) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + DataFrame(1, Msg("q"), true)));
  const std::string answer(100000, 'r');
  CHECK(h.conn->SendMessage(1, answer));
  CHECK(h.conn->Finish(1, 0, ""));
  auto out = h.Read();
  CHECK_EQ(DataOf(out, 1).size(), 65535u);  // the default windows
  for (const auto& f : OfType(out, FrameType::kData)) CHECK(f.payload.size() <= kDefaultMaxFrameSize);
  CHECK_EQ(OfType(out, FrameType::kHeaders).size(), 1u);  // no trailers yet
  CHECK_EQ(h.conn->open_streams(), 1u);
  CHECK(!h.conn->SendMessage(1, "late"));  // finished
  // The stream's window alone does not help: the connection's is spent too.
  CHECK(h.Send(WindowFrame(1, 100000)));
  CHECK(DataOf(h.Read(), 1).empty());
  CHECK(h.Send(WindowFrame(0, 20000)));
  out = h.Read();
  CHECK_EQ(DataOf(out, 1).size(), 20000u);
  CHECK(OfType(out, FrameType::kHeaders).empty());
  CHECK(h.Send(WindowFrame(0, 100000)));
  out = h.Read();
  CHECK_EQ(DataOf(out, 1).size(), 100005u - 85535u);
  const auto trailers = OfType(out, FrameType::kHeaders);
  CHECK_EQ(trailers.size(), 1u);
  CHECK(trailers[0].header("grpc-status") == "0");
  CHECK(out.back().type == FrameType::kHeaders);  // trailers after the last DATA
  CHECK_EQ(h.conn->open_streams(), 0u);
  CHECK(h.handler.resets.empty());
}

TEST(PendingStreamsShareTheConnectionWindow) {
  Ready h({}, {{static_cast<uint16_t>(SettingId::kInitialWindowSize), 1u << 20}});
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true) + h.Headers(3, GrpcRequest(), true)));
  CHECK(h.conn->SendMessage(1, std::string(70000, 'a')));
  CHECK(h.conn->SendMessage(3, std::string(1000, 'c')));
  CHECK(h.conn->Finish(3, 0, ""));
  CHECK(h.conn->Finish(1, 0, ""));
  auto out = h.Read();
  CHECK_EQ(DataOf(out, 1).size(), 65535u);
  CHECK(DataOf(out, 3).empty());
  CHECK_EQ(OfType(out, FrameType::kHeaders).size(), 2u);  // response headers of both
  CHECK(h.Send(WindowFrame(0, 1u << 20)));
  out = h.Read();
  CHECK_EQ(DataOf(out, 1).size(), 70005u - 65535u);
  CHECK(DataOf(out, 3) == Msg(std::string(1000, 'c')));
  CHECK_EQ(OfType(out, FrameType::kHeaders).size(), 2u);  // both trailers
  CHECK_EQ(h.conn->open_streams(), 0u);
}

TEST(PeerInitialWindowSizeChange) {
  Ready h({}, {{static_cast<uint16_t>(SettingId::kInitialWindowSize), 10}});
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true)));
  CHECK(h.conn->SendMessage(1, std::string(95, 'x')));
  auto out = h.Read();
  CHECK_EQ(DataOf(out, 1).size(), 10u);
  // Raised to 60: 50 more may go; then shrunk below what was sent: nothing
  // until the window is positive again.
  CHECK(h.Send(SettingsFrame({{static_cast<uint16_t>(SettingId::kInitialWindowSize), 60}})));
  out = h.Read();
  CHECK(out[0].type == FrameType::kSettings && out[0].ack());
  CHECK_EQ(DataOf(out, 1).size(), 50u);
  CHECK(h.Send(SettingsFrame({{static_cast<uint16_t>(SettingId::kInitialWindowSize), 20}})));
  CHECK(h.Send(WindowFrame(1, 30)));
  CHECK(DataOf(h.Read(), 1).empty());  // window -40 + 30 = -10
  CHECK(h.Send(WindowFrame(1, 100)));
  CHECK_EQ(DataOf(h.Read(), 1).size(), 40u);
  // A change taking a window past 2^31-1 is a connection error.
  CHECK(h.Send(WindowFrame(1, kMaxWindowSize - 200)));
  CHECK(!h.Send(SettingsFrame({{static_cast<uint16_t>(SettingId::kInitialWindowSize), kMaxWindowSize}})));
  CHECK_EQ(Code(Goaway(h.Read()).code), Code(ErrorCode::kFlowControlError));
  CHECK_EQ(h.handler.resets[1], 1);
}

TEST(PeerMaxFrameSizeBoundsOurFrames) {
  Ready h({}, {{static_cast<uint16_t>(SettingId::kMaxFrameSize), 20000},
               {static_cast<uint16_t>(SettingId::kInitialWindowSize), 1u << 20}});
  h.reader.set_max_frame_size(20000);
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true) + WindowFrame(0, 1u << 20)));
  CHECK(h.conn->SendMessage(1, std::string(50000, 'z')));
  auto data = OfType(h.Read(), FrameType::kData);
  CHECK_EQ(data.size(), 3u);
  CHECK_EQ(data[0].payload.size(), 20000u);
}

TEST(ReceiveWindowUpdatesAreBatched) {
  ConnectionLimits l;
  l.stream_window_bytes = 100000;
  l.connection_window_bytes = 200000;
  Ready h(l);
  std::string s = h.Headers(1, GrpcRequest(), false);
  for (int i = 0; i < 6; ++i) s += DataFrame(1, std::string(10000, '\0'));
  CHECK(h.Send(s));
  auto wu = OfType(h.Read(), FrameType::kWindowUpdate);
  CHECK_EQ(wu.size(), 1u);  // one for the stream (60000 >= 50000), none yet for the connection
  CHECK_EQ(wu[0].stream, 1u);
  CHECK_EQ(wu[0].increment, 60000u);
  s.clear();
  for (int i = 0; i < 5; ++i) s += DataFrame(1, std::string(10000, '\0'));
  CHECK(h.Send(s));
  wu = OfType(h.Read(), FrameType::kWindowUpdate);
  CHECK_EQ(wu.size(), 2u);
  CHECK_EQ(wu[0].stream, 0u);
  CHECK_EQ(wu[0].increment, 110000u);
  CHECK_EQ(wu[1].stream, 1u);
  CHECK_EQ(wu[1].increment, 50000u);
}

TEST(ClientOverTheStreamWindowGetsFlowControlError) {
  ConnectionLimits l;
  l.stream_window_bytes = 65535;
  Ready h(l);
  std::string s = h.Headers(1, GrpcRequest(), false);
  for (int i = 0; i < 4; ++i) s += DataFrame(1, std::string(16000, '\0'));
  s += DataFrame(1, std::string(2000, '\0'));  // 66000 > 65535
  CHECK(h.Send(s));
  CHECK(HasRst(h.Read(), 1, ErrorCode::kFlowControlError));
  CHECK_EQ(h.handler.resets[1], 1);
  CHECK(!h.conn->done());
}

TEST(ClientOverTheConnectionWindowGetsGoaway) {
  ConnectionLimits l;
  l.stream_window_bytes = 1u << 20;
  l.connection_window_bytes = 65535;
  Ready h(l);
  std::string s = h.Headers(1, GrpcRequest(), false) + h.Headers(3, GrpcRequest(), false);
  s += DataFrame(1, std::string(16384, '\0')) + DataFrame(3, std::string(16384, '\0'));
  s += DataFrame(1, std::string(16384, '\0')) + DataFrame(3, std::string(16384, '\0'));  // 65536
  CHECK(!h.Send(s));
  const Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kFlowControlError));
  CHECK_EQ(g.last_stream_id, 3u);
  CHECK_EQ(h.handler.reset_count(), 2);
}

TEST(OurSmallerWindowHoldsOnlyAfterTheAck) {
  // Until the ACK the client may assume 65535 but we accept up to our value;
  // after it, our value holds.
  ConnectionLimits l;
  l.stream_window_bytes = 30000;
  Harness h(l);
  std::string s(kClientPreface);
  s += SettingsFrame({});
  s += h.Headers(1, GrpcRequest(), false);
  for (int i = 0; i < 4; ++i) s += DataFrame(1, std::string(16000, '\0'));  // 64000 < 65535
  CHECK(h.Send(s));
  CHECK(!HasRst(h.Read(), 1, ErrorCode::kFlowControlError));
  std::string ack;
  AppendSettingsAck(&ack);
  CHECK(h.Send(ack));
  CHECK(h.Send(h.Headers(3, GrpcRequest(), false) + DataFrame(3, std::string(16000, '\0')) +
               DataFrame(3, std::string(16000, '\0'))));
  CHECK(HasRst(h.Read(), 3, ErrorCode::kFlowControlError));
}

// ---------------------------------------------------------------- streams

TEST(MaxConcurrentStreamsRefused) {
  ConnectionLimits l;
  l.max_concurrent_streams = 2;
  Ready h(l);
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + h.Headers(3, GrpcRequest(), false) +
               h.Headers(5, GrpcRequest(), false) + DataFrame(5, Msg("ignored"), true)));
  auto out = h.Read();
  CHECK(HasRst(out, 5, ErrorCode::kRefusedStream));
  CHECK_EQ(OfType(out, FrameType::kRstStream).size(), 1u);  // the DATA after it is ignored
  CHECK_EQ(h.handler.starts, 2);
  CHECK_EQ(h.conn->stats().streams_refused, 1u);
  CHECK(h.conn->Finish(1, 0, ""));
  CHECK(h.Send(h.Headers(7, GrpcRequest(), true)));
  CHECK_EQ(h.handler.starts, 3);
}

TEST(HeaderListTooLargeIsResourceExhaustedAndTheConnectionLives) {
  ConnectionLimits l;
  l.max_header_list_bytes = 1000;
  Ready h(l);
  Fields req = GrpcRequest();
  req.push_back({"x-huge", std::string(2000, 'h')});
  CHECK(h.Send(h.Headers(1, req, false)));
  auto out = h.Read();
  const auto hdrs = OfType(out, FrameType::kHeaders);
  CHECK_EQ(hdrs.size(), 1u);
  CHECK(hdrs[0].end_stream());
  CHECK(hdrs[0].header(":status") == "200");
  CHECK(hdrs[0].header("grpc-status") == "8");
  CHECK_CONTAINS(hdrs[0].header("grpc-message"), "max_header_list_bytes (1000 bytes)");
  CHECK_CONTAINS(hdrs[0].header("grpc-message"), "2");  // the block's size
  CHECK(HasRst(out, 1, ErrorCode::kNoError));
  CHECK_EQ(h.handler.starts, 0);
  CHECK(h.Send(h.Headers(3, GrpcRequest(), true)));
  CHECK_EQ(h.handler.starts, 1);
}

TEST(HpackBombIsRefusedWithBoundedMemory) {
  ConnectionLimits l;
  l.max_header_list_bytes = 8192;
  Ready h(l);
  // One literal of ~4000 bytes inserted into the dynamic table, then
  // referenced 3000 times: a 12 MB list from a 7 KB block.
  std::string b;
  b.push_back(0x40);
  HpackEncodeInteger(5, 7, 0, &b);
  b += "x-big";
  HpackEncodeInteger(4000, 7, 0, &b);
  b += std::string(4000, 'v');
  for (int i = 0; i < 3000; ++i) b.push_back(static_cast<char>(0x80 | 62));
  std::string s;
  AppendHeaders(1, b, false, kDefaultMaxFrameSize, &s);
  CHECK(h.Send(s));
  auto hdrs = OfType(h.Read(), FrameType::kHeaders);
  CHECK_EQ(hdrs.size(), 1u);
  CHECK(hdrs[0].header("grpc-status") == "8");
  CHECK(h.conn->memory_bytes() < 256 * 1024);
  // The table stayed in step: the next block decodes.
  CHECK(h.Send(h.Headers(3, GrpcRequest(), true)));
  CHECK_EQ(h.handler.starts, 1);
}

TEST(HpackCompressionErrorIsGoaway) {
  Ready h;
  std::string s;
  AppendHeaders(1, std::string(1, static_cast<char>(0x80 | 120)), false, kDefaultMaxFrameSize, &s);  // no entry 120
  CHECK(!h.Send(s));
  CHECK_EQ(Code(Goaway(h.Read()).code), Code(ErrorCode::kCompressionError));
}

TEST(MalformedRequestHeadersAreStreamErrors) {
  Ready h;
  const std::vector<Fields> bad = {
      {{":method", "POST"}, {":scheme", "http"}, {"content-type", "application/grpc"}},  // no :path
      {{":method", "POST"}, {":scheme", "http"}, {":path", "/a/b"}, {"Content-Type", "application/grpc"}},
      {{":method", "POST"}, {":scheme", "http"}, {":path", "/a/b"}, {"connection", "keep-alive"}},
      {{":method", "POST"}, {":scheme", "http"}, {":path", "/a/b"}, {"te", "gzip"}},
      {{":method", "POST"}, {":scheme", "http"}, {":path", "/a/b"}, {":protocol", "x"}},
      {{":method", "POST"}, {":scheme", "http"}, {"content-type", "application/grpc"}, {":path", "/a/b"}},
      {{":method", "POST"}, {":method", "POST"}, {":scheme", "http"}, {":path", "/a/b"}},
  };
  uint32_t id = 1;
  for (const Fields& f : bad) {
    CHECK(h.Send(h.Headers(id, f, true)));
    auto out = h.Read();
    CHECK(HasRst(out, id, ErrorCode::kProtocolError));
    id += 2;
  }
  CHECK_EQ(h.handler.starts, 0);
  CHECK(!h.conn->done());
}

TEST(WrongContentTypeIs415AndWrongMethodIs405) {
  Ready h;
  Fields req = GrpcRequest();
  req[4].second = "application/json";
  CHECK(h.Send(h.Headers(1, req, false)));
  auto out = h.Read();
  CHECK_EQ(out.size(), 2u);
  CHECK(out[0].header(":status") == "415");
  CHECK(out[0].end_stream());
  CHECK(HasRst(out, 1, ErrorCode::kNoError));
  req = GrpcRequest();
  req[0].second = "GET";
  CHECK(h.Send(h.Headers(3, req, true)));
  out = h.Read();
  CHECK_EQ(out.size(), 1u);
  CHECK(out[0].header(":status") == "405");
  // application/grpc+proto is fine.
  req = GrpcRequest();
  req[4].second = "application/grpc+proto";
  CHECK(h.Send(h.Headers(5, req, true)));
  CHECK_EQ(h.handler.starts, 1);
}

TEST(GrpcTimeoutAndEncoding) {
  Ready h;
  Fields req = GrpcRequest();
  req.push_back({"grpc-timeout", "3S"});
  CHECK(h.Send(h.Headers(1, req, true)));
  CHECK_EQ(h.handler.last.timeout_ns, 3 * kSecond);
  req = GrpcRequest();
  req.push_back({"grpc-timeout", "123456789S"});  // 9 digits
  CHECK(h.Send(h.Headers(3, req, true)));
  auto hdrs = OfType(h.Read(), FrameType::kHeaders);
  CHECK(hdrs.back().header("grpc-status") == "13");
  CHECK_CONTAINS(hdrs.back().header("grpc-message"), "123456789S");
  req = GrpcRequest();
  req.push_back({"grpc-encoding", "gzip"});
  CHECK(h.Send(h.Headers(5, req, true)));
  hdrs = OfType(h.Read(), FrameType::kHeaders);
  CHECK(hdrs.back().header("grpc-status") == "12");
  req = GrpcRequest();
  req.push_back({"grpc-timeout", "99999999H"});  // saturates
  CHECK(h.Send(h.Headers(7, req, true)));
  CHECK(h.handler.last.timeout_ns > 0);
  CHECK_EQ(h.handler.starts, 2);
}

TEST(BadMessagesFinishTheStream) {
  ConnectionLimits l;
  l.max_message_bytes = 100;
  Ready h(l);
  // Compressed flag.
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + DataFrame(1, Msg("zz", true))));
  auto out = h.Read();
  auto hdrs = OfType(out, FrameType::kHeaders);
  CHECK_EQ(hdrs.size(), 1u);
  CHECK(hdrs[0].header("grpc-status") == "12");
  CHECK_CONTAINS(hdrs[0].header("grpc-message"), "grpc-encoding identity");
  CHECK(HasRst(out, 1, ErrorCode::kNoError));
  CHECK_EQ(h.handler.resets[1], 1);
  // Too large: the rest of its DATA is ignored.
  CHECK(h.Send(h.Headers(3, GrpcRequest(), false) + DataFrame(3, Msg(std::string(101, 'x')))));
  out = h.Read();
  hdrs = OfType(out, FrameType::kHeaders);
  CHECK(hdrs[0].header("grpc-status") == "8");
  CHECK_CONTAINS(hdrs[0].header("grpc-message"), "101");
  CHECK_CONTAINS(hdrs[0].header("grpc-message"), "100");
  CHECK(HasRst(out, 3, ErrorCode::kNoError));
  CHECK(h.Send(DataFrame(3, std::string(50, 'y'), true)));
  CHECK(OfType(h.Read(), FrameType::kRstStream).empty());
  // END_STREAM inside a message.
  CHECK(h.Send(h.Headers(5, GrpcRequest(), false) + DataFrame(5, Msg("abcdef").substr(0, 8), true)));
  hdrs = OfType(h.Read(), FrameType::kHeaders);
  CHECK(hdrs[0].header("grpc-status") == "13");
  CHECK_EQ(h.handler.resets[5], 1);
  CHECK_EQ(h.handler.messages.size(), 0u);
  // A response over the limit becomes RESOURCE_EXHAUSTED; no reset follows.
  CHECK(h.Send(h.Headers(7, GrpcRequest(), true)));
  CHECK(!h.conn->SendMessage(7, std::string(101, 'r')));
  hdrs = OfType(h.Read(), FrameType::kHeaders);
  CHECK(hdrs[0].header("grpc-status") == "8");
  CHECK(h.handler.resets.count(7) == 0);
  CHECK(!h.conn->Finish(7, 0, ""));
}

TEST(FramesOnClosedAndIdleStreams) {
  Ready h;
  // Closed on both sides: late DATA is a stream error.
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true)));
  CHECK(h.conn->Finish(1, 0, ""));
  h.Read();
  CHECK(h.Send(DataFrame(1, "x")));
  CHECK(HasRst(h.Read(), 1, ErrorCode::kStreamClosed));
  CHECK(h.Send(DataFrame(1, "x")));  // told once; now ignored
  CHECK(h.Read().empty());
  // Finished before the client finished: we sent RST_STREAM(NO_ERROR), so its
  // DATA in flight is ignored, and WINDOW_UPDATE/RST_STREAM too.
  CHECK(h.Send(h.Headers(3, GrpcRequest(), false)));
  CHECK(h.conn->Finish(3, 0, ""));
  CHECK(HasRst(h.Read(), 3, ErrorCode::kNoError));
  CHECK(h.Send(DataFrame(3, Msg("late"), true) + WindowFrame(3, 5) + RstFrame(3, ErrorCode::kCancel)));
  CHECK(h.Read().empty());
  CHECK(h.handler.log.back() == "start 3");
  // Half-closed (remote): DATA is STREAM_CLOSED and the handler is told.
  CHECK(h.Send(h.Headers(5, GrpcRequest(), true) + DataFrame(5, "x")));
  CHECK(HasRst(h.Read(), 5, ErrorCode::kStreamClosed));
  CHECK_EQ(h.handler.resets[5], 1);
  // WINDOW_UPDATE on an idle stream: connection error.
  CHECK(!h.Send(WindowFrame(9, 1)));
  const Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kProtocolError));
  CHECK_EQ(g.last_stream_id, 5u);
}

TEST(DataOnIdleStreamIsProtocolError) {
  Ready h;
  CHECK(!h.Send(DataFrame(7, "x")));
  CHECK_EQ(Code(Goaway(h.Read()).code), Code(ErrorCode::kProtocolError));
}

TEST(DataOnALongClosedStreamIsConnectionError) {
  ConnectionLimits l;
  l.max_concurrent_streams = 1000;
  Ready h(l);
  std::string s;
  for (uint32_t id = 1; id < 1200; id += 2) s += h.Headers(id, GrpcRequest(), true);
  CHECK(h.Send(s));
  for (uint32_t id = 1; id < 1200; id += 2) CHECK(h.conn->Finish(id, 0, ""));
  h.Read();
  CHECK(h.Send(DataFrame(1199, "x")));  // recently closed: stream error
  CHECK(HasRst(h.Read(), 1199, ErrorCode::kStreamClosed));
  CHECK(!h.Send(DataFrame(1, "x")));  // forgotten
  CHECK_EQ(Code(Goaway(h.Read()).code), Code(ErrorCode::kStreamClosed));
}

TEST(NonIncreasingStreamIdIsProtocolError) {
  Ready h;
  CHECK(h.Send(h.Headers(5, GrpcRequest(), false)));
  CHECK(!h.Send(h.Headers(3, GrpcRequest(), false)));
  const Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kProtocolError));
  CHECK_EQ(g.last_stream_id, 5u);
  CHECK_EQ(h.handler.resets[5], 1);
  // Even ids are never a client's.
  Ready h2;
  CHECK(!h2.Send(h2.Headers(2, GrpcRequest(), false)));
  CHECK_EQ(Code(Goaway(h2.Read()).code), Code(ErrorCode::kProtocolError));
}

TEST(PeerResetCallsOnStreamReset) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + RstFrame(1, ErrorCode::kCancel)));
  CHECK_EQ(h.handler.resets[1], 1);
  CHECK_EQ(h.conn->stats().streams_reset_by_peer, 1u);
  CHECK(!h.conn->SendMessage(1, "x"));
  CHECK(h.Read().empty());  // nothing sent in reply to RST_STREAM
  // RST_STREAM on an idle stream is a connection error.
  CHECK(!h.Send(RstFrame(11, ErrorCode::kCancel)));
  CHECK_EQ(Code(Goaway(h.Read()).code), Code(ErrorCode::kProtocolError));
}

TEST(ResetAfterFinishDoesNotCallOnStreamReset) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true)));
  CHECK(h.conn->SendMessage(1, std::string(70000, 'a')));  // waits for window
  CHECK(h.conn->Finish(1, 0, ""));
  CHECK_EQ(h.conn->open_streams(), 1u);
  CHECK(h.Send(RstFrame(1, ErrorCode::kCancel)));
  CHECK(h.handler.resets.empty());
  CHECK_EQ(h.conn->open_streams(), 0u);
  // Nor does a connection error with a finished stream waiting for window.
  CHECK(h.Send(h.Headers(3, GrpcRequest(), true) + h.Headers(5, GrpcRequest(), true)));
  CHECK(h.conn->SendMessage(3, std::string(70000, 'a')));
  CHECK(h.conn->Finish(3, 0, ""));
  CHECK(!h.Send(DataFrame(99, "x")));
  CHECK(h.handler.resets.count(3) == 0);
  CHECK_EQ(h.handler.resets[5], 1);
}

TEST(NoCallbacksAfterFinishWhileDataWaits) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false)));
  CHECK(h.conn->SendMessage(1, std::string(70000, 'a')));  // more than the client's window
  CHECK(h.conn->Finish(1, 0, ""));
  CHECK_EQ(h.conn->open_streams(), 1u);
  // The client goes on sending: nothing reaches the handler any more.
  CHECK(h.Send(DataFrame(1, Msg("late")) + DataFrame(1, Msg("later"), true)));
  CHECK(h.handler.log == std::vector<std::string>{"start 1"});
  h.Read();
  CHECK(h.Send(WindowFrame(0, 10000) + WindowFrame(1, 10000)));
  auto out = h.Read();
  CHECK_EQ(DataOf(out, 1).size(), 70005u - 65535u);
  CHECK_EQ(OfType(out, FrameType::kHeaders).size(), 1u);
  CHECK(OfType(out, FrameType::kRstStream).empty());  // the client had finished by then
  CHECK_EQ(h.conn->open_streams(), 0u);
  CHECK(h.handler.resets.empty());
}

TEST(HandlerResetStreamSendsRstWithoutCallback) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false)));
  h.conn->ResetStream(1, ErrorCode::kCancel);
  CHECK(HasRst(h.Read(), 1, ErrorCode::kCancel));
  CHECK(h.handler.resets.empty());
  CHECK_EQ(h.conn->open_streams(), 0u);
  h.conn->ResetStream(1, ErrorCode::kCancel);  // gone: nothing
  CHECK(h.Read().empty());
}

// ---------------------------------------------------------------- re-entrancy

TEST(FinishFromOnStreamStart) {
  Ready h;
  h.handler.on_start = [&](const StreamStart& s) {
    CHECK(h.conn->Finish(s.stream_id, 12, "unknown method " + std::string(s.path)));
    CHECK(!h.conn->Finish(s.stream_id, 0, ""));
  };
  CHECK(h.Send(h.Headers(1, GrpcRequest("/no.Such/Method"), false) + DataFrame(1, Msg("body"), true)));
  auto out = h.Read();
  const auto hdrs = OfType(out, FrameType::kHeaders);
  CHECK_EQ(hdrs.size(), 1u);
  CHECK(hdrs[0].header(":status") == "200");  // trailers-only
  CHECK(hdrs[0].header("grpc-status") == "12");
  CHECK(hdrs[0].header("grpc-message") == "unknown method /no.Such/Method");
  CHECK(HasRst(out, 1, ErrorCode::kNoError));
  CHECK(h.handler.log == std::vector<std::string>{"start 1"});  // no message, half-close or reset
  // With END_STREAM on the HEADERS: no RST, no half-close after the Finish.
  CHECK(h.Send(h.Headers(3, GrpcRequest(), true)));
  out = h.Read();
  CHECK_EQ(out.size(), 1u);
  CHECK(h.handler.log.back() == "start 3 end");
}

TEST(FinishFromOnStreamMessageStopsDelivery) {
  Ready h;
  h.handler.on_message = [&](uint32_t id, std::string_view m) {
    CHECK(h.conn->SendMessage(id, "echo:" + std::string(m)));
    CHECK(h.conn->Finish(id, 0, ""));
    CHECK(!h.conn->SendMessage(id, "more"));
  };
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + DataFrame(1, Msg("a") + Msg("b")) + DataFrame(1, Msg("c"), true)));
  CHECK(h.handler.log == (std::vector<std::string>{"start 1", "msg 1 a"}));
  auto out = h.Read();
  CHECK(DataOf(out, 1) == Msg("echo:a"));
  CHECK(HasRst(out, 1, ErrorCode::kNoError));
  CHECK(h.handler.resets.empty());
}

TEST(ResetAndOtherStreamsFromCallbacks) {
  Ready h;
  // Resetting itself from OnStreamMessage, and finishing another stream.
  h.handler.on_message = [&](uint32_t id, std::string_view) {
    if (id == 3) {
      h.conn->ResetStream(3, ErrorCode::kCancel);
      CHECK(h.conn->Finish(1, 0, "from 3"));
    }
  };
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + h.Headers(3, GrpcRequest(), false) +
               DataFrame(3, Msg("x") + Msg("y"), true)));
  CHECK(h.handler.log == (std::vector<std::string>{"start 1", "start 3", "msg 3 x"}));
  auto out = h.Read();
  CHECK(HasRst(out, 3, ErrorCode::kCancel));
  CHECK(HasRst(out, 1, ErrorCode::kNoError));
  CHECK_EQ(h.conn->open_streams(), 0u);
  // During a connection error's resets the connection refuses everything.
  CHECK(h.Send(h.Headers(5, GrpcRequest(), false) + h.Headers(7, GrpcRequest(), false)));
  h.handler.on_reset = [&](uint32_t) {
    CHECK(!h.conn->SendMessage(5, "x"));
    CHECK(!h.conn->Finish(7, 0, ""));
    h.conn->Shutdown();
  };
  CHECK(!h.Send(DataFrame(101, "x")));
  CHECK_EQ(h.handler.resets[5], 1);
  CHECK_EQ(h.handler.resets[7], 1);
  CHECK_EQ(OfType(h.Read(), FrameType::kGoaway).size(), 1u);
}

TEST(HandlerCallsInsideTickResets) {
  ConnectionLimits l;
  l.stream_read_timeout_ns = kSecond;
  Ready h(l);
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + h.Headers(3, GrpcRequest(), false)));
  h.handler.on_reset = [&](uint32_t id) {
    if (id == 1) h.conn->ResetStream(3, ErrorCode::kCancel);
  };
  h.now += kSecond;
  CHECK(h.conn->Tick(h.now));
  CHECK_EQ(h.handler.reset_count(), 1);  // 3 was reset by the handler: not told
  CHECK_EQ(h.conn->open_streams(), 0u);
}

// ---------------------------------------------------------------- floods

TEST(ContinuationFloodHitsTheFieldBlockLimit) {
  ConnectionLimits l;
  l.max_field_block_bytes = 16 * 1024;
  Ready h(l);
  std::string s;
  AppendFrame(FrameType::kHeaders, 0, 1, "", &s);
  for (int i = 0; i < 200; ++i) AppendFrame(FrameType::kContinuation, 0, 1, std::string(100, 'a'), &s);
  CHECK(!h.Send(s));
  const Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kEnhanceYourCalm));
  CHECK_CONTAINS(g.payload, "field block");
  CHECK_EQ(h.handler.starts, 0);
  // Empty CONTINUATIONs are charged as control frames too.
  ConnectionLimits l2;
  l2.control_frame_burst = 100;
  Ready h2(l2);
  s.clear();
  AppendFrame(FrameType::kHeaders, 0, 1, "", &s);
  for (int i = 0; i < 200; ++i) AppendFrame(FrameType::kContinuation, 0, 1, "", &s);
  CHECK(!h2.Send(s));
  CHECK_CONTAINS(Goaway(h2.Read()).payload, "empty CONTINUATION");
}

TEST(PingFlood) {
  Ready h;
  std::string s;
  for (int i = 0; i < 2100; ++i) s += PingFrame(static_cast<uint8_t>(i));
  CHECK(!h.Send(s));
  auto out = h.Read();
  const Out g = Goaway(out);
  CHECK_EQ(Code(g.code), Code(ErrorCode::kEnhanceYourCalm));
  CHECK_CONTAINS(g.payload, "PING");
  CHECK_CONTAINS(g.payload, "more than 2000 in a burst");
  // The handshake used 2 tokens (SETTINGS, its ACK).
  CHECK_EQ(OfType(out, FrameType::kPing).size(), 1998u);
}

TEST(PingsRefillOverTime) {
  ConnectionLimits l;
  l.control_frame_burst = 10;
  l.control_frames_per_s = 10;
  Ready h(l);
  for (int round = 0; round < 5; ++round) {
    std::string s;
    for (int i = 0; i < 5; ++i) s += PingFrame(1);
    CHECK(h.Send(s));
    h.now += kSecond;
  }
  std::string s;
  for (int i = 0; i < 11; ++i) s += PingFrame(1);
  CHECK(!h.Send(s));
}

// A busy client on one connection (grpcio: a WINDOW_UPDATE and now and then a PING
// with every answer) is never taken for a flood: its calls pay for its control frames.
TEST(ControlFramesThatRideOnCallsAreNoFlood) {
  ConnectionLimits l;
  l.control_frame_burst = 100;
  l.control_frames_per_s = 1;  // no refill to speak of: only the calls earn tokens
  Ready h(l);
  for (uint32_t i = 0; i < 2000; ++i) {
    const uint32_t id = 2 * i + 1;
    std::string s = h.Headers(id, GrpcRequest(), false) + DataFrame(id, Msg("x"), true);
    s += WindowFrame(0, 100) + WindowFrame(0, 100) + WindowFrame(0, 100) + PingFrame(1);
    CHECK(h.Send(s));
    CHECK(h.conn->Finish(id, 0, ""));
    h.Read();
  }
  // More control frames per call than a call earns: the bucket empties in the end.
  bool refused = false;
  for (uint32_t i = 2000; i < 2200 && !refused; ++i) {
    const uint32_t id = 2 * i + 1;
    std::string s = h.Headers(id, GrpcRequest(), false) + DataFrame(id, Msg("x"), true);
    for (int k = 0; k < 6; ++k) s += PingFrame(2);
    refused = !h.Send(s);
    if (!refused) {
      CHECK(h.conn->Finish(id, 0, ""));
      h.Read();
    }
  }
  CHECK(refused);
}

TEST(SettingsFlood) {
  Ready h;
  std::string s;
  for (int i = 0; i < 2100; ++i) s += SettingsFrame({{static_cast<uint16_t>(SettingId::kMaxFrameSize), 16384}});
  CHECK(!h.Send(s));
  const Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kEnhanceYourCalm));
  CHECK_CONTAINS(g.payload, "SETTINGS");
  CHECK_CONTAINS(g.payload, "control_frame_burst");
}

TEST(UnknownFrameFlood) {
  ConnectionLimits l;
  l.control_frame_burst = 50;
  Ready h(l);
  std::string s;
  for (int i = 0; i < 60; ++i) AppendFrame(static_cast<FrameType>(0x42), 0, 0, "ext", &s);
  CHECK(!h.Send(s));
  const std::string debug = Goaway(h.Read()).payload;
  CHECK_CONTAINS(debug, "unknown frame type");
}

TEST(RapidReset) {
  ConnectionLimits l;
  l.reset_burst = 50;
  l.resets_per_s = 1;
  Ready h(l);
  std::string s;
  for (uint32_t id = 1; id < 400; id += 2) s += h.Headers(id, GrpcRequest(), false) + RstFrame(id, ErrorCode::kCancel);
  CHECK(!h.Send(s));
  const Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kEnhanceYourCalm));
  CHECK_CONTAINS(g.payload, "reset_burst");
  CHECK_CONTAINS(g.payload, "50");
  CHECK_EQ(h.handler.starts, 51);
  CHECK_EQ(h.handler.reset_count(), 51);
  for (const auto& r : h.handler.resets) CHECK_EQ(r.second, 1);
}

TEST(ResetAfterOurAnswerIsNotRapidReset) {
  ConnectionLimits l;
  l.reset_burst = 5;
  l.resets_per_s = 1;
  Ready h(l);
  h.handler.on_message = [&](uint32_t id, std::string_view) {
    CHECK(h.conn->SendMessage(id, std::string(70000, 'a')));  // stays open, waiting for window
    CHECK(h.conn->Finish(id, 0, ""));
  };
  for (uint32_t id = 1; id < 60; id += 2) {
    CHECK(h.Send(h.Headers(id, GrpcRequest(), false) + DataFrame(id, Msg("q"), true) +
                 RstFrame(id, ErrorCode::kCancel)));
  }
  CHECK(!h.conn->done());
}

// ---------------------------------------------------------------- timeouts

TEST(StreamReadTimeoutExpiresThousandsOfStreams) {
  ConnectionLimits l;
  l.max_concurrent_streams = 5000;
  l.stream_read_timeout_ns = 2 * kSecond;
  Ready h(l);
  const int64_t t0 = h.now;
  std::string s;
  for (uint32_t id = 1; id < 6000; id += 2) s += h.Headers(id, GrpcRequest(), false);
  CHECK(h.Send(s));
  h.now += kSecond;
  CHECK(h.Send(h.Headers(6001, GrpcRequest(), false) + DataFrame(6001, Msg("complete"))));  // not to expire
  CHECK(h.Send(h.Headers(6003, GrpcRequest(), false)));
  CHECK_EQ(h.conn->open_streams(), 3002u);
  CHECK_EQ(h.conn->next_deadline_ns(), t0 + 2 * kSecond);
  CHECK(h.conn->Tick(t0 + 2 * kSecond - 1));
  CHECK_EQ(h.handler.reset_count(), 0);
  CHECK(h.conn->Tick(t0 + 2 * kSecond));
  CHECK_EQ(h.handler.reset_count(), 3000);
  auto out = h.Read();
  CHECK_EQ(OfType(out, FrameType::kRstStream).size(), 3000u);
  CHECK(HasRst(out, 1, ErrorCode::kCancel));
  CHECK_EQ(h.conn->open_streams(), 2u);
  CHECK_EQ(h.conn->next_deadline_ns(), h.now + 2 * kSecond);
  CHECK(h.conn->Tick(h.now + 2 * kSecond));
  CHECK_EQ(h.handler.resets[6003], 1);
  CHECK(h.handler.resets.count(6001) == 0);
  CHECK_EQ(h.conn->open_streams(), 1u);
}

TEST(IdleTimeout) {
  ConnectionLimits l;
  l.idle_timeout_ns = 10 * kSecond;
  Ready h(l);
  CHECK_EQ(h.conn->next_deadline_ns(), h.now + 10 * kSecond);
  CHECK(h.conn->Tick(h.now + 10 * kSecond - 1));
  CHECK(h.Read().empty());
  CHECK(!h.conn->Tick(h.now + 10 * kSecond));
  const Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kNoError));
  CHECK_CONTAINS(g.payload, "idle_timeout_ns");
  CHECK(h.conn->done());
  // An open stream keeps a connection from idling.
  Ready h2(l);
  CHECK(h2.Send(h2.Headers(1, GrpcRequest(), true)));
  CHECK(h2.conn->Tick(h2.now + 100 * kSecond));
  CHECK(!h2.conn->done());
}

TEST(PrefaceTimeout) {
  ConnectionLimits l;
  l.preface_timeout_ns = 3 * kSecond;
  Harness h(l);
  h.Read();
  CHECK_EQ(h.conn->next_deadline_ns(), h.now + 3 * kSecond);
  CHECK(h.Send(std::string(kClientPreface)));  // no SETTINGS yet
  CHECK(h.conn->Tick(h.now + 3 * kSecond - 1));
  CHECK(!h.conn->Tick(h.now + 3 * kSecond));
  const std::string debug = Goaway(h.Read()).payload;
  CHECK_CONTAINS(debug, "preface_timeout_ns");
}

// ---------------------------------------------------------------- lifecycle

TEST(ShutdownIsGracefulAndThenDone) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false)));
  h.conn->Shutdown();
  Out g = Goaway(h.Read());
  CHECK_EQ(Code(g.code), Code(ErrorCode::kNoError));
  CHECK_EQ(g.last_stream_id, 1u);
  CHECK(h.Send(h.Headers(3, GrpcRequest(), true)));
  CHECK(HasRst(h.Read(), 3, ErrorCode::kRefusedStream));
  CHECK_EQ(h.conn->stats().streams_refused, 1u);
  CHECK(h.Send(DataFrame(1, Msg("still served"), true)));
  CHECK(h.handler.log.back() == "half 1");
  CHECK(!h.conn->done());
  CHECK(h.conn->Finish(1, 0, ""));
  CHECK(h.conn->done());
  CHECK(!h.Send(PingFrame(1)));
  CHECK(!h.conn->Tick(h.now));
}

TEST(PeerGoawayFinishesWhenStreamsDo) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true)));
  std::string g;
  AppendGoaway(0, ErrorCode::kNoError, "", &g);
  CHECK(h.Send(g));
  CHECK(!h.conn->done());
  CHECK(h.Send(h.Headers(3, GrpcRequest(), true)));
  CHECK(HasRst(h.Read(), 3, ErrorCode::kRefusedStream));
  CHECK(h.conn->Finish(1, 0, ""));
  CHECK(h.conn->done());
}

TEST(AbortAndDestructorTellTheHandler) {
  Recorder r;
  {
    ConnectionLimits l;
    H2Connection c(l, &r, 0);
    std::string s(kClientPreface);
    s += SettingsFrame({});
    HpackEncoder enc;
    std::vector<HpackField> hf;
    const Fields req = GrpcRequest();
    for (const auto& f : req) hf.push_back(HpackField{f.first, f.second, false});
    std::string b;
    enc.EncodeBlock(hf, &b);
    AppendHeaders(1, b, false, kDefaultMaxFrameSize, &s);
    CHECK(c.Receive(reinterpret_cast<const uint8_t*>(s.data()), s.size(), 0));
    CHECK_EQ(r.starts, 1);
  }
  CHECK_EQ(r.resets[1], 1);
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), false) + h.Headers(3, GrpcRequest(), true)));
  CHECK(h.conn->Finish(3, 0, ""));
  h.conn->Abort();
  CHECK(h.conn->done());
  CHECK_EQ(h.handler.resets[1], 1);
  CHECK(h.handler.resets.count(3) == 0);
  h.conn.reset();  // no second reset
  CHECK_EQ(h.handler.reset_count(), 1);
}

TEST(SlowReaderStopsReading) {
  ConnectionLimits l;
  l.max_pending_output_bytes = 1000;
  Ready h(l);
  std::string s;
  for (int i = 0; i < 100; ++i) s += PingFrame(1);  // 100 ACKs of 17 bytes
  CHECK(h.Send(s));
  CHECK(!h.conn->wants_read());
  CHECK(h.conn->output().size() > 1000);
  h.conn->ConsumeOutput(h.conn->output().size() - 1000);
  CHECK(h.conn->wants_read());
}

TEST(MemoryDoesNotGrowWithStreamsServed) {
  Ready h;
  h.handler.on_half_close = [&](uint32_t id) {
    CHECK(h.conn->SendMessage(id, "answer"));
    CHECK(h.conn->Finish(id, 0, ""));
  };
  size_t after_warmup = 0;
  for (uint32_t id = 1; id < 40000; id += 2) {
    CHECK(h.Send(h.Headers(id, GrpcRequest(), false) + DataFrame(id, Msg("question"), true)));
    CHECK_EQ(DataOf(h.Read(), id).size(), 11u);
    if (id % 200 == 199) CHECK(h.Send(WindowFrame(0, 100 * 11)));  // as a client would, in batches
    if (id == 201) after_warmup = h.conn->memory_bytes();
  }
  CHECK_EQ(h.handler.starts, 20000);
  CHECK(h.conn->memory_bytes() <= after_warmup);
  CHECK(h.conn->memory_bytes() < 64 * 1024);
}

TEST(StatsCount) {
  Ready h;
  CHECK(h.Send(h.Headers(1, GrpcRequest(), true) + PingFrame(1)));
  const ConnectionStats& st = h.conn->stats();
  CHECK_EQ(st.frames_received, 4u);  // SETTINGS, ACK, HEADERS, PING
  CHECK_EQ(st.streams_opened, 1u);
  CHECK_EQ(st.protocol_errors, 0u);
}

}  // namespace

TEST_MAIN()
