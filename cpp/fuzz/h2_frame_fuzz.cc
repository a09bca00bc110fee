// libFuzzer target for the HTTP/2 frame reader and the gRPC message reader.
//
// The first byte chooses the case: bit 0 puts a valid client preface and an
// empty SETTINGS frame before the rest (so the fuzzer reaches the frame
// checks in half the cases without having to find the preface), bit 1 reads
// as a client instead of a server, bits 2-7 pick a chunk size. The input is
// read twice, whole and in chunks the way a connection receives it; both
// reads must yield the same frames and errors. DATA payloads go through a
// gRPC message reader with a small limit.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "steadyserve/grpc_message.h"
#include "steadyserve/h2_frame.h"

using namespace steadyserve;
using namespace steadyserve::h2;

namespace {

uint64_t Hash(std::string_view s, uint64_t h) {
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

// What one read saw, in order, as a signature of each event.
std::vector<uint64_t> Read(const std::string& input, bool server, size_t chunk) {
  FrameReader::Options o;
  o.server = server;
  o.max_field_block_size = 64 * 1024;
  FrameReader reader(o);
  GrpcMessageReader grpc(4096);
  std::vector<uint64_t> events;
  std::string buf;
  size_t fed = 0;
  bool stop = false;
  while (!stop && fed < input.size()) {
    const size_t n = std::min(chunk, input.size() - fed);
    buf.append(input, fed, n);
    fed += n;
    size_t pos = 0;
    for (;;) {
      const std::string_view rest = std::string_view(buf).substr(pos);
      size_t used = 12345;
      Frame f;
      H2Error e;
      const auto r = reader.Next(rest, &used, &f, &e);
      FUZZ_CHECK(used <= rest.size());
      pos += used;
      if (r == FrameReader::Result::kNeedMore) break;
      if (r == FrameReader::Result::kError) {
        FUZZ_CHECK(e.code != ErrorCode::kNoError);
        FUZZ_CHECK(!e.message.empty());
        FUZZ_CHECK(e.connection() == reader.failed());
        FUZZ_CHECK(e.connection() ? e.stream_id == 0 : e.stream_id != 0);
        events.push_back(Hash(e.message, static_cast<uint64_t>(e.code) * 2 + (e.connection() ? 1 : 0)));
        if (e.connection()) {
          stop = true;
          break;
        }
        continue;
      }
      // The frame's views lie inside the bytes just consumed.
      FUZZ_CHECK(f.header.length <= reader.max_frame_size());
      FUZZ_CHECK(f.payload.size() <= f.header.length);
      if (!f.payload.empty()) {
        FUZZ_CHECK(f.payload.data() >= rest.data() && f.payload.data() + f.payload.size() <= rest.data() + used);
      }
      if (f.type() == FrameType::kSettings && !f.ack()) {
        FUZZ_CHECK(f.num_settings * 6 == f.header.length);
        std::string again;
        AppendSettings(f.settings, f.num_settings, &again);
        FUZZ_CHECK(again.substr(kFrameHeaderSize) == f.payload);
      }
      if (f.type() == FrameType::kRstStream) {
        std::string again;
        AppendRstStream(f.stream_id(), f.error_code, &again);
        FUZZ_CHECK(std::string_view(again).substr(kFrameHeaderSize) == rest.substr(used - 4, 4));
      }
      if (f.type() == FrameType::kWindowUpdate) {
        FUZZ_CHECK(f.window_increment >= 1 && f.window_increment <= kMaxWindowSize);
      }
      uint64_t h = Hash(f.payload, (uint64_t{static_cast<uint8_t>(f.type())} << 40) ^ (uint64_t{f.header.flags} << 32) ^
                                       f.stream_id());
      h = Hash(std::string_view(reinterpret_cast<const char*>(&f.window_increment), 4), h);
      events.push_back(h);
      if (f.type() == FrameType::kData) {
        grpc.Append(f.payload);
        GrpcMessage m;
        Status st;
        GrpcMessageReader::Result gr;
        while ((gr = grpc.Next(&m, &st)) == GrpcMessageReader::Result::kMessage) {
          FUZZ_CHECK(m.data.size() <= grpc.max_message_size());
          events.push_back(Hash(m.data, m.compressed ? 7 : 8));
        }
        if (gr == GrpcMessageReader::Result::kError) FUZZ_CHECK(!st.ok());
        if (f.end_stream()) events.push_back(grpc.Finish().ok() ? 1 : 2);
      }
    }
    buf.erase(0, pos);
  }
  return events;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const bool server = (mode & 2) == 0;
  std::string input;
  if (mode & 1) {
    if (server) input.append(kClientPreface.data(), kClientPreface.size());
    AppendSettings(nullptr, 0, &input);
  }
  input.append(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t chunk = (mode >> 2) + 1;  // 1..64
  const std::vector<uint64_t> whole = Read(input, server, input.size() + 1);
  const std::vector<uint64_t> chunked = Read(input, server, chunk);
  FUZZ_CHECK(whole == chunked);
  return 0;
}
