// libFuzzer target for H2Connection: the input is a client's byte stream,
// fed in chunks, to a connection whose handler answers every message.
//
// Byte 0: bit 0 puts a valid preface, an empty SETTINGS and a SETTINGS ACK
// first (so the fuzzer reaches stream handling without finding them); bits
// 1-7 seed the chunk sizes. Byte 1 shapes the handler and the clock: bit 0
// finishes some streams from OnStreamStart, bit 1 resets some from
// OnStreamMessage, bit 2 answers with messages larger than the default
// windows, bit 3 calls Shutdown after the first chunk, bit 4 leaves output
// unread now and then (a slow reader), bits 5-7 scale the time step.
//
// Checked: the connection's output always parses as valid server frames
// whose header blocks decode; every stream the handler was told of ends
// exactly once (our Finish or OnStreamReset, never both); memory stays
// bounded; nothing is called after done().
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "steadyserve/h2_connection.h"
#include "steadyserve/h2_frame.h"
#include "steadyserve/hpack.h"
#include "steadyserve/v2_wire.h"

using namespace steadyserve;
using namespace steadyserve::h2;

namespace {

enum class End : uint8_t { kOpen, kFinished, kReset };

class Answering : public StreamHandler {
 public:
  H2Connection* conn = nullptr;
  uint8_t mode = 0;
  std::map<uint32_t, End> streams;

  void Finish(uint32_t id, int status) {
    const bool was_open = streams.count(id) != 0 && streams[id] == End::kOpen;
    const bool ok = conn->Finish(id, status, "answer \xc3\xa9 100%");
    // Finish succeeds exactly on a stream the handler still owns.
    FUZZ_CHECK(ok == was_open);
    if (ok) streams[id] = End::kFinished;
  }

  void OnStreamStart(const StreamStart& s) override {
    FUZZ_CHECK(streams.count(s.stream_id) == 0);
    FUZZ_CHECK(s.headers != nullptr);
    FUZZ_CHECK(!s.path.empty());
    streams[s.stream_id] = End::kOpen;
    if ((mode & 1) && ((s.stream_id >> 1) & 3) == 0) Finish(s.stream_id, 12);
  }
  void OnStreamMessage(uint32_t id, std::string_view message) override {
    FUZZ_CHECK(streams.count(id) == 1 && streams[id] == End::kOpen);
    // Each message is what the frontend hands the core: its V2 decoder gets it too,
    // so one target covers frames, HPACK, gRPC framing and the ModelInferRequest reader.
    steadyserve::InferRequestView view;
    (void)steadyserve::ParseInferRequest(reinterpret_cast<const uint8_t*>(message.data()), message.size(), &view);
    if ((mode & 2) && (message.size() & 7) == 3) {
      conn->ResetStream(id, ErrorCode::kCancel);
      streams[id] = End::kFinished;  // the handler's own choice: no callback may follow
      return;
    }
    const size_t n = (mode & 4) ? 70000 + message.size() : message.size() + 1;
    if (conn->SendMessage(id, std::string(n, 'r'))) Finish(id, 0);
    else streams[id] = End::kFinished;  // an oversized answer finished it
  }
  void OnStreamHalfClose(uint32_t id) override {
    FUZZ_CHECK(streams.count(id) == 1 && streams[id] == End::kOpen);
    Finish(id, 0);
  }
  void OnStreamReset(uint32_t id) override {
    FUZZ_CHECK(streams.count(id) == 1 && streams[id] == End::kOpen);
    streams[id] = End::kReset;
  }
};

// Reads what the server wrote as a client would and checks it is valid.
struct OutputChecker {
  FrameReader reader{[] {
    FrameReader::Options o;
    o.server = false;
    o.max_frame_size = kMaxAllowedFrameSize;
    o.max_field_block_size = 1u << 24;
    return o;
  }()};
  HpackDecoder decoder{4096, 1u << 24};
  std::string buf;
  std::string block;
  std::vector<HpackField> fields;

  void Feed(std::string_view bytes) {
    buf.append(bytes.data(), bytes.size());
    size_t pos = 0;
    for (;;) {
      Frame f;
      H2Error e;
      size_t used = 0;
      const auto r = reader.Next(std::string_view(buf).substr(pos), &used, &f, &e);
      pos += used;
      if (r == FrameReader::Result::kNeedMore) break;
      FUZZ_CHECK(r == FrameReader::Result::kFrame);
      if (f.type() == FrameType::kHeaders) block.assign(f.payload.data(), f.payload.size());
      if (f.type() == FrameType::kContinuation) block.append(f.payload.data(), f.payload.size());
      if ((f.type() == FrameType::kHeaders || f.type() == FrameType::kContinuation) && f.end_headers()) {
        FUZZ_CHECK(decoder.Decode(reinterpret_cast<const uint8_t*>(block.data()), block.size(), &fields).ok());
      }
      if (f.type() == FrameType::kData) FUZZ_CHECK(f.stream_id() % 2 == 1);
    }
    buf.erase(0, pos);
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t mode = data[0];
  const uint8_t hmode = data[1];
  std::string input;
  if (mode & 1) {
    input.append(kClientPreface.data(), kClientPreface.size());
    AppendSettings(nullptr, 0, &input);
    AppendSettingsAck(&input);
  }
  input.append(reinterpret_cast<const char*>(data) + 2, size - 2);

  ConnectionLimits limits;
  limits.max_concurrent_streams = 8;
  limits.max_header_list_bytes = 4096;
  limits.max_field_block_bytes = 16 * 1024;
  limits.stream_window_bytes = 65535;
  limits.connection_window_bytes = 1u << 17;
  limits.max_message_bytes = 1u << 17;
  limits.control_frame_burst = 64;
  limits.control_frames_per_s = 100;
  limits.reset_burst = 16;
  limits.resets_per_s = 10;
  limits.max_pending_output_bytes = 64 * 1024;
  limits.preface_timeout_ns = 3'000'000'000;
  limits.idle_timeout_ns = 5'000'000'000;
  limits.stream_read_timeout_ns = 1'000'000'000;

  Answering handler;
  handler.mode = hmode;
  int64_t now = 1'000'000'000;
  auto conn = std::make_unique<H2Connection>(limits, &handler, now);
  handler.conn = conn.get();
  OutputChecker checker;

  const int64_t step = int64_t{1'000'000} << ((hmode >> 5) * 3);  // 1 ms .. ~16 s
  uint32_t rng = 0x9e3779b9u ^ (mode >> 1);
  size_t pos = 0;
  bool alive = true;
  int chunks = 0;
  while (pos < input.size() && alive) {
    rng = rng * 1664525u + 1013904223u;
    const size_t want = (rng >> 28) < 5 ? 1 + ((rng >> 16) & 7) : 1 + ((rng >> 16) & 1023);
    const size_t n = std::min(want, input.size() - pos);
    if (conn->wants_read() || !(hmode & 16)) {
      alive = conn->Receive(reinterpret_cast<const uint8_t*>(input.data()) + pos, n, now);
      pos += n;
    }
    if (alive && (hmode & 8) && ++chunks == 1) {
      conn->Shutdown();
      alive = !conn->done();
    }
    now += step;
    if (alive && (rng & 3) == 0) {
      const int64_t deadline = conn->next_deadline_ns();
      FUZZ_CHECK(deadline > 0);
      alive = conn->Tick(now);
    }
    // A slow reader takes half of what is there now and then.
    const std::string& out = conn->output();
    const size_t take = (hmode & 16) && (rng & 4) ? out.size() / 2 : out.size();
    checker.Feed(std::string_view(out).substr(0, take));
    conn->ConsumeOutput(take);
    FUZZ_CHECK(conn->memory_bytes() < (32u << 20));
    FUZZ_CHECK(alive == !conn->done());
  }
  if (alive) conn->Tick(now + 60'000'000'000);
  checker.Feed(conn->output());
  conn.reset();  // tells the handler of every stream still open
  for (const auto& s : handler.streams) FUZZ_CHECK(s.second != End::kOpen);
  return 0;
}
