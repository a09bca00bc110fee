// Tests of the HTTP/2 frame layer (h2_frame.h), the flow-control window
// (h2_flow.h) and gRPC message framing (grpc_message.h). Expected bytes are
// written by hand from RFC 9113's frame layouts (section 4.1 and 6).
#include <cstdint>
#include <string>
#include <vector>

#include "check.h"
#include "steadyserve/grpc_message.h"
#include "steadyserve/h2_flow.h"
#include "steadyserve/h2_frame.h"

using namespace steadyserve;
using namespace steadyserve::h2;

namespace {

std::string B(std::initializer_list<int> bytes) {
  std::string s;
  for (int b : bytes) s.push_back(static_cast<char>(b));
  return s;
}

int Code(ErrorCode c) { return static_cast<int>(c); }
int Type(FrameType t) { return static_cast<int>(t); }

// A frame with its views copied out.
struct Got {
  FrameHeader header;
  std::string payload;
  std::vector<Setting> settings;
  bool has_priority = false;
  PrioritySpec priority;
  ErrorCode error_code = ErrorCode::kNoError;
  uint32_t last_stream_id = 0;
  uint32_t window_increment = 0;
  uint32_t promised_stream_id = 0;

  bool operator==(const Got& o) const {
    bool same_settings = settings.size() == o.settings.size();
    for (size_t i = 0; same_settings && i < settings.size(); ++i) {
      same_settings = settings[i].id == o.settings[i].id && settings[i].value == o.settings[i].value;
    }
    return header.length == o.header.length && header.type == o.header.type && header.flags == o.header.flags &&
           header.stream_id == o.header.stream_id && payload == o.payload && same_settings &&
           has_priority == o.has_priority && priority.exclusive == o.priority.exclusive &&
           priority.stream_dependency == o.priority.stream_dependency && priority.weight == o.priority.weight &&
           error_code == o.error_code && last_stream_id == o.last_stream_id &&
           window_increment == o.window_increment && promised_stream_id == o.promised_stream_id;
  }
};

Got Copy(const Frame& f) {
  Got g;
  g.header = f.header;
  g.payload = std::string(f.payload);
  g.settings.assign(f.settings, f.settings + f.num_settings);
  g.has_priority = f.has_priority;
  g.priority = f.priority;
  g.error_code = f.error_code;
  g.last_stream_id = f.last_stream_id;
  g.window_increment = f.window_increment;
  g.promised_stream_id = f.promised_stream_id;
  return g;
}

struct ReadOutcome {
  std::vector<Got> frames;
  std::vector<H2Error> errors;  // stream errors, then at most one connection error
  size_t leftover = 0;          // bytes not consumed at the end
};

// Feeds `input` in pieces of `chunk` bytes (0: all at once) the way a
// connection would: append to a buffer, read frames, erase what was consumed.
ReadOutcome ReadChunked(FrameReader* reader, const std::string& input, size_t chunk) {
  ReadOutcome out;
  std::string buf;
  size_t fed = 0;
  while (fed < input.size() || fed == 0) {
    const size_t n = chunk == 0 ? input.size() : std::min(chunk, input.size() - fed);
    buf.append(input, fed, n);
    fed += n;
    size_t pos = 0;
    for (;;) {
      size_t used = 0;
      Frame f;
      H2Error e;
      const auto r = reader->Next(std::string_view(buf).substr(pos), &used, &f, &e);
      pos += used;
      if (r == FrameReader::Result::kNeedMore) break;
      if (r == FrameReader::Result::kError) {
        out.errors.push_back(e);
        if (e.connection()) {
          out.leftover = buf.size() - pos;
          return out;
        }
        continue;
      }
      out.frames.push_back(Copy(f));
    }
    buf.erase(0, pos);
    if (input.empty()) break;
  }
  out.leftover = buf.size();
  return out;
}

ReadOutcome ReadAll(FrameReader* reader, const std::string& input) { return ReadChunked(reader, input, 0); }

std::string Header(uint32_t length, int type, int flags, uint32_t stream) {
  std::string out;
  FrameHeader h;
  h.length = length;
  h.type = static_cast<FrameType>(type);
  h.flags = static_cast<uint8_t>(flags);
  h.stream_id = stream;
  AppendFrameHeader(h, &out);
  return out;
}

// The client preface and an empty SETTINGS frame.
std::string Preface() { return std::string(kClientPreface) + B({0, 0, 0, 4, 0, 0, 0, 0, 0}); }

// Reads Preface() + `frames` on a fresh server reader and expects exactly one
// error, checked against code, scope, stream and a piece of the message.
void ExpectError(const std::string& frames, ErrorCode code, bool connection, uint32_t stream, const char* needle,
                 FrameReader::Options options = FrameReader::Options()) {
  FrameReader reader(options);
  const std::string input = (options.server ? Preface() : B({0, 0, 0, 4, 0, 0, 0, 0, 0})) + frames;
  ReadOutcome r = ReadAll(&reader, input);
  CHECK_EQ(r.errors.size(), 1u);
  const H2Error& e = r.errors[0];
  if (Code(e.code) != Code(code)) std::fprintf(stderr, "got %s: %s\n", ErrorCodeName(e.code), e.message.c_str());
  CHECK_EQ(Code(e.code), Code(code));
  CHECK_EQ(e.connection(), connection);
  CHECK_EQ(e.stream_id, stream);
  CHECK_CONTAINS(e.message, needle);
  CHECK_EQ(reader.failed(), connection);
}

}  // namespace

// ---- Layouts ----

TEST(FrameHeaderLayout) {
  FrameHeader h;
  h.length = 0x123456;
  h.type = FrameType::kHeaders;
  h.flags = 0x25;
  h.stream_id = 0x7fffffff;
  std::string out;
  AppendFrameHeader(h, &out);
  CHECK(out == B({0x12, 0x34, 0x56, 0x01, 0x25, 0x7f, 0xff, 0xff, 0xff}));
  // The reserved bit is dropped when read.
  const std::string wire = B({0x00, 0x00, 0x05, 0x08, 0x00, 0x80, 0x00, 0x00, 0x03});
  const FrameHeader p = ParseFrameHeader(reinterpret_cast<const uint8_t*>(wire.data()));
  CHECK_EQ(p.length, 5u);
  CHECK_EQ(Type(p.type), Type(FrameType::kWindowUpdate));
  CHECK_EQ(p.stream_id, 3u);
  // ... and never written.
  h.stream_id = 0x80000001u;
  out.clear();
  AppendFrameHeader(h, &out);
  CHECK(out.substr(5) == B({0, 0, 0, 1}));
}

TEST(ControlFrameLayouts) {
  std::string out;
  AppendSettings({{0x4, 0xffff}, {0x5, 16384}}, &out);
  CHECK(out == B({0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0xff, 0xff, 0, 5, 0, 0, 0x40, 0}));
  out.clear();
  AppendSettingsAck(&out);
  CHECK(out == B({0, 0, 0, 4, 1, 0, 0, 0, 0}));
  out.clear();
  const uint8_t opaque[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  AppendPingAck(opaque, &out);
  CHECK(out == B({0, 0, 8, 6, 1, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}));
  out.clear();
  AppendWindowUpdate(3, 65536, &out);
  CHECK(out == B({0, 0, 4, 8, 0, 0, 0, 0, 3, 0, 1, 0, 0}));
  out.clear();
  AppendRstStream(5, ErrorCode::kCancel, &out);
  CHECK(out == B({0, 0, 4, 3, 0, 0, 0, 0, 5, 0, 0, 0, 8}));
  out.clear();
  AppendGoaway(7, ErrorCode::kEnhanceYourCalm, "hi", &out);
  CHECK(out == B({0, 0, 10, 7, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0x0b, 'h', 'i'}));
}

TEST(HeadersAndDataLayouts) {
  std::string out;
  AppendHeaders(1, "abc", /*end_stream=*/true, kDefaultMaxFrameSize, &out);
  CHECK(out == B({0, 0, 3, 1, 0x05, 0, 0, 0, 1, 'a', 'b', 'c'}));
  out.clear();
  CHECK_EQ(AppendData(3, "xy", true, kDefaultMaxFrameSize, 100, &out), 2u);
  CHECK(out == B({0, 0, 2, 0, 0x01, 0, 0, 0, 3, 'x', 'y'}));
  // Writes coalesce: a second frame lands after the first.
  AppendWindowUpdate(0, 1, &out);
  CHECK_EQ(out.size(), 11u + 13u);
}

TEST(NamesOfTypesAndCodes) {
  CHECK(std::string(FrameTypeName(FrameType::kWindowUpdate)) == "WINDOW_UPDATE");
  CHECK(std::string(FrameTypeName(static_cast<FrameType>(0xfa))) == "UNKNOWN");
  CHECK(std::string(ErrorCodeName(ErrorCode::kFlowControlError)) == "FLOW_CONTROL_ERROR");
  CHECK(std::string(ErrorCodeName(ErrorCode::kHttp11Required)) == "HTTP_1_1_REQUIRED");
  CHECK(std::string(ErrorCodeName(static_cast<ErrorCode>(0x99))) == "UNKNOWN");
}

// ---- Round trips ----

namespace {

// Every frame type a server receives, padding and priority included, with an
// extension frame in between, as a client would send it.
std::string ClientStream() {
  std::string in(kClientPreface);
  AppendSettings({{0x1, 4096}, {0x2, 0}, {0x3, 100}, {0x4, 1 << 20}, {0x5, 1 << 20}, {0x6, 8192}, {0x99, 7}}, &in);
  AppendSettingsAck(&in);
  // HEADERS, PADDED | PRIORITY | END_HEADERS: pad 2, exclusive dep on 0, weight 15.
  in += Header(1 + 5 + 3 + 2, 1, 0x08 | 0x20 | 0x04, 1) + B({2, 0x80, 0, 0, 0, 15, 'a', 'b', 'c', 0, 0});
  // DATA, PADDED | END_STREAM: pad 3.
  in += Header(1 + 4 + 3, 0, 0x08 | 0x01, 1) + B({3, 'd', 'a', 't', 'a', 0, 0, 0});
  in += Header(5, 2, 0, 3) + B({0, 0, 0, 1, 200});  // PRIORITY
  in += Header(4, 0xfa, 0xff, 9) + B({1, 2, 3, 4});  // an extension frame: skipped
  AppendRstStream(3, ErrorCode::kCancel, &in);
  const uint8_t opaque[8] = {9, 8, 7, 6, 5, 4, 3, 2};
  AppendPing(opaque, false, &in);
  AppendWindowUpdate(0, 1000, &in);
  AppendWindowUpdate(1, kMaxWindowSize, &in);
  AppendHeaders(5, std::string(40000, 'h'), false, kDefaultMaxFrameSize, &in);  // HEADERS + 2 CONTINUATION
  AppendData(5, "", true, kDefaultMaxFrameSize, 0, &in);
  AppendGoaway(5, ErrorCode::kNoError, "bye", &in);
  return in;
}

void CheckClientStream(const ReadOutcome& r) {
  CHECK_EQ(r.errors.size(), 0u);
  CHECK_EQ(r.leftover, 0u);
  CHECK_EQ(r.frames.size(), 14u);
  const Got& s = r.frames[0];
  CHECK_EQ(Type(s.header.type), Type(FrameType::kSettings));
  CHECK_EQ(s.settings.size(), 7u);
  CHECK_EQ(s.settings[3].id, 0x4);
  CHECK_EQ(s.settings[3].value, 1u << 20);
  CHECK_EQ(s.settings[6].id, 0x99);
  CHECK_EQ(s.payload.size(), 42u);
  CHECK(r.frames[1].header.has_flag(flags::kAck));
  CHECK_EQ(r.frames[1].settings.size(), 0u);

  const Got& h = r.frames[2];
  CHECK_EQ(Type(h.header.type), Type(FrameType::kHeaders));
  CHECK(h.payload == "abc");
  CHECK(h.has_priority);
  CHECK(h.priority.exclusive);
  CHECK_EQ(h.priority.stream_dependency, 0u);
  CHECK_EQ(h.priority.weight, 15);

  const Got& d = r.frames[3];
  CHECK_EQ(Type(d.header.type), Type(FrameType::kData));
  CHECK(d.payload == "data");
  CHECK_EQ(d.header.length, 8u);  // what flow control counts
  CHECK(d.header.has_flag(flags::kEndStream));

  const Got& p = r.frames[4];
  CHECK_EQ(Type(p.header.type), Type(FrameType::kPriority));
  CHECK(p.has_priority && !p.priority.exclusive);
  CHECK_EQ(p.priority.stream_dependency, 1u);
  CHECK_EQ(p.priority.weight, 200);
  CHECK(p.payload.empty());

  CHECK_EQ(Type(r.frames[5].header.type), Type(FrameType::kRstStream));
  CHECK_EQ(Code(r.frames[5].error_code), Code(ErrorCode::kCancel));
  CHECK_EQ(r.frames[5].header.stream_id, 3u);

  CHECK_EQ(Type(r.frames[6].header.type), Type(FrameType::kPing));
  CHECK(r.frames[6].payload == B({9, 8, 7, 6, 5, 4, 3, 2}));
  CHECK(!r.frames[6].header.has_flag(flags::kAck));

  CHECK_EQ(r.frames[7].window_increment, 1000u);
  CHECK_EQ(r.frames[7].header.stream_id, 0u);
  CHECK_EQ(r.frames[8].window_increment, kMaxWindowSize);

  std::string block;
  for (int i = 9; i <= 11; ++i) block += r.frames[i].payload;
  CHECK(block == std::string(40000, 'h'));
  CHECK_EQ(Type(r.frames[9].header.type), Type(FrameType::kHeaders));
  CHECK(!r.frames[9].header.has_flag(flags::kEndHeaders));
  CHECK(!r.frames[9].header.has_flag(flags::kEndStream));
  CHECK_EQ(Type(r.frames[10].header.type), Type(FrameType::kContinuation));
  CHECK_EQ(Type(r.frames[11].header.type), Type(FrameType::kContinuation));
  CHECK(r.frames[11].header.has_flag(flags::kEndHeaders));
  CHECK_EQ(r.frames[9].payload.size(), 16384u);
  CHECK_EQ(r.frames[11].payload.size(), 40000u - 2 * 16384u);

  CHECK_EQ(Type(r.frames[12].header.type), Type(FrameType::kData));
  CHECK(r.frames[12].payload.empty() && r.frames[12].header.has_flag(flags::kEndStream));

  const Got& g = r.frames[13];
  CHECK_EQ(Type(g.header.type), Type(FrameType::kGoaway));
  CHECK_EQ(g.last_stream_id, 5u);
  CHECK_EQ(Code(g.error_code), Code(ErrorCode::kNoError));
  CHECK(g.payload == "bye");
}

}  // namespace

TEST(RoundTripEveryFrameType) {
  FrameReader reader;
  const ReadOutcome r = ReadAll(&reader, ClientStream());
  CheckClientStream(r);
  CHECK(reader.preface_done());
}

TEST(OneByteAtATimeYieldsTheSameFrames) {
  const std::string in = ClientStream();
  FrameReader whole;
  const ReadOutcome all = ReadAll(&whole, in);
  for (size_t chunk : {1, 2, 7, 9, 24, 1000}) {
    FrameReader reader;
    const ReadOutcome r = ReadChunked(&reader, in, chunk);
    CheckClientStream(r);
    CHECK_EQ(r.frames.size(), all.frames.size());
    for (size_t i = 0; i < r.frames.size(); ++i) CHECK(r.frames[i] == all.frames[i]);
  }
}

TEST(PartialInputNeedsMoreAndConsumesNothing) {
  FrameReader reader;
  size_t used = 99;
  Frame f;
  H2Error e;
  CHECK(reader.Next("PRI * HT", &used, &f, &e) == FrameReader::Result::kNeedMore);
  CHECK_EQ(used, 0u);
  CHECK(reader.Next("", &used, &f, &e) == FrameReader::Result::kNeedMore);
  std::string in = Preface();
  // The preface is consumed on its own; the SETTINGS header then waits for more.
  CHECK(reader.Next(std::string_view(in).substr(0, 24 + 5), &used, &f, &e) == FrameReader::Result::kNeedMore);
  CHECK_EQ(used, 24u);
  CHECK(reader.Next(std::string_view(in).substr(24), &used, &f, &e) == FrameReader::Result::kFrame);
  CHECK_EQ(used, 9u);
  CHECK(reader.preface_done());
}

TEST(PushPromiseOnTheClientSide) {
  FrameReader::Options o;
  o.server = false;
  FrameReader reader(o);
  std::string in = B({0, 0, 0, 4, 0, 0, 0, 0, 0});  // the server's preface: SETTINGS, no magic
  // PUSH_PROMISE PADDED | END_HEADERS on stream 1 promising stream 2, pad 1.
  in += Header(1 + 4 + 2 + 1, 5, 0x08 | 0x04, 1) + B({1, 0, 0, 0, 2, 'h', 'b', 0});
  const ReadOutcome r = ReadAll(&reader, in);
  CHECK_EQ(r.errors.size(), 0u);
  CHECK_EQ(r.frames.size(), 2u);
  CHECK_EQ(r.frames[1].promised_stream_id, 2u);
  CHECK(r.frames[1].payload == "hb");
}

// ---- Splitting ----

TEST(HeaderBlockSplitsByMaxFrameSize) {
  const std::string block(40000, 'z');
  std::string out;
  AppendHeaders(7, block, true, kDefaultMaxFrameSize, &out);
  FrameReader::Options o;
  o.server = false;
  FrameReader reader(o);
  const ReadOutcome r = ReadAll(&reader, B({0, 0, 0, 4, 0, 0, 0, 0, 0}) + out);
  CHECK_EQ(r.errors.size(), 0u);
  CHECK_EQ(r.frames.size(), 4u);
  CHECK_EQ(r.frames[1].header.flags, flags::kEndStream);  // END_STREAM on HEADERS, END_HEADERS not yet
  CHECK_EQ(r.frames[2].header.flags, 0);
  CHECK_EQ(r.frames[3].header.flags, flags::kEndHeaders);
  CHECK_EQ(r.frames[1].header.length, 16384u);
  CHECK_EQ(r.frames[2].header.length, 16384u);
  CHECK_EQ(r.frames[3].header.length, 40000u - 32768u);
  for (int i = 1; i <= 3; ++i) CHECK_EQ(r.frames[i].header.stream_id, 7u);

  // A block of exactly one frame's size is one frame; an empty block is one empty HEADERS.
  out.clear();
  AppendHeaders(1, std::string(16384, 'a'), false, 16384, &out);
  CHECK_EQ(out.size(), 9u + 16384u);
  out.clear();
  AppendHeaders(1, "", false, 16384, &out);
  CHECK(out == B({0, 0, 0, 1, 0x04, 0, 0, 0, 1}));
  // A larger MAX_FRAME_SIZE from the peer is used; a size below the minimum is clamped up.
  out.clear();
  AppendHeaders(1, block, false, 1 << 20, &out);
  CHECK_EQ(out.size(), 9u + 40000u);
  out.clear();
  AppendHeaders(1, block, false, 0, &out);
  CHECK_EQ(out.size(), 3 * 9u + 40000u);
}

TEST(DataSplitsByFrameSizeAndBudget) {
  const std::string data(40000, 'd');
  std::string out;
  // The budget stops it first: 20000 bytes as 16384 + 3616, no END_STREAM.
  CHECK_EQ(AppendData(3, data, true, 16384, 20000, &out), 20000u);
  CHECK_EQ(out.size(), 2 * 9u + 20000u);
  CHECK(out.substr(0, 9) == B({0, 0x40, 0, 0, 0, 0, 0, 0, 3}));
  CHECK(out.substr(9 + 16384, 9) == B({0, 0x0e, 0x20, 0, 0, 0, 0, 0, 3}));
  // The rest, with room to spare: END_STREAM on its last frame.
  out.clear();
  CHECK_EQ(AppendData(3, std::string_view(data).substr(20000), true, 16384, 1 << 30, &out), 20000u);
  CHECK(out.substr(0, 9) == B({0, 0x40, 0, 0, 0, 0, 0, 0, 3}));
  CHECK(out.substr(9 + 16384, 9) == B({0, 0x0e, 0x20, 0, 0x01, 0, 0, 0, 3}));
  // No budget: nothing written.
  out.clear();
  CHECK_EQ(AppendData(3, data, true, 16384, 0, &out), 0u);
  CHECK(out.empty());
  // Exactly the budget with END_STREAM: it ends.
  CHECK_EQ(AppendData(3, "abc", true, 16384, 3, &out), 3u);
  CHECK(out == B({0, 0, 3, 0, 0x01, 0, 0, 0, 3, 'a', 'b', 'c'}));
  // Empty data without END_STREAM: nothing.
  out.clear();
  CHECK_EQ(AppendData(3, "", false, 16384, 10, &out), 0u);
  CHECK(out.empty());
}

// ---- Violations ----

TEST(PrefaceViolations) {
  {
    FrameReader reader;
    const ReadOutcome r = ReadAll(&reader, "GET / HTTP/1.1\r\n\r\n");
    CHECK_EQ(r.errors.size(), 1u);
    CHECK_EQ(Code(r.errors[0].code), Code(ErrorCode::kProtocolError));
    CHECK_CONTAINS(r.errors[0].message, "connection preface");
  }
  {  // refused from the first wrong byte
    FrameReader reader;
    size_t used = 0;
    Frame f;
    H2Error e;
    CHECK(reader.Next("PRX", &used, &f, &e) == FrameReader::Result::kError);
    CHECK(e.connection());
    // Finished: the same error again.
    H2Error again;
    CHECK(reader.Next(Preface(), &used, &f, &again) == FrameReader::Result::kError);
    CHECK(again.message == e.message);
  }
  {
    FrameReader reader;
    std::string in(kClientPreface);
    AppendWindowUpdate(0, 1, &in);
    const ReadOutcome r = ReadAll(&reader, in);
    CHECK_EQ(r.errors.size(), 1u);
    CHECK_CONTAINS(r.errors[0].message, "first frame must be SETTINGS");
    CHECK_CONTAINS(r.errors[0].message, "WINDOW_UPDATE");
  }
  {
    FrameReader reader;
    std::string in(kClientPreface);
    AppendSettingsAck(&in);
    const ReadOutcome r = ReadAll(&reader, in);
    CHECK_EQ(r.errors.size(), 1u);
    CHECK_CONTAINS(r.errors[0].message, "SETTINGS ACK");
  }
  {  // an extension frame cannot come first either
    FrameReader reader;
    const ReadOutcome r = ReadAll(&reader, std::string(kClientPreface) + Header(0, 0xfa, 0, 0));
    CHECK_EQ(r.errors.size(), 1u);
    CHECK_CONTAINS(r.errors[0].message, "UNKNOWN");
  }
}

TEST(FrameSizeLimit) {
  // Refused from the header alone, before the payload arrives.
  FrameReader reader;
  const ReadOutcome r = ReadAll(&reader, Preface() + Header(16385, 0, 0, 1));
  CHECK_EQ(r.errors.size(), 1u);
  CHECK_EQ(Code(r.errors[0].code), Code(ErrorCode::kFrameSizeError));
  CHECK(r.errors[0].connection());
  CHECK_CONTAINS(r.errors[0].message, "DATA frame");
  CHECK_CONTAINS(r.errors[0].message, "SETTINGS_MAX_FRAME_SIZE 16384");
  // Extension frames obey it too.
  ExpectError(Header(20000, 0xfa, 0, 0), ErrorCode::kFrameSizeError, true, 0, "exceeds SETTINGS_MAX_FRAME_SIZE");
  // A raised limit admits it.
  FrameReader big;
  big.set_max_frame_size(32768);
  CHECK_EQ(big.max_frame_size(), 32768u);
  const ReadOutcome ok = ReadAll(&big, Preface() + Header(16385, 0, 0, 1) + std::string(16385, 'x'));
  CHECK_EQ(ok.errors.size(), 0u);
  CHECK_EQ(ok.frames.size(), 2u);
  big.set_max_frame_size(1);
  CHECK_EQ(big.max_frame_size(), kDefaultMaxFrameSize);
}

TEST(SettingsViolations) {
  ExpectError(Header(7, 4, 0, 0) + std::string(7, '\0'), ErrorCode::kFrameSizeError, true, 0,
              "SETTINGS frame: length 7 is not a multiple of 6");
  ExpectError(Header(6, 4, 1, 0) + B({0, 4, 0, 0, 0, 1}), ErrorCode::kFrameSizeError, true, 0,
              "ACK must have an empty payload");
  ExpectError(Header(0, 4, 0, 1), ErrorCode::kProtocolError, true, 0, "SETTINGS frame: stream identifier must be 0");
  ExpectError(Header(6, 4, 0, 0) + B({0, 2, 0, 0, 0, 2}), ErrorCode::kProtocolError, true, 0,
              "SETTINGS_ENABLE_PUSH must be 0 or 1, got 2");
  ExpectError(Header(6, 4, 0, 0) + B({0, 4, 0x80, 0, 0, 0}), ErrorCode::kFlowControlError, true, 0,
              "SETTINGS_INITIAL_WINDOW_SIZE 2147483648 exceeds 2^31-1");
  ExpectError(Header(6, 4, 0, 0) + B({0, 5, 0, 0, 0x3f, 0xff}), ErrorCode::kProtocolError, true, 0,
              "SETTINGS_MAX_FRAME_SIZE 16383");
  ExpectError(Header(6, 4, 0, 0) + B({0, 5, 1, 0, 0, 0}), ErrorCode::kProtocolError, true, 0,
              "SETTINGS_MAX_FRAME_SIZE 16777216");
  // The limits themselves are fine, and so is an unknown id with any value.
  FrameReader reader;
  std::string in = Preface();
  AppendSettings({{0x4, kMaxWindowSize}, {0x5, 16384}, {0x5, (1 << 24) - 1}, {0x2, 1}, {0xabcd, 0xffffffffu}}, &in);
  const ReadOutcome r = ReadAll(&reader, in);
  CHECK_EQ(r.errors.size(), 0u);
  CHECK_EQ(r.frames[1].settings.size(), 5u);
  // A server must not enable push towards a client.
  FrameReader::Options client;
  client.server = false;
  ExpectError(Header(6, 4, 0, 0) + B({0, 2, 0, 0, 0, 1}), ErrorCode::kProtocolError, true, 0,
              "must not send SETTINGS_ENABLE_PUSH 1", client);
}

TEST(PingGoawayRstStreamViolations) {
  ExpectError(Header(7, 6, 0, 0) + std::string(7, 'p'), ErrorCode::kFrameSizeError, true, 0,
              "PING frame: length must be 8, got 7");
  ExpectError(Header(8, 6, 0, 1) + std::string(8, 'p'), ErrorCode::kProtocolError, true, 0,
              "PING frame: stream identifier must be 0, got 1");
  ExpectError(Header(7, 7, 0, 0) + std::string(7, '\0'), ErrorCode::kFrameSizeError, true, 0,
              "GOAWAY frame: length must be >= 8, got 7");
  ExpectError(Header(8, 7, 0, 3) + std::string(8, '\0'), ErrorCode::kProtocolError, true, 0,
              "GOAWAY frame: stream identifier must be 0");
  ExpectError(Header(5, 3, 0, 1) + std::string(5, '\0'), ErrorCode::kFrameSizeError, true, 0,
              "RST_STREAM frame: length must be 4, got 5");
  ExpectError(Header(4, 3, 0, 0) + std::string(4, '\0'), ErrorCode::kProtocolError, true, 0,
              "RST_STREAM frame: stream identifier must not be 0");
}

TEST(WindowUpdateViolations) {
  ExpectError(Header(3, 8, 0, 0) + B({0, 0, 1}), ErrorCode::kFrameSizeError, true, 0,
              "WINDOW_UPDATE frame: length must be 4, got 3");
  ExpectError(Header(4, 8, 0, 0) + B({0, 0, 0, 0}), ErrorCode::kProtocolError, true, 0,
              "increment is 0 on the connection");
  // Only the reserved bit set: still an increment of 0.
  ExpectError(Header(4, 8, 0, 0) + B({0x80, 0, 0, 0}), ErrorCode::kProtocolError, true, 0, "increment is 0");
  // On a stream, a stream error: the reader goes on with the next frame.
  FrameReader reader;
  std::string in = Preface() + Header(4, 8, 0, 3) + B({0, 0, 0, 0});
  AppendWindowUpdate(3, 5, &in);
  const ReadOutcome r = ReadAll(&reader, in);
  CHECK_EQ(r.errors.size(), 1u);
  CHECK(!r.errors[0].connection());
  CHECK_EQ(r.errors[0].stream_id, 3u);
  CHECK_EQ(Code(r.errors[0].code), Code(ErrorCode::kProtocolError));
  CHECK_CONTAINS(r.errors[0].message, "WINDOW_UPDATE frame: increment is 0 on stream 3");
  CHECK_EQ(r.frames.size(), 2u);
  CHECK_EQ(r.frames[1].window_increment, 5u);
  CHECK(!reader.failed());
}

TEST(PriorityViolations) {
  ExpectError(Header(4, 2, 0, 1) + B({0, 0, 0, 0}), ErrorCode::kFrameSizeError, false, 1,
              "PRIORITY frame: length must be 5, got 4");
  ExpectError(Header(5, 2, 0, 0) + B({0, 0, 0, 1, 0}), ErrorCode::kProtocolError, true, 0,
              "PRIORITY frame: stream identifier must not be 0");
  ExpectError(Header(5, 2, 0, 3) + B({0x80, 0, 0, 3, 0}), ErrorCode::kProtocolError, false, 3,
              "PRIORITY frame: stream 3 depends on itself");
}

TEST(HeadersViolations) {
  ExpectError(Header(1, 1, 0x04, 0) + "a", ErrorCode::kProtocolError, true, 0,
              "HEADERS frame: stream identifier must not be 0");
  ExpectError(Header(0, 1, 0x08 | 0x04, 1), ErrorCode::kFrameSizeError, true, 0,
              "HEADERS frame: PADDED with no Pad Length");
  ExpectError(Header(3, 1, 0x08 | 0x04, 1) + B({3, 'a', 'b'}), ErrorCode::kProtocolError, true, 0,
              "HEADERS frame: Pad Length 3 exceeds the 2 bytes left");
  ExpectError(Header(4, 1, 0x20 | 0x04, 1) + B({0, 0, 0, 0}), ErrorCode::kFrameSizeError, true, 0,
              "HEADERS frame: length 4 is too short");
  ExpectError(Header(7, 1, 0x08 | 0x20 | 0x04, 1) + B({2, 0, 0, 0, 0, 0, 0}), ErrorCode::kProtocolError, true, 0,
              "Pad Length 2 exceeds the 1 bytes left");
  ExpectError(Header(5, 1, 0x20 | 0x04, 5) + B({0, 0, 0, 5, 0}), ErrorCode::kProtocolError, true, 0,
              "HEADERS frame: stream 5 depends on itself");
  // Padding that fills the payload exactly leaves an empty fragment: fine.
  FrameReader reader;
  const ReadOutcome r = ReadAll(&reader, Preface() + Header(3, 1, 0x08 | 0x04, 1) + B({2, 0, 0}));
  CHECK_EQ(r.errors.size(), 0u);
  CHECK(r.frames[1].payload.empty());
}

TEST(DataViolations) {
  ExpectError(Header(1, 0, 0, 0) + "a", ErrorCode::kProtocolError, true, 0,
              "DATA frame: stream identifier must not be 0");
  ExpectError(Header(3, 0, 0x08, 1) + B({3, 'a', 'b'}), ErrorCode::kProtocolError, true, 0,
              "DATA frame: Pad Length 3 exceeds the 2 bytes left");
  ExpectError(Header(0, 0, 0x08, 1), ErrorCode::kFrameSizeError, true, 0, "DATA frame: PADDED with no Pad Length");
  FrameReader reader;
  const ReadOutcome r = ReadAll(&reader, Preface() + Header(3, 0, 0x08, 1) + B({2, 0, 0}));
  CHECK_EQ(r.errors.size(), 0u);
  CHECK(r.frames[1].payload.empty());
  CHECK_EQ(r.frames[1].header.length, 3u);
}

TEST(ContinuationViolations) {
  ExpectError(Header(1, 9, 0x04, 1) + "a", ErrorCode::kProtocolError, true, 0,
              "CONTINUATION on stream 1: no HEADERS or PUSH_PROMISE");
  const std::string open = Header(1, 1, 0, 1) + "a";  // HEADERS without END_HEADERS
  ExpectError(open + Header(1, 0, 0, 1) + "d", ErrorCode::kProtocolError, true, 0,
              "DATA frame on stream 1 inside the field block of stream 1: expected CONTINUATION");
  ExpectError(open + Header(1, 9, 0x04, 3) + "b", ErrorCode::kProtocolError, true, 0,
              "CONTINUATION frame on stream 3 inside the field block of stream 1");
  ExpectError(open + Header(0, 0xfa, 0, 0), ErrorCode::kProtocolError, true, 0,
              "UNKNOWN frame on stream 0 inside the field block");
  ExpectError(open + Header(1, 9, 0x04, 0) + "b", ErrorCode::kProtocolError, true, 0, "inside the field block");
  // After END_HEADERS, CONTINUATION is no longer allowed.
  ExpectError(open + Header(1, 9, 0x04, 1) + "b" + Header(1, 9, 0x04, 1) + "c", ErrorCode::kProtocolError, true, 0,
              "CONTINUATION on stream 1: no HEADERS");
  // PUSH_PROMISE towards a server.
  ExpectError(Header(4, 5, 0x04, 1) + B({0, 0, 0, 2}), ErrorCode::kProtocolError, true, 0,
              "PUSH_PROMISE frame: a client must not push");
}

TEST(FieldBlockLimitCatchesContinuationFloods) {
  FrameReader::Options o;
  o.max_field_block_size = 100;
  // 9 + 50 + 9 + 50 > 100.
  ExpectError(Header(50, 1, 0, 1) + std::string(50, 'a') + Header(50, 9, 0x04, 1) + std::string(50, 'b'),
              ErrorCode::kEnhanceYourCalm, true, 0, "CONTINUATION on stream 1: field block of 118 bytes", o);
  // Empty CONTINUATION frames count 9 bytes each.
  std::string flood = Header(0, 1, 0, 1);
  for (int i = 0; i < 20; ++i) flood += Header(0, 9, 0, 1);
  ExpectError(flood, ErrorCode::kEnhanceYourCalm, true, 0, "exceeds the limit of 100", o);
  // A block within the limit passes, and the count starts again with the next block.
  FrameReader reader(o);
  std::string in = Preface();
  for (int i = 0; i < 3; ++i) {
    in += Header(40, 1, 0, 1) + std::string(40, 'a') + Header(40, 9, 0x04, 1) + std::string(40, 'b');
  }
  const ReadOutcome r = ReadAll(&reader, in);
  CHECK_EQ(r.errors.size(), 0u);
  CHECK_EQ(r.frames.size(), 7u);
}

// ---- gRPC messages ----

TEST(GrpcPrefixLayout) {
  std::string out;
  AppendGrpcPrefix(false, 0x01020304, &out);
  AppendGrpcPrefix(true, 5, &out);
  CHECK(out == B({0, 1, 2, 3, 4, 1, 0, 0, 0, 5}));
}

TEST(GrpcMessagesReassembleAcrossFrames) {
  std::string wire;
  const std::string big(300, 'm');
  AppendGrpcPrefix(false, 5, &wire);
  wire += "hello";
  AppendGrpcPrefix(false, 0, &wire);  // an empty message
  AppendGrpcPrefix(true, static_cast<uint32_t>(big.size()), &wire);
  wire += big;
  for (size_t chunk : {1, 3, 5, 6, 64, 1000}) {
    GrpcMessageReader reader(1024);
    std::vector<std::pair<bool, std::string>> got;
    for (size_t pos = 0; pos < wire.size(); pos += chunk) {
      reader.Append(std::string_view(wire).substr(pos, chunk));
      GrpcMessage m;
      Status st;
      GrpcMessageReader::Result r;
      while ((r = reader.Next(&m, &st)) == GrpcMessageReader::Result::kMessage) {
        got.emplace_back(m.compressed, std::string(m.data));
      }
      CHECK(r == GrpcMessageReader::Result::kNeedMore);
    }
    CHECK_EQ(got.size(), 3u);
    CHECK(!got[0].first && got[0].second == "hello");
    CHECK(!got[1].first && got[1].second.empty());
    CHECK(got[2].first && got[2].second == big);
    CHECK(reader.Finish().ok());
    CHECK_EQ(reader.buffered(), 0u);
  }
}

TEST(GrpcMessageThroughDataFrames) {
  // A 40000-byte message written as DATA frames, read back frame by frame.
  std::string msg(40000, '\0');
  for (size_t i = 0; i < msg.size(); ++i) msg[i] = static_cast<char>(i * 7);
  std::string body;
  AppendGrpcPrefix(false, static_cast<uint32_t>(msg.size()), &body);
  body += msg;
  std::string in = Preface();
  CHECK_EQ(AppendData(1, body, true, kDefaultMaxFrameSize, body.size(), &in), body.size());
  FrameReader frames;
  const ReadOutcome r = ReadChunked(&frames, in, 4096);
  CHECK_EQ(r.frames.size(), 4u);  // SETTINGS + 3 DATA
  GrpcMessageReader reader(1 << 20);
  int messages = 0;
  for (size_t i = 1; i < r.frames.size(); ++i) {
    reader.Append(r.frames[i].payload);
    GrpcMessage m;
    Status st;
    while (reader.Next(&m, &st) == GrpcMessageReader::Result::kMessage) {
      CHECK(m.data == msg);
      ++messages;
    }
  }
  CHECK_EQ(messages, 1);
  CHECK(r.frames.back().header.has_flag(flags::kEndStream));
  CHECK(reader.Finish().ok());
}

TEST(GrpcMessageSizeLimit) {
  {  // refused from the prefix alone
    GrpcMessageReader reader(10);
    std::string wire;
    AppendGrpcPrefix(false, 11, &wire);
    reader.Append(wire);
    GrpcMessage m;
    Status st;
    CHECK(reader.Next(&m, &st) == GrpcMessageReader::Result::kError);
    CHECK(st.code() == StatusCode::kResourceExhausted);
    CHECK_CONTAINS(st.message(), "length 11 exceeds the max message size 10");
    Status again;
    CHECK(reader.Next(&m, &again) == GrpcMessageReader::Result::kError);
    CHECK(again.message() == st.message());
    CHECK(reader.Finish().code() == StatusCode::kResourceExhausted);
  }
  {  // exactly the limit is fine
    GrpcMessageReader reader(10);
    std::string wire;
    AppendGrpcPrefix(false, 10, &wire);
    wire += std::string(10, 'x');
    reader.Append(wire);
    GrpcMessage m;
    Status st;
    CHECK(reader.Next(&m, &st) == GrpcMessageReader::Result::kMessage);
    CHECK_EQ(m.data.size(), 10u);
  }
  {  // the largest length on the wire
    GrpcMessageReader reader(4u << 20);
    reader.Append(B({0, 0xff, 0xff, 0xff, 0xff}));
    GrpcMessage m;
    Status st;
    CHECK(reader.Next(&m, &st) == GrpcMessageReader::Result::kError);
    CHECK_CONTAINS(st.message(), "4294967295");
  }
}

TEST(GrpcMessageBadFlagAndTruncation) {
  {
    GrpcMessageReader reader(100);
    reader.Append(B({2, 0, 0, 0, 0}));
    GrpcMessage m;
    Status st;
    CHECK(reader.Next(&m, &st) == GrpcMessageReader::Result::kError);
    CHECK(st.code() == StatusCode::kInternal);
    CHECK_CONTAINS(st.message(), "compressed flag must be 0 or 1, got 2");
  }
  {
    GrpcMessageReader reader(100);
    reader.Append(B({0, 0, 0, 0, 4, 'a', 'b'}));
    GrpcMessage m;
    Status st;
    CHECK(reader.Next(&m, &st) == GrpcMessageReader::Result::kNeedMore);
    const Status end = reader.Finish();
    CHECK(end.code() == StatusCode::kInternal);
    CHECK_CONTAINS(end.message(), "ended inside a message (7 bytes");
  }
}

// ---- Flow control ----

TEST(FlowWindowConsumeAndCredit) {
  FlowWindow w;
  CHECK_EQ(w.available(), 65535);
  CHECK_EQ(Code(w.Consume(65535)), Code(ErrorCode::kNoError));
  CHECK_EQ(w.available(), 0);
  CHECK_EQ(Code(w.Consume(1)), Code(ErrorCode::kFlowControlError));
  CHECK_EQ(w.available(), 0);
  CHECK_EQ(Code(w.Consume(0)), Code(ErrorCode::kNoError));
  CHECK_EQ(Code(w.Credit(0)), Code(ErrorCode::kProtocolError));
  CHECK_EQ(Code(w.Credit(kMaxWindowSize)), Code(ErrorCode::kNoError));
  CHECK_EQ(w.available(), static_cast<int64_t>(kMaxWindowSize));
  CHECK_EQ(Code(w.Credit(1)), Code(ErrorCode::kFlowControlError));  // 2^31 is one too many
  CHECK_EQ(w.available(), static_cast<int64_t>(kMaxWindowSize));
  CHECK_EQ(Code(w.Consume(uint64_t{1} << 40)), Code(ErrorCode::kFlowControlError));
}

TEST(FlowWindowInitialSizeChanges) {
  FlowWindow w(100);
  // SETTINGS_INITIAL_WINDOW_SIZE 65535 -> 0 while 65435 bytes are in flight: negative.
  CHECK_EQ(Code(w.ApplyInitialChange(65535, 0)), Code(ErrorCode::kNoError));
  CHECK_EQ(w.available(), -65435);
  CHECK_EQ(w.sendable(), 0u);
  CHECK_EQ(Code(w.Consume(1)), Code(ErrorCode::kFlowControlError));
  CHECK_EQ(Code(w.Consume(0)), Code(ErrorCode::kNoError));
  CHECK_EQ(Code(w.Credit(65436)), Code(ErrorCode::kNoError));
  CHECK_EQ(w.sendable(), 1u);
  // Raising it past 2^31-1 is refused and leaves the window alone.
  FlowWindow full(kMaxWindowSize - 10);
  CHECK_EQ(Code(full.ApplyInitialChange(65535, 65535 + 11)), Code(ErrorCode::kFlowControlError));
  CHECK_EQ(full.available(), static_cast<int64_t>(kMaxWindowSize) - 10);
  CHECK_EQ(Code(full.ApplyInitialChange(65535, 65535 + 10)), Code(ErrorCode::kNoError));
  CHECK_EQ(full.available(), static_cast<int64_t>(kMaxWindowSize));
}

TEST_MAIN()
