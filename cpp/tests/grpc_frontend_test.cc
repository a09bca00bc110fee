// The native gRPC frontend over real sockets on 127.0.0.1: a small HTTP/2
// client built from the frame writers and HPACK (h2_frame.h, hpack.h) talks to
// a GrpcFrontend whose InferenceCore serves the test model of
// request_fixture.h, its batches run by an executor thread. Under
// ThreadSanitizer this is where the I/O threads, the batch thread and the
// bridge meet.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "request_fixture.h"
#include "steadyserve/grpc_frontend.h"
#include "steadyserve/grpc_message.h"
#include "steadyserve/h2_frame.h"
#include "steadyserve/hpack.h"

using namespace steadyserve;
using namespace steadyserve_test;

namespace {

constexpr const char* kInfer = "/inference.GRPCInferenceService/ModelInfer";
constexpr const char* kStreamInfer = "/inference.GRPCInferenceService/ModelStreamInfer";

// What the client saw of one stream.
struct StreamResult {
  std::map<std::string, std::string> headers;
  std::map<std::string, std::string> trailers;
  std::vector<std::string> messages;
  bool ended = false;  // END_STREAM or RST_STREAM
  bool reset = false;
  h2::ErrorCode reset_code = h2::ErrorCode::kNoError;
  int grpc_status() const {
    auto it = trailers.find("grpc-status");
    if (it == trailers.end()) it = headers.find("grpc-status");  // trailers-only
    return it == trailers.end() && headers.find("grpc-status") == headers.end() ? -1 : std::stoi(it->second);
  }
  std::string grpc_message() const {
    auto it = trailers.find("grpc-message");
    if (it != trailers.end()) return it->second;
    it = headers.find("grpc-message");
    return it == headers.end() ? "" : it->second;
  }
};

class H2Client {
 public:
  explicit H2Client(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    std::string out(h2::kClientPreface);
    h2::AppendSettings(nullptr, 0, &out);
    // A large connection window, so answers never wait for us.
    h2::AppendWindowUpdate(0, 1 << 24, &out);
    Write(out);
  }
  ~H2Client() { Close(); }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

  void Write(const std::string& bytes) {
    size_t at = 0;
    while (at < bytes.size()) {
      const ssize_t n = send(fd_, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
      if (n <= 0) {  // the server closed the connection: what it said is still readable
        write_failed_ = true;
        return;
      }
      at += static_cast<size_t>(n);
    }
  }

  // HEADERS for a gRPC call, then (if given) one message with END_STREAM.
  void Call(uint32_t stream_id, const std::string& path, const std::string* message, bool end_stream = true,
            const std::string& timeout = "", const std::string& request_id = "") {
    std::vector<HpackField> fields = {{":method", "POST"},
                                      {":scheme", "http"},
                                      {":path", path},
                                      {":authority", "localhost"},
                                      {"content-type", "application/grpc"},
                                      {"te", "trailers"}};
    if (!timeout.empty()) fields.push_back({"grpc-timeout", timeout});
    if (!request_id.empty()) fields.push_back({"x-request-id", request_id});
    std::string block, out;
    encoder_.EncodeBlock(fields, &block);
    h2::AppendHeaders(stream_id, block, message == nullptr && end_stream, h2::kDefaultMaxFrameSize, &out);
    if (message != nullptr) AppendMessage(stream_id, *message, end_stream, &out);
    Write(out);
  }
  void Message(uint32_t stream_id, const std::string& message, bool end_stream) {
    std::string out;
    AppendMessage(stream_id, message, end_stream, &out);
    Write(out);
  }
  void EndStream(uint32_t stream_id) {
    std::string out;
    h2::AppendData(stream_id, "", true, h2::kDefaultMaxFrameSize, 0, &out);
    Write(out);
  }
  void Reset(uint32_t stream_id) {
    std::string out;
    h2::AppendRstStream(stream_id, h2::ErrorCode::kCancel, &out);
    Write(out);
  }

  // Reads until `done()` or the timeout; false on timeout.
  template <typename Done>
  bool ReadUntil(Done done, int timeout_ms = 10000) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    while (!done()) {
      if (std::chrono::steady_clock::now() > until || eof_) return done();
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 20) <= 0) continue;
      char buf[65536];
      const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      in_.append(buf, static_cast<size_t>(n));
      Parse();
    }
    return true;
  }
  bool WaitEnded(uint32_t stream_id, int timeout_ms = 10000) {
    return ReadUntil([&] { return streams_[stream_id].ended; }, timeout_ms);
  }

  std::map<uint32_t, StreamResult> streams_;
  bool goaway_ = false;
  h2::ErrorCode goaway_code_ = h2::ErrorCode::kNoError;
  uint32_t goaway_last_ = 0;
  std::string goaway_debug_;
  bool eof_ = false;
  bool write_failed_ = false;

 private:
  void AppendMessage(uint32_t stream_id, const std::string& message, bool end_stream, std::string* out) {
    std::string framed;
    AppendGrpcPrefix(false, static_cast<uint32_t>(message.size()), &framed);
    framed += message;
    size_t at = 0;
    do {  // within the default 64 KiB stream window of the server's side: tests keep messages small
      const size_t n = h2::AppendData(stream_id, std::string_view(framed).substr(at), end_stream,
                                      h2::kDefaultMaxFrameSize, framed.size() - at, out);
      at += n;
    } while (at < framed.size());
  }

  void Parse() {
    for (;;) {
      size_t used = 0;
      h2::Frame f;
      h2::H2Error err;
      const auto r = reader_.Next(std::string_view(in_).substr(pos_), &used, &f, &err);
      pos_ += used;
      if (r == h2::FrameReader::Result::kNeedMore) break;
      CHECK(r == h2::FrameReader::Result::kFrame);
      Handle(f);
    }
    in_.erase(0, pos_);
    pos_ = 0;
  }

  void Handle(const h2::Frame& f) {
    switch (f.type()) {
      case h2::FrameType::kSettings:
        if (!f.ack()) {
          std::string out;
          h2::AppendSettingsAck(&out);
          Write(out);
        }
        break;
      case h2::FrameType::kPing:
        if (!f.ack()) {
          std::string out;
          h2::AppendPingAck(reinterpret_cast<const uint8_t*>(f.payload.data()), &out);
          Write(out);
        }
        break;
      case h2::FrameType::kHeaders:
      case h2::FrameType::kContinuation: {
        block_.append(f.payload);
        if (f.type() == h2::FrameType::kHeaders) {
          block_stream_ = f.stream_id();
          block_end_stream_ = f.end_stream();
        }
        if (!f.end_headers()) break;
        std::vector<HpackField> fields;
        CHECK(decoder_.Decode(reinterpret_cast<const uint8_t*>(block_.data()), block_.size(), &fields).ok());
        StreamResult& s = streams_[block_stream_];
        const bool trailers = !s.headers.empty();
        for (const auto& field : fields)
          (trailers ? s.trailers : s.headers)[std::string(field.name)] = std::string(field.value);
        if (block_end_stream_) s.ended = true;
        block_.clear();
        break;
      }
      case h2::FrameType::kData: {
        StreamResult& s = streams_[f.stream_id()];
        GrpcMessageReader& reader = readers_.try_emplace(f.stream_id(), 1 << 26).first->second;
        reader.Append(f.payload);
        GrpcMessage m;
        Status st;
        while (reader.Next(&m, &st) == GrpcMessageReader::Result::kMessage) s.messages.emplace_back(m.data);
        if (f.end_stream()) s.ended = true;
        if (f.header.length > 0) {
          std::string out;  // give the window back at once
          h2::AppendWindowUpdate(f.stream_id(), f.header.length, &out);
          Write(out);
        }
        break;
      }
      case h2::FrameType::kRstStream: {
        StreamResult& s = streams_[f.stream_id()];
        s.ended = s.reset = true;
        s.reset_code = f.error_code;
        break;
      }
      case h2::FrameType::kGoaway:
        goaway_ = true;
        goaway_code_ = f.error_code;
        goaway_last_ = f.last_stream_id;
        goaway_debug_.assign(f.payload);
        break;
      default:
        break;
    }
  }

  int fd_ = -1;
  std::string in_;
  size_t pos_ = 0;
  h2::FrameReader reader_{h2::FrameReader::Options{false, h2::kDefaultMaxFrameSize, 1 << 20}};
  HpackEncoder encoder_;
  HpackDecoder decoder_;
  std::string block_;
  uint32_t block_stream_ = 0;
  bool block_end_stream_ = false;
  std::map<uint32_t, GrpcMessageReader> readers_;
};

// A ModelStreamInferResponse: (error_message, infer_response bytes).
std::pair<std::string, std::string> ParseStreamResponse(const std::string& bytes) {
  std::string error, response;
  for (const Field& f : Decode(bytes)) {
    if (f.number == 1) error = f.bytes;
    if (f.number == 2) response = f.bytes;
  }
  return {error, response};
}

struct Server {
  InferenceCore core{1024};
  std::shared_ptr<ModelCore> model;
  std::unique_ptr<Executor> executor;
  std::unique_ptr<GrpcFrontend> fe;

  explicit Server(FrontendOptions o = {}) {
    model = AddModel(core, "m", Opts(8, 0, 256));
    executor = std::make_unique<Executor>(model, Executor::Mode::kComplete, /*unique_tags=*/false);
    o.host = "127.0.0.1";
    o.port = 0;
    if (o.io_threads == 0) o.io_threads = 2;
    Status s = GrpcFrontend::Create(&core, o, &fe);
    if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
    CHECK(s.ok());
    CHECK(fe->port() > 0);
    CHECK(fe->Start().ok());
  }
  ~Server() {
    fe->Shutdown();
    executor->Join();
    fe->Stop();
  }
};

void TestUnaryInfer() {
  Server server;
  H2Client client(server.fe->port());
  const std::string request = InferRequest("m", 7, 3);
  client.Call(1, kInfer, &request);
  CHECK(client.WaitEnded(1));
  const StreamResult& s = client.streams_[1];
  CHECK_STR(s.headers.at(":status"), "200");
  CHECK_STR(s.headers.at("content-type"), "application/grpc");
  CHECK_EQ(s.grpc_status(), 0);
  CHECK_EQ(s.messages.size(), size_t{1});
  CheckResponse(ParseResponse(s.messages[0]), "m", 7, 3);
}

// Every answer carries x-request-id: the client's header, else the request's V2 id,
// else one generated here (distinct per call); errors (Trailers-Only) too. With
// log_sample_rate 1 every request is recorded with that id.
void TestRequestIds() {
  FrontendOptions o;
  o.log_sample_rate = 1.0;
  Server server(o);
  H2Client client(server.fe->port());
  const std::string with_v2_id = InferRequest("m", 7, 1);
  WireOptions anonymous;
  anonymous.send_id = false;
  const std::string without_id = InferRequest("m", 8, 1, anonymous);
  const std::string unknown = InferRequest("nope", 9, 1, anonymous);
  client.Call(1, kInfer, &with_v2_id, true, "", "client-id-1");
  client.Call(3, kInfer, &with_v2_id);
  client.Call(5, kInfer, &without_id);
  client.Call(7, kInfer, &without_id);
  client.Call(9, kInfer, &unknown, true, "", "client-id-9");
  client.Call(11, kInfer, &unknown);
  for (uint32_t id : {1u, 3u, 5u, 7u, 9u, 11u}) CHECK(client.WaitEnded(id));
  CHECK_STR(client.streams_[1].headers.at("x-request-id"), "client-id-1");
  CHECK_STR(client.streams_[3].headers.at("x-request-id"), "7");
  const std::string g5 = client.streams_[5].headers.at("x-request-id");
  const std::string g7 = client.streams_[7].headers.at("x-request-id");
  CHECK(g5.size() > 16 && g7.size() > 16 && g5 != g7);
  CHECK_STR(client.streams_[9].headers.at("x-request-id"), "client-id-9");  // Trailers-Only
  CHECK_EQ(client.streams_[9].grpc_status(), 5);
  CHECK(client.streams_[11].headers.at("x-request-id").size() > 16);
  uint64_t dropped = 1;
  std::vector<RequestLogRecord> log = server.fe->TakeRequestLog(&dropped);
  CHECK_EQ(dropped, uint64_t{0});
  CHECK_EQ(log.size(), size_t{4});  // the four that reached a model's answer path
  std::set<std::string> ids;
  for (const auto& r : log) {
    ids.insert(r.request_id);
    CHECK(r.latency_ns > 0);
    CHECK_STR(r.model, std::string("m"));
    CHECK_EQ(r.grpc_status, 0);
  }
  CHECK(ids == (std::set<std::string>{"client-id-1", "7", g5, g7}));
  CHECK(server.fe->TakeRequestLog(&dropped).empty());
}

void TestErrorsAreTrailers() {
  Server server;
  H2Client client(server.fe->port());
  const std::string unknown = InferRequest("nope", 1, 1);
  client.Call(1, kInfer, &unknown);
  const std::string garbage = "\xff\xff\xff";
  client.Call(3, kInfer, &garbage);
  client.Call(5, kInfer, nullptr, /*end_stream=*/true);  // no message at all
  CHECK(client.WaitEnded(1) && client.WaitEnded(3) && client.WaitEnded(5));
  CHECK_EQ(client.streams_[1].grpc_status(), 5);  // NOT_FOUND
  CHECK(client.streams_[1].grpc_message().find("nope") != std::string::npos);
  CHECK(client.streams_[1].messages.empty());
  CHECK_EQ(client.streams_[3].grpc_status(), 3);  // INVALID_ARGUMENT
  CHECK_EQ(client.streams_[5].grpc_status(), 13);
  CHECK(client.streams_[5].grpc_message().find("no request message") != std::string::npos);
  // The connection still serves.
  const std::string ok = InferRequest("m", 2, 1);
  client.Call(7, kInfer, &ok);
  CHECK(client.WaitEnded(7));
  CHECK_EQ(client.streams_[7].grpc_status(), 0);
}

void TestManyClientsConcurrently() {
  Server server;
  constexpr int kClients = 6, kPerClient = 40;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      H2Client client(server.fe->port());
      for (int i = 0; i < kPerClient; ++i) {
        const uint32_t token = static_cast<uint32_t>(c * 1000 + i);
        const std::string request = InferRequest("m", token, 1 + i % 3);
        client.Call(static_cast<uint32_t>(2 * i + 1), kInfer, &request);
      }
      for (int i = 0; i < kPerClient; ++i) {
        const uint32_t sid = static_cast<uint32_t>(2 * i + 1);
        CHECK(client.WaitEnded(sid));
        const StreamResult& s = client.streams_[sid];
        CHECK_EQ(s.grpc_status(), 0);
        CHECK_EQ(s.messages.size(), size_t{1});
        CheckResponse(ParseResponse(s.messages[0]), "m", static_cast<uint32_t>(c * 1000 + i), 1 + i % 3);
        ++good;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK_EQ(good.load(), kClients * kPerClient);
  const FrontendStats st = server.fe->Stats();
  CHECK_EQ(st.native_requests, uint64_t{kClients * kPerClient});
  CHECK_EQ(st.connections_accepted, uint64_t{kClients});
}

void TestStreamInfer() {
  Server server;
  H2Client client(server.fe->port());
  client.Call(1, kStreamInfer, nullptr, /*end_stream=*/false);
  client.Message(1, InferRequest("m", 1, 1), false);
  client.Message(1, InferRequest("nope", 2, 1), false);  // an error in the stream; the stream goes on
  client.Message(1, InferRequest("m", 3, 2), false);
  CHECK(client.ReadUntil([&] { return client.streams_[1].messages.size() == 3; }));
  CHECK(!client.streams_[1].ended);  // still open: we did not half-close
  client.EndStream(1);
  CHECK(client.WaitEnded(1));
  const StreamResult& s = client.streams_[1];
  CHECK_EQ(s.grpc_status(), 0);
  std::set<std::string> ids;
  int errors = 0;
  for (const auto& m : s.messages) {
    auto [error, response] = ParseStreamResponse(m);
    if (!error.empty()) {
      ++errors;
      CHECK(error.find("nope") != std::string::npos);
      continue;
    }
    const Response r = ParseResponse(response);
    ids.insert(r.id);
    CheckResponse(r, "m", static_cast<uint32_t>(std::stoi(r.id)), r.id == "1" ? 1 : 2);
  }
  CHECK_EQ(errors, 1);
  CHECK(ids == (std::set<std::string>{"1", "3"}));
}

void TestBridge() {
  Server server;
  H2Client client(server.fe->port());
  const std::string hello = "hello";
  client.Call(1, "/grpc.health.v1.Health/Check", &hello, true, "5S");
  std::vector<BridgeEvent> events, some;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (events.size() < 3 && std::chrono::steady_clock::now() < until) {
    pollfd p{server.fe->bridge_fd(), POLLIN, 0};
    poll(&p, 1, 20);
    server.fe->PollBridge(&some);
    for (auto& e : some) events.push_back(std::move(e));
  }
  CHECK_EQ(events.size(), size_t{3});
  CHECK(events[0].kind == BridgeEvent::Kind::kStart);
  CHECK_STR(events[0].path, "/grpc.health.v1.Health/Check");
  CHECK(events[0].timeout_ns == 5'000'000'000LL);
  CHECK(events[0].peer.rfind("ipv4:127.0.0.1:", 0) == 0);
  bool saw_te = false;
  for (const auto& [k, v] : events[0].metadata) saw_te |= (k == "te" && v == "trailers");
  CHECK(saw_te);
  CHECK(events[1].kind == BridgeEvent::Kind::kMessage);
  CHECK_STR(events[1].data, "hello");
  CHECK(events[2].kind == BridgeEvent::Kind::kHalfClose);
  const uint64_t call = events[0].call;
  CHECK(server.fe->BridgeSend(call, "world"));
  CHECK(server.fe->BridgeFinish(call, 7, "no 100% sure"));
  CHECK(client.WaitEnded(1));
  const StreamResult& s = client.streams_[1];
  CHECK_EQ(s.messages.size(), size_t{1});
  CHECK_STR(s.messages[0], "world");
  CHECK_EQ(s.grpc_status(), 7);
  CHECK_STR(s.grpc_message(), "no 100%25 sure");  // percent-encoded on the wire
  CHECK(!server.fe->BridgeFinish(call, 0, ""));     // gone now

  // A bridged call the client resets: Python is told.
  client.Call(3, "/x.Y/Z", nullptr, false);
  events.clear();
  while (events.empty() && std::chrono::steady_clock::now() < until) {
    pollfd p{server.fe->bridge_fd(), POLLIN, 0};
    poll(&p, 1, 20);
    server.fe->PollBridge(&events);
  }
  CHECK(!events.empty() && events[0].kind == BridgeEvent::Kind::kStart);
  client.Reset(3);
  std::vector<BridgeEvent> later;
  while (later.empty() && std::chrono::steady_clock::now() < until) {
    pollfd p{server.fe->bridge_fd(), POLLIN, 0};
    poll(&p, 1, 20);
    server.fe->PollBridge(&later);
  }
  CHECK(!later.empty() && later[0].kind == BridgeEvent::Kind::kCancel && later[0].call == events[0].call);
  CHECK(!server.fe->BridgeSend(events[0].call, "late"));
}

void TestShutdownDrains() {
  Server server;
  H2Client client(server.fe->port());
  server.executor->HoldNext();  // the first request's batch waits
  const std::string request = InferRequest("m", 5, 1);
  client.Call(1, kInfer, &request);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!server.executor->Holding() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(server.executor->Holding());
  server.fe->Shutdown();
  CHECK(client.ReadUntil([&] { return client.goaway_; }));
  CHECK(client.goaway_code_ == h2::ErrorCode::kNoError);
  CHECK_EQ(client.goaway_last_, 1u);
  CHECK(!server.fe->WaitIdle(50'000'000));  // the call is still open
  // A new connection is refused by the kernel now.
  {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(server.fe->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0);
    close(fd);
  }
  server.executor->Release();
  CHECK(client.WaitEnded(1));
  CHECK_EQ(client.streams_[1].grpc_status(), 0);
  CHECK(server.fe->WaitIdle(5'000'000'000));
}

void TestPortInUse() {
  Server first;
  InferenceCore core(16);
  FrontendOptions o;
  o.host = "127.0.0.1";
  o.port = first.fe->port();
  std::unique_ptr<GrpcFrontend> second;
  const Status s = GrpcFrontend::Create(&core, o, &second);
  CHECK(!s.ok());
  CHECK(s.code() == StatusCode::kUnavailable);
  CHECK(s.message().find("address already in use") != std::string::npos);
  CHECK(s.message().find("127.0.0.1:" + std::to_string(first.fe->port())) != std::string::npos);
}

void TestMaxConnections() {
  FrontendOptions o;
  o.max_connections = 1;
  o.io_threads = 1;
  Server server(o);
  H2Client a(server.fe->port());
  const std::string request = InferRequest("m", 1, 1);
  a.Call(1, kInfer, &request);
  CHECK(a.WaitEnded(1));  // a is accepted and counted
  H2Client b(server.fe->port());
  CHECK(b.ReadUntil([&] { return b.goaway_; }));
  CHECK(b.goaway_debug_.find("limit of 1 connections") != std::string::npos);
  CHECK_EQ(server.fe->Stats().connections_refused, uint64_t{1});
}

void TestResetQueuedRequest() {
  Server server;
  H2Client client(server.fe->port());
  server.executor->HoldNext();
  const std::string first = InferRequest("m", 1, 1);
  client.Call(1, kInfer, &first);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!server.executor->Holding() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const std::string second = InferRequest("m", 2, 1);
  client.Call(3, kInfer, &second);  // queued behind the held batch
  client.Reset(3);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  server.executor->Release();
  CHECK(client.WaitEnded(1));
  CHECK_EQ(client.streams_[1].grpc_status(), 0);
  // The withdrawn request is never executed and its pool slot comes back.
  const auto later = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (server.core.pool().in_use() != 0 && std::chrono::steady_clock::now() < later)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK_EQ(server.core.pool().in_use(), 0u);
  CHECK_EQ(server.executor->Seen().size(), size_t{1});  // only the first request ran
}

void TestConnectionsSpreadOverThreads() {
  FrontendOptions o;
  o.io_threads = 2;
  Server server(o);
  std::vector<std::unique_ptr<H2Client>> clients;
  for (int i = 0; i < 8; ++i) {  // one after another: each accept finds both threads idle
    clients.push_back(std::make_unique<H2Client>(server.fe->port()));
    const std::string request = InferRequest("m", static_cast<uint32_t>(i), 1);
    clients.back()->Call(1, kInfer, &request);
    CHECK(clients.back()->WaitEnded(1));
    CHECK_EQ(clients.back()->streams_[1].grpc_status(), 0);
  }
  const FrontendStats st = server.fe->Stats();
  CHECK_EQ(st.connections_per_thread.size(), size_t{2});
  CHECK_EQ(st.connections_per_thread[0], uint64_t{4});
  CHECK_EQ(st.connections_per_thread[1], uint64_t{4});
}

void TestOversizedStreamAnswerEndsTheCall() {
  // Regression: an answer over max_message_bytes on a ModelStreamInfer stream was refused
  // by the connection (RESOURCE_EXHAUSTED) while the frontend kept the call open, so the
  // server never became idle and shutdown waited out its grace.
  FrontendOptions o;
  o.limits.max_message_bytes = 100;
  Server server(o);
  H2Client client(server.fe->port());
  const std::string bad = InferRequest("../x", 1, 1);  // answered by a ~170-byte error
  CHECK(bad.size() < 100);
  client.Call(1, kStreamInfer, nullptr, /*end_stream=*/false);
  client.Message(1, bad, false);
  CHECK(client.WaitEnded(1));
  CHECK_EQ(client.streams_[1].grpc_status(), 8);
  CHECK(server.fe->WaitIdle(2'000'000'000));
  CHECK_EQ(server.fe->Stats().streams_open, uint64_t{0});
}

}  // namespace

#define RUN(t)                       \
  do {                               \
    std::printf("%s\n", #t);         \
    std::fflush(stdout);             \
    t();                             \
  } while (0)

int main() {
  TestRequestIds();
  RUN(TestUnaryInfer);
  RUN(TestErrorsAreTrailers);
  RUN(TestManyClientsConcurrently);
  RUN(TestStreamInfer);
  RUN(TestBridge);
  RUN(TestShutdownDrains);
  RUN(TestPortInUse);
  RUN(TestMaxConnections);
  RUN(TestResetQueuedRequest);
  RUN(TestConnectionsSpreadOverThreads);
  RUN(TestOversizedStreamAnswerEndsTheCall);
  std::printf("grpc_frontend_test: all passed\n");
  return 0;
}
