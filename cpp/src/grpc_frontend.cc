#include "steadyserve/grpc_frontend.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "steadyserve/completion_queue.h"
#include "steadyserve/inference_core.h"
#include "steadyserve/request.h"

namespace steadyserve {

namespace {

constexpr std::string_view kModelInferPath = "/inference.GRPCInferenceService/ModelInfer";
constexpr std::string_view kModelStreamInferPath = "/inference.GRPCInferenceService/ModelStreamInfer";

// gRPC status codes the frontend itself sends.
constexpr int kGrpcOk = 0;
constexpr int kGrpcInternal = 13;
constexpr int kGrpcResourceExhausted = 8;

// Connection serials are 27 bits so that (thread, serial, stream id) fits a
// 64-bit tag: 6 bits of thread, 27 of serial, 31 of stream id.
constexpr int kStreamBits = 31;
constexpr int kSerialBits = 27;
constexpr uint64_t kSerialMask = (uint64_t{1} << kSerialBits) - 1;
constexpr uint64_t kStreamMask = (uint64_t{1} << kStreamBits) - 1;
constexpr int kMaxIoThreads = 64;

uint64_t MakeTag(int thread, uint64_t serial, uint32_t stream_id) {
  return (static_cast<uint64_t>(thread) << (kSerialBits + kStreamBits)) | (serial << kStreamBits) | stream_id;
}
int TagThread(uint64_t tag) { return static_cast<int>(tag >> (kSerialBits + kStreamBits)); }
uint64_t TagSerial(uint64_t tag) { return (tag >> kStreamBits) & kSerialMask; }
uint32_t TagStream(uint64_t tag) { return static_cast<uint32_t>(tag & kStreamMask); }

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// A ModelStreamInferResponse: field 1 error_message (string) or field 2
// infer_response (an already serialized ModelInferResponse).
constexpr char kErrorMessageTag = 0x0a;   // field 1, length-delimited
constexpr char kInferResponseTag = 0x12;  // field 2, length-delimited

void EncodeStreamField(char tag, std::string_view payload, std::string* out) {
  out->clear();
  out->push_back(tag);
  AppendVarint(payload.size(), out);
  out->append(payload);
}

void EncodeStreamResponse(const Request& r, std::string* out) {
  if (r.code == StatusCode::kOk) EncodeStreamField(kInferResponseTag, r.response, out);
  else EncodeStreamField(kErrorMessageTag, r.message, out);
}

std::string PeerName(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return std::string("ipv4:") + host + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return std::string("ipv6:[") + host + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "unknown";
}

std::string HostPort(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// epoll_data.u64 of the fixed fds; a connection's is its Conn pointer.
constexpr uint64_t kListenerKey = 1;
constexpr uint64_t kWakeKey = 2;
constexpr uint64_t kCompletionKey = 3;

constexpr size_t kReadChunk = 64 * 1024;
constexpr int kReadsPerWakeup = 8;  // per connection: fairness between busy connections
constexpr int kAcceptsPerWakeup = 64;
constexpr int kMaxEvents = 256;
constexpr int64_t kSweepIntervalNs = 250'000'000;
constexpr int kKeepaliveIdleS = 60, kKeepaliveIntervalS = 10, kKeepaliveProbes = 3;  // how often every connection's timeouts are checked

}  // namespace

// ---------------------------------------------------------------------------
// One I/O thread: an epoll set over the listener, its connections, a wake-up
// eventfd (mail from other threads) and its completion queue.
// ---------------------------------------------------------------------------
class GrpcFrontend::IoThread {
 public:
  IoThread(GrpcFrontend* fe, int index) : fe_(fe), index_(index) {}
  ~IoThread() {
    if (epfd_ >= 0) close(epfd_);
    if (wake_fd_ >= 0) close(wake_fd_);
  }

  Status Init();
  void StartThread() { thread_ = std::thread([this] { Run(); }); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  struct Mail {
    // kAdopt: a connection another thread accepted (fd in `code`, peer name in `data`).
    enum class Kind : uint8_t { kSend, kFinish, kAdopt, kShutdown, kStop } kind;
    uint64_t call = 0;
    int code = 0;
    std::string data;
  };
  void Post(Mail mail) {
    {
      std::lock_guard<std::mutex> lock(mail_mu_);
      mail_.push_back(std::move(mail));
    }
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof(one));
  }

  // Answers still in the queue once the thread is gone (Stop): released.
  void ReleaseLeftovers();

  // Figures, written by the thread, read by Stats().
  std::atomic<uint64_t> wakeups{0};
  std::atomic<uint64_t> open_connections{0};
  std::atomic<uint64_t> memory_bytes{0};
  std::atomic<uint64_t> streams_refused{0};
  std::atomic<uint64_t> streams_reset_by_peer{0};
  std::atomic<uint64_t> protocol_errors{0};

 private:
  class Conn;
  friend class Conn;

  void Run();
  void Accept();
  void Adopt(int fd, std::string peer);
  void RefuseConnection(int fd);
  void OnMail();
  void OnCompletions();
  void OnReadable(Conn* c);
  void Flush(Conn* c);
  void UpdateInterest(Conn* c);
  void Close(Conn* c);
  void Sweep(int64_t now);
  void MarkDirty(Conn* c);
  void ShutdownAll();
  Conn* FindConn(uint64_t serial) {
    auto it = conns_.find(serial);
    return it == conns_.end() ? nullptr : it->second.get();
  }

  GrpcFrontend* fe_;
  int index_;
  int epfd_ = -1;
  int wake_fd_ = -1;
  CompletionQueue cq_;
  std::thread thread_;
  bool listening_ = false;
  bool shutting_down_ = false;
  bool stop_ = false;

  std::mutex mail_mu_;
  std::vector<Mail> mail_;
  std::vector<Mail> mail_scratch_;

  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  uint64_t next_serial_ = 1;
  std::vector<Conn*> dirty_;
  std::vector<Conn*> closing_;
  std::vector<Request*> answers_;
  std::string scratch_;       // stream responses
  std::string id_scratch_;    // a generated request id
  double log_credit_ = 0;     // sampling: a request is recorded each time this reaches 1
  std::string model_name_;    // SubmitWire's out-parameter, reused
  std::vector<uint8_t> read_buf_ = std::vector<uint8_t>(kReadChunk);
  // Protocol figures of connections already closed.
  uint64_t closed_refused_ = 0, closed_resets_ = 0, closed_errors_ = 0;
};

// A connection: the socket, its HTTP/2 state and the calls on it.
class GrpcFrontend::IoThread::Conn : public h2::StreamHandler {
 public:
  enum class Kind : uint8_t { kInfer, kStreamInfer, kBridge };
  struct Call {
    Kind kind = Kind::kInfer;
    bool id_generated = false;  // no x-request-id came: a V2 id may replace the generated one
    int64_t deadline_ns = 0;
    bool got_message = false;  // kInfer: its one message arrived
    bool half_closed = false;
    // Requests queued in the core (handles, for cancel): one for ModelInfer,
    // any number for a stream. Small vectors; a stream's rarely holds many.
    std::vector<uint64_t> queued;
  };

  Conn(IoThread* t, int fd, uint64_t serial, std::string peer, int64_t now)
      : t_(t), fd_(fd), serial_(serial), peer_(std::move(peer)) {
    h2_ = std::make_unique<h2::H2Connection>(t->fe_->options_.limits, this, now);
  }

  // h2::StreamHandler
  void OnStreamStart(const h2::StreamStart& start) override;
  void OnStreamMessage(uint32_t stream_id, std::string_view message) override;
  void OnStreamHalfClose(uint32_t stream_id) override;
  void OnStreamReset(uint32_t stream_id) override;

  // An answer from the core for one of this connection's calls (any request
  // of it: the tag names the stream, the handle the request).
  void Answer(uint32_t stream_id, Request* r);
  // Python's answers on a bridged call.
  void BridgeSend(uint32_t stream_id, std::string_view message);
  void BridgeFinish(uint32_t stream_id, int code, std::string_view message);

  h2::H2Connection& h2() { return *h2_; }
  void DestroyH2() { h2_.reset(); }
  int fd() const { return fd_; }
  uint64_t serial() const { return serial_; }

  uint32_t interest = 0;  // epoll events registered now
  bool dirty = false;
  bool closed = false;

 private:
  void Submit(uint32_t stream_id, Call& call, std::string_view message);
  // One message on a call's stream; false (and the call forgotten) when it was refused.
  bool Send(uint32_t stream_id, std::string_view message);
  // Ends a call with trailers and forgets it.
  void End(uint32_t stream_id, int code, std::string_view message);
  // Forgets a call that ended (finished or reset): counters, bridge slot.
  void Forget(std::unordered_map<uint32_t, Call>::iterator it);
  void CancelQueued(Call& call);

  IoThread* t_;
  int fd_;
  uint64_t serial_;
  std::string peer_;
  std::unique_ptr<h2::H2Connection> h2_;
  std::unordered_map<uint32_t, Call> calls_;
};

// --- Conn -------------------------------------------------------------------

void GrpcFrontend::IoThread::Conn::OnStreamStart(const h2::StreamStart& start) {
  GrpcFrontend* fe = t_->fe_;
  Kind kind = Kind::kBridge;
  if (start.path == kModelInferPath) kind = Kind::kInfer;
  else if (start.path == kModelStreamInferPath) kind = Kind::kStreamInfer;
  if (kind == Kind::kBridge && !fe->BridgeAdmit()) {
    h2_->Finish(start.stream_id, kGrpcResourceExhausted,
                "server is at its limit of " + std::to_string(fe->options_.max_bridged_calls) +
                    " open calls of methods other than ModelInfer");
    return;
  }
  fe->StreamOpened();
  auto [it, inserted] = calls_.try_emplace(start.stream_id);
  Call& call = it->second;
  call = Call();
  call.kind = kind;
  if (start.request_id.empty()) {
    std::string& id = t_->id_scratch_;
    id = fe->id_tag_;
    id += '-';
    id += std::to_string(t_->index_);
    id += '-';
    id += std::to_string(serial_);
    id += '-';
    id += std::to_string(start.stream_id);
    h2_->SetRequestId(start.stream_id, id);
    call.id_generated = true;
  }
  if (start.timeout_ns >= 0) {
    const int64_t now = NowNs();
    const int64_t budget = std::max<int64_t>(1, start.timeout_ns - fe->options_.response_allowance_ns);
    call.deadline_ns = now + std::min<int64_t>(budget, INT64_MAX / 4);
  }
  if (kind == Kind::kBridge) {
    const uint64_t id = MakeTag(t_->index_, serial_, start.stream_id);
    {
      std::lock_guard<std::mutex> lock(fe->bridge_mu_);
      fe->bridge_live_.insert(id);
    }
    BridgeEvent e;
    e.kind = BridgeEvent::Kind::kStart;
    e.call = id;
    e.path.assign(start.path);
    if (start.headers != nullptr) {
      e.metadata.reserve(start.headers->size());
      for (const auto& f : *start.headers) e.metadata.emplace_back(std::string(f.name), std::string(f.value));
    }
    e.timeout_ns = start.timeout_ns;
    e.peer = peer_;
    fe->PushBridge(std::move(e));
    fe->bridged_calls_.fetch_add(1, std::memory_order_relaxed);
  }
}

void GrpcFrontend::IoThread::Conn::OnStreamMessage(uint32_t stream_id, std::string_view message) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;
  Call& call = it->second;
  switch (call.kind) {
    case Kind::kInfer:
      if (call.got_message) {
        CancelQueued(call);
        End(stream_id, kGrpcInternal, "ModelInfer takes exactly one request message; a second one arrived");
        return;
      }
      call.got_message = true;
      Submit(stream_id, call, message);
      return;
    case Kind::kStreamInfer:
      Submit(stream_id, call, message);
      return;
    case Kind::kBridge: {
      BridgeEvent e;
      e.kind = BridgeEvent::Kind::kMessage;
      e.call = MakeTag(t_->index_, serial_, stream_id);
      e.data.assign(message);
      t_->fe_->PushBridge(std::move(e));
      return;
    }
  }
}

void GrpcFrontend::IoThread::Conn::OnStreamHalfClose(uint32_t stream_id) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;
  Call& call = it->second;
  call.half_closed = true;
  switch (call.kind) {
    case Kind::kInfer:
      if (!call.got_message) End(stream_id, kGrpcInternal, "ModelInfer got no request message before the end of the stream");
      return;
    case Kind::kStreamInfer:
      if (call.queued.empty()) End(stream_id, kGrpcOk, "");
      return;
    case Kind::kBridge: {
      BridgeEvent e;
      e.kind = BridgeEvent::Kind::kHalfClose;
      e.call = MakeTag(t_->index_, serial_, stream_id);
      t_->fe_->PushBridge(std::move(e));
      return;
    }
  }
}

void GrpcFrontend::IoThread::Conn::OnStreamReset(uint32_t stream_id) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;
  Call& call = it->second;
  const bool bridged = call.kind == Kind::kBridge;
  if (!bridged) CancelQueued(call);
  // Forgotten before Python hears of it: once it sees the cancel, answers are refused.
  Forget(it);
  if (bridged) {
    BridgeEvent e;
    e.kind = BridgeEvent::Kind::kCancel;
    e.call = MakeTag(t_->index_, serial_, stream_id);
    t_->fe_->PushBridge(std::move(e));
  }
}

void GrpcFrontend::IoThread::Conn::CancelQueued(Call& call) {
  InferenceCore* core = t_->fe_->core_;
  // A cancel that loses (the answer is on its way) leaves the answer to reach
  // the completion queue, where no call claims it and it is released.
  for (uint64_t handle : call.queued) core->Cancel(handle);
  call.queued.clear();
}

void GrpcFrontend::IoThread::Conn::Submit(uint32_t stream_id, Call& call, std::string_view message) {
  GrpcFrontend* fe = t_->fe_;
  fe->native_requests_.fetch_add(1, std::memory_order_relaxed);
  bool queued = false;
  uint64_t handle = 0;
  Request* answer = nullptr;
  const Status s =
      fe->core_->SubmitWire(reinterpret_cast<const uint8_t*>(message.data()), message.size(), call.deadline_ns,
                            &t_->cq_, MakeTag(t_->index_, serial_, stream_id), &queued, &handle, &answer,
                            &t_->model_name_, h2_->RequestId(stream_id),
                            call.kind == Kind::kInfer && !call.id_generated);
  if (queued) {
    call.queued.push_back(handle);
    return;
  }
  if (!s.ok()) {
    if (call.kind == Kind::kInfer) {
      End(stream_id, static_cast<int>(s.code()), s.message());
    } else {
      EncodeStreamField(kErrorMessageTag, s.message(), &t_->scratch_);
      Send(stream_id, t_->scratch_);
    }
    return;
  }
  // Answered at once (a refusal, or a default output).
  call.queued.push_back(answer->Handle());
  Answer(stream_id, answer);
  fe->core_->Release(answer);
}

void GrpcFrontend::IoThread::Conn::Answer(uint32_t stream_id, Request* r) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;  // the call is gone (reset): nobody wants the answer
  Call& call = it->second;
  auto q = std::find(call.queued.begin(), call.queued.end(), r->Handle());
  if (q == call.queued.end()) return;  // an answer to a request this call no longer waits for
  call.queued.erase(q);
  if (call.id_generated && call.kind == Kind::kInfer && !r->id.empty()) {
    h2_->SetRequestId(stream_id, r->id);  // the V2 id, when the headers brought none
    call.id_generated = false;
  }
  const double rate = t_->fe_->options_.log_sample_rate;
  if (rate > 0) {
    t_->log_credit_ += rate;
    if (t_->log_credit_ >= 1.0) {
      t_->log_credit_ -= 1.0;
      RequestLogRecord rec;
      rec.request_id = r->request_id;
      rec.model = r->model;
      rec.answered_by = r->answered_by;
      rec.answered_version = r->answered_version;
      rec.grpc_status = static_cast<int>(r->code);
      if (r->code != StatusCode::kOk) rec.message = r->message;
      rec.latency_ns = NowNs() - r->arrival_ns;
      rec.failover = r->failover;
      t_->fe_->Record(std::move(rec));
    }
  }
  if (call.kind == Kind::kInfer) {
    if (r->code == StatusCode::kOk) {
      if (Send(stream_id, r->response)) End(stream_id, kGrpcOk, "");
    } else {
      End(stream_id, static_cast<int>(r->code), r->message);
    }
    return;
  }
  EncodeStreamResponse(*r, &t_->scratch_);
  if (!Send(stream_id, t_->scratch_)) return;  // the call is over
  if (call.half_closed && call.queued.empty()) End(stream_id, kGrpcOk, "");
}

void GrpcFrontend::IoThread::Conn::BridgeSend(uint32_t stream_id, std::string_view message) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end() || it->second.kind != Kind::kBridge) return;
  Send(stream_id, message);
}

bool GrpcFrontend::IoThread::Conn::Send(uint32_t stream_id, std::string_view message) {
  if (h2_->SendMessage(stream_id, message)) return true;
  // Refused (an answer over max_message_bytes): the connection has finished the stream
  // RESOURCE_EXHAUSTED on its own, so the call ends here as if reset - its queued requests
  // are withdrawn and Python hears of a bridged one - instead of staying open for good.
  OnStreamReset(stream_id);
  return false;
}

void GrpcFrontend::IoThread::Conn::BridgeFinish(uint32_t stream_id, int code, std::string_view message) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end() || it->second.kind != Kind::kBridge) return;
  End(stream_id, code, message);
}

void GrpcFrontend::IoThread::Conn::End(uint32_t stream_id, int code, std::string_view message) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;
  // Forget before Finish: the call is over whatever the connection does next.
  Forget(it);
  h2_->Finish(stream_id, code, message);
}

void GrpcFrontend::IoThread::Conn::Forget(std::unordered_map<uint32_t, Call>::iterator it) {
  GrpcFrontend* fe = t_->fe_;
  if (it->second.kind == Kind::kBridge) {
    {
      std::lock_guard<std::mutex> lock(fe->bridge_mu_);
      fe->bridge_live_.erase(MakeTag(t_->index_, serial_, it->first));
    }
    fe->BridgeDone();
  }
  calls_.erase(it);
  fe->StreamClosed();
}

// --- IoThread ---------------------------------------------------------------

Status GrpcFrontend::IoThread::Init() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epfd_ < 0 || wake_fd_ < 0 || cq_.fd() < 0)
    return Status(StatusCode::kUnavailable, std::string("I/O thread: cannot create epoll/eventfd: ") +
                                                std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeKey;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  ev.data.u64 = kCompletionKey;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, cq_.fd(), &ev);
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = kListenerKey;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, fe_->listen_fd_, &ev) != 0)
    return Status(StatusCode::kUnavailable, std::string("I/O thread: cannot watch the listening socket: ") +
                                                std::strerror(errno));
  listening_ = true;
  return Status::Ok();
}

void GrpcFrontend::IoThread::Run() {
  const std::string name = "ss-io-" + std::to_string(index_);
  pthread_setname_np(pthread_self(), name.c_str());
  epoll_event events[kMaxEvents];
  int64_t next_sweep = NowNs() + kSweepIntervalNs;
  while (!stop_) {
    const int64_t now0 = NowNs();
    const int timeout_ms = static_cast<int>(std::max<int64_t>(0, (next_sweep - now0) / 1'000'000) + 1);
    const int n = epoll_wait(epfd_, events, kMaxEvents, timeout_ms);
    if (n < 0 && errno != EINTR) break;
    if (n > 0) wakeups.fetch_add(1, std::memory_order_relaxed);
    bool completions = false, mail = false;
    for (int i = 0; i < n; ++i) {
      const uint64_t key = events[i].data.u64;
      if (key == kListenerKey) {
        Accept();
      } else if (key == kWakeKey) {
        mail = true;
      } else if (key == kCompletionKey) {
        completions = true;
      } else {
        Conn* c = reinterpret_cast<Conn*>(key);
        if (c->closed) continue;
        const uint32_t e = events[i].events;
        if (e & (EPOLLIN | EPOLLHUP | EPOLLERR)) OnReadable(c);
        if (!c->closed && (e & EPOLLOUT)) MarkDirty(c);
      }
    }
    // Answers and mail after the reads: a batch's answers and the requests that
    // came with them leave in the same writes.
    if (completions) OnCompletions();
    if (mail) OnMail();
    for (Conn* c : dirty_) {
      c->dirty = false;
      if (!c->closed) Flush(c);
    }
    dirty_.clear();
    const int64_t now = NowNs();
    if (now >= next_sweep) {
      Sweep(now);
      next_sweep = now + kSweepIntervalNs;
    }
    for (Conn* c : closing_) conns_.erase(c->serial());
    closing_.clear();
  }
  // Stopping: every connection closes, its calls cancelled.
  for (auto& [serial, c] : conns_)
    if (!c->closed) Close(c.get());
  conns_.clear();
  closing_.clear();
  if (listening_) epoll_ctl(epfd_, EPOLL_CTL_DEL, fe_->listen_fd_, nullptr);
}

void GrpcFrontend::IoThread::Accept() {
  for (int i = 0; i < kAcceptsPerWakeup; ++i) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    const int fd = accept4(fe_->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;  // EAGAIN (another thread took it), or a transient error: epoll tells us again
    if (shutting_down_) {
      close(fd);
      continue;
    }
    if (fe_->connections_open_.load(std::memory_order_relaxed) >= fe_->options_.max_connections) {
      RefuseConnection(fd);
      continue;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    // A peer that vanished without a FIN (a half-open connection) is found by TCP
    // keepalive within ~90 s: the socket then errors and the connection is closed, even
    // while it has calls open (the idle timeout only covers connections without any).
    const int idle_s = kKeepaliveIdleS, interval_s = kKeepaliveIntervalS, probes = kKeepaliveProbes;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
    fe_->connections_open_.fetch_add(1, std::memory_order_relaxed);
    fe_->connections_accepted_.fetch_add(1, std::memory_order_relaxed);
    // Round robin over the threads: the kernel wakes whichever thread waits
    // first (EPOLLEXCLUSIVE), which on a quiet server is nearly always the same
    // one, and connections stay where they land.
    const size_t n = fe_->threads_.size();
    const size_t target = fe_->next_thread_.fetch_add(1, std::memory_order_relaxed) % n;
    if (target == static_cast<size_t>(index_)) {
      Adopt(fd, PeerName(addr));
    } else {
      fe_->threads_[target]->Post({Mail::Kind::kAdopt, 0, fd, PeerName(addr)});
    }
  }
}

void GrpcFrontend::IoThread::Adopt(int fd, std::string peer) {
  if (shutting_down_ || stop_) {
    close(fd);
    fe_->connections_open_.fetch_sub(1, std::memory_order_relaxed);
    return;
  }
  uint64_t serial = next_serial_;
  while (serial == 0 || conns_.count(serial) != 0) serial = (serial + 1) & kSerialMask;
  next_serial_ = (serial + 1) & kSerialMask;
  auto conn = std::make_unique<Conn>(this, fd, serial, std::move(peer), NowNs());
  Conn* c = conn.get();
  conns_.emplace(serial, std::move(conn));
  open_connections.fetch_add(1, std::memory_order_relaxed);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = reinterpret_cast<uint64_t>(c);
  c->interest = EPOLLIN;
  epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
  MarkDirty(c);  // our SETTINGS go out at once
}

void GrpcFrontend::IoThread::RefuseConnection(int fd) {
  fe_->connections_refused_.fetch_add(1, std::memory_order_relaxed);
  // SETTINGS then GOAWAY naming the limit; best effort, the socket is new and
  // its buffer empty, so one write takes it.
  std::string out;
  h2::AppendSettings(nullptr, 0, &out);
  h2::AppendGoaway(0, h2::ErrorCode::kRefusedStream,
                   "server is at its limit of " + std::to_string(fe_->options_.max_connections) + " connections",
                   &out);
  [[maybe_unused]] ssize_t n = send(fd, out.data(), out.size(), MSG_NOSIGNAL);
  close(fd);
}

void GrpcFrontend::IoThread::OnReadable(Conn* c) {
  h2::H2Connection& h2 = c->h2();
  for (int i = 0; i < kReadsPerWakeup && h2.wants_read() && !h2.done(); ++i) {
    const ssize_t n = recv(c->fd(), read_buf_.data(), read_buf_.size(), 0);
    if (n > 0) {
      if (!h2.Receive(read_buf_.data(), static_cast<size_t>(n), NowNs())) break;
      if (static_cast<size_t>(n) < read_buf_.size()) break;  // drained for now
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
    // EOF or a socket error: the peer is gone; whatever we had to say is moot.
    Close(c);
    return;
  }
  MarkDirty(c);
}

void GrpcFrontend::IoThread::MarkDirty(Conn* c) {
  if (c->dirty) return;
  c->dirty = true;
  dirty_.push_back(c);
}

void GrpcFrontend::IoThread::Flush(Conn* c) {
  h2::H2Connection& h2 = c->h2();
  while (!h2.output().empty()) {
    const std::string& out = h2.output();
    const ssize_t n = send(c->fd(), out.data(), out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      h2.ConsumeOutput(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) break;
    Close(c);
    return;
  }
  if (h2.done() && h2.output().empty()) {
    Close(c);
    return;
  }
  UpdateInterest(c);
}

void GrpcFrontend::IoThread::UpdateInterest(Conn* c) {
  h2::H2Connection& h2 = c->h2();
  uint32_t want = 0;
  if (h2.wants_read() && !h2.done()) want |= EPOLLIN;
  if (!h2.output().empty()) want |= EPOLLOUT;
  if (want == c->interest) return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = reinterpret_cast<uint64_t>(c);
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c->fd(), &ev);
  c->interest = want;
}

void GrpcFrontend::IoThread::Close(Conn* c) {
  if (c->closed) return;
  c->closed = true;
  epoll_ctl(epfd_, EPOLL_CTL_DEL, c->fd(), nullptr);
  close(c->fd());
  c->h2().Abort();  // every started stream is told (OnStreamReset): queued requests are cancelled
  const h2::ConnectionStats& s = c->h2().stats();
  closed_refused_ += s.streams_refused;
  closed_resets_ += s.streams_reset_by_peer;
  closed_errors_ += s.protocol_errors;
  c->DestroyH2();
  fe_->connections_open_.fetch_sub(1, std::memory_order_relaxed);
  open_connections.fetch_sub(1, std::memory_order_relaxed);
  closing_.push_back(c);  // freed after this iteration: later events may still name it
}

void GrpcFrontend::IoThread::OnCompletions() {
  cq_.Drain(&answers_);
  InferenceCore* core = fe_->core_;
  for (Request* r : answers_) {
    const uint64_t tag = r->user_tag;
    Conn* c = FindConn(TagSerial(tag));
    if (c != nullptr && !c->closed) {
      c->Answer(TagStream(tag), r);
      MarkDirty(c);
    }
    core->Release(r);
  }
  answers_.clear();
}

void GrpcFrontend::IoThread::OnMail() {
  uint64_t value;
  [[maybe_unused]] ssize_t n = read(wake_fd_, &value, sizeof(value));
  {
    std::lock_guard<std::mutex> lock(mail_mu_);
    mail_scratch_.swap(mail_);
  }
  for (Mail& m : mail_scratch_) {
    switch (m.kind) {
      case Mail::Kind::kSend:
      case Mail::Kind::kFinish: {
        Conn* c = FindConn(TagSerial(m.call));
        if (c == nullptr || c->closed) break;
        if (m.kind == Mail::Kind::kSend) c->BridgeSend(TagStream(m.call), m.data);
        else c->BridgeFinish(TagStream(m.call), m.code, m.data);
        MarkDirty(c);
        break;
      }
      case Mail::Kind::kAdopt:
        Adopt(m.code, std::move(m.data));
        break;
      case Mail::Kind::kShutdown:
        ShutdownAll();
        break;
      case Mail::Kind::kStop:
        stop_ = true;
        break;
    }
  }
  mail_scratch_.clear();
}

void GrpcFrontend::IoThread::ShutdownAll() {
  if (shutting_down_) return;
  shutting_down_ = true;
  if (listening_) {
    epoll_ctl(epfd_, EPOLL_CTL_DEL, fe_->listen_fd_, nullptr);
    listening_ = false;
  }
  for (auto& [serial, c] : conns_) {
    if (c->closed) continue;
    c->h2().Shutdown();
    MarkDirty(c.get());
  }
  {
    std::lock_guard<std::mutex> lock(fe_->shutdown_mu_);
    ++fe_->threads_shut_;
  }
  fe_->shutdown_cv_.notify_all();
}

void GrpcFrontend::IoThread::Sweep(int64_t now) {
  uint64_t memory = 0, refused = closed_refused_, resets = closed_resets_, errors = closed_errors_;
  for (auto& [serial, conn] : conns_) {
    Conn* c = conn.get();
    if (c->closed) continue;
    if (!c->h2().Tick(now)) {
      MarkDirty(c);
      Flush(c);
      if (!c->closed) Close(c);
      continue;
    }
    if (!c->h2().output().empty()) MarkDirty(c);
    memory += c->h2().memory_bytes();
    const h2::ConnectionStats& s = c->h2().stats();
    refused += s.streams_refused;
    resets += s.streams_reset_by_peer;
    errors += s.protocol_errors;
  }
  for (Conn* c : dirty_) {
    c->dirty = false;
    if (!c->closed) Flush(c);
  }
  dirty_.clear();
  memory_bytes.store(memory, std::memory_order_relaxed);
  streams_refused.store(refused, std::memory_order_relaxed);
  streams_reset_by_peer.store(resets, std::memory_order_relaxed);
  protocol_errors.store(errors, std::memory_order_relaxed);
}

void GrpcFrontend::IoThread::ReleaseLeftovers() {
  std::lock_guard<std::mutex> lock(mail_mu_);
  for (Mail& m : mail_) {
    if (m.kind != Mail::Kind::kAdopt) continue;
    close(m.code);  // handed over after the thread stopped
    fe_->connections_open_.fetch_sub(1, std::memory_order_relaxed);
  }
  mail_.clear();
  cq_.Drain(&answers_);
  for (Request* r : answers_) fe_->core_->Release(r);
  answers_.clear();
}

// --- GrpcFrontend -----------------------------------------------------------

GrpcFrontend::GrpcFrontend(InferenceCore* core, const FrontendOptions& options) : core_(core), options_(options) {
  std::random_device random;
  char tag[17];
  std::snprintf(tag, sizeof(tag), "%08x%08x", random(), random());
  id_tag_ = tag;
}

void GrpcFrontend::Record(RequestLogRecord record) {
  std::lock_guard<std::mutex> lock(log_mu_);
  if (log_.size() >= options_.max_log_records) {
    ++log_dropped_;
    return;
  }
  log_.push_back(std::move(record));
}

std::vector<RequestLogRecord> GrpcFrontend::TakeRequestLog(uint64_t* dropped) {
  std::vector<RequestLogRecord> out;
  std::lock_guard<std::mutex> lock(log_mu_);
  out.swap(log_);
  *dropped = log_dropped_;
  log_dropped_ = 0;
  return out;
}

namespace {

// Binds host:port (no SO_REUSEPORT) and listens; the fd or -1 with *error set.
int Listen(const std::string& host, int port, std::string* error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found);
  if (rc != 0) {
    *error = gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      *error = std::strerror(errno);
      continue;
    }
    // SO_REUSEADDR only lets us rebind a port whose old connections linger in
    // TIME_WAIT; unlike SO_REUSEPORT it never shares a listening port.
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 1024) == 0) break;
    *error = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(found);
  if (fd >= 0) return fd;
  for (char& ch : *error) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return -1;
}

int BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return -1;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return -1;
}

}  // namespace

Status GrpcFrontend::Create(InferenceCore* core, const FrontendOptions& options, std::unique_ptr<GrpcFrontend>* out) {
  if (core == nullptr) return Status(StatusCode::kInvalidArgument, "GrpcFrontend needs an InferenceCore");
  if (options.io_threads < 0 || options.io_threads > kMaxIoThreads)
    return Status(StatusCode::kInvalidArgument, "io_threads must be 0 (one per core) to " +
                                                    std::to_string(kMaxIoThreads) + "; got " +
                                                    std::to_string(options.io_threads));
  if (options.max_connections == 0)
    return Status(StatusCode::kInvalidArgument, "max_connections must be >= 1");
  std::unique_ptr<GrpcFrontend> fe(new GrpcFrontend(core, options));
  if (options.listen_fd >= 0) {
    int accepting = 0;
    socklen_t len = sizeof(accepting);
    if (getsockopt(options.listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) != 0 || !accepting)
      return Status(StatusCode::kInvalidArgument,
                    "listen_fd " + std::to_string(options.listen_fd) + " is not a listening socket");
    fe->listen_fd_ = options.listen_fd;
    const int flags = fcntl(fe->listen_fd_, F_GETFL, 0);
    if (flags < 0 || fcntl(fe->listen_fd_, F_SETFL, flags | O_NONBLOCK) != 0)
      return Status(StatusCode::kUnavailable, std::string("cannot make listen_fd non-blocking: ") +
                                                  std::strerror(errno));
  } else {
    std::string error;
    fe->listen_fd_ = Listen(options.host, options.port, &error);
    if (fe->listen_fd_ < 0)
      return Status(StatusCode::kUnavailable,
                    "cannot listen on " + HostPort(options.host, options.port) + ": " + error);
  }
  fe->port_ = BoundPort(fe->listen_fd_);
  fe->bridge_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fe->bridge_fd_ < 0)
    return Status(StatusCode::kUnavailable, std::string("cannot create the bridge eventfd: ") + std::strerror(errno));
  int n = options.io_threads;
  if (n == 0) n = static_cast<int>(std::max(1u, std::min<unsigned>(std::thread::hardware_concurrency(), kMaxIoThreads)));
  for (int i = 0; i < n; ++i) {
    auto t = std::make_unique<IoThread>(fe.get(), i);
    Status s = t->Init();
    if (!s.ok()) return s;
    fe->threads_.push_back(std::move(t));
  }
  *out = std::move(fe);
  return Status::Ok();
}

GrpcFrontend::~GrpcFrontend() {
  Stop();
  for (auto& t : threads_) t->ReleaseLeftovers();
  threads_.clear();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (bridge_fd_ >= 0) close(bridge_fd_);
}

Status GrpcFrontend::Start() {
  if (started_) return Status(StatusCode::kInvalidArgument, "the frontend is already started");
  started_ = true;
  for (auto& t : threads_) t->StartThread();
  return Status::Ok();
}

void GrpcFrontend::PushBridge(BridgeEvent event) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(bridge_mu_);
    was_empty = bridge_events_.empty();
    bridge_events_.push_back(std::move(event));
  }
  if (was_empty) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = write(bridge_fd_, &one, sizeof(one));
  }
}

void GrpcFrontend::PollBridge(std::vector<BridgeEvent>* out) {
  out->clear();
  uint64_t value;
  [[maybe_unused]] ssize_t n = read(bridge_fd_, &value, sizeof(value));
  std::lock_guard<std::mutex> lock(bridge_mu_);
  out->swap(bridge_events_);
}

bool GrpcFrontend::BridgeSend(uint64_t call, std::string message) {
  return PostToCall(call, /*finish=*/false, 0, std::move(message));
}

bool GrpcFrontend::BridgeFinish(uint64_t call, int grpc_status, std::string message) {
  return PostToCall(call, /*finish=*/true, grpc_status, std::move(message));
}

bool GrpcFrontend::PostToCall(uint64_t call, bool finish, int grpc_status, std::string data) {
  const int t = TagThread(call);
  if (t < 0 || t >= static_cast<int>(threads_.size()) || !started_ || stopped_) return false;
  {
    std::lock_guard<std::mutex> lock(bridge_mu_);
    if (bridge_live_.count(call) == 0) return false;
  }
  const auto kind = finish ? IoThread::Mail::Kind::kFinish : IoThread::Mail::Kind::kSend;
  threads_[t]->Post({kind, call, grpc_status, std::move(data)});
  return true;
}

bool GrpcFrontend::BridgeAdmit() {
  uint32_t open = bridged_open_.load(std::memory_order_relaxed);
  while (open < options_.max_bridged_calls) {
    if (bridged_open_.compare_exchange_weak(open, open + 1, std::memory_order_relaxed)) return true;
  }
  return false;
}

void GrpcFrontend::BridgeDone() { bridged_open_.fetch_sub(1, std::memory_order_relaxed); }

void GrpcFrontend::StreamOpened() { streams_open_.fetch_add(1, std::memory_order_relaxed); }

void GrpcFrontend::StreamClosed() {
  if (streams_open_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    std::lock_guard<std::mutex> lock(idle_mu_);
    idle_cv_.notify_all();
  }
}

void GrpcFrontend::Shutdown() {
  if (!started_ || stopped_) return;
  {
    std::lock_guard<std::mutex> lock(shutdown_mu_);
    if (shutdown_requested_) return;
    shutdown_requested_ = true;
  }
  for (auto& t : threads_) t->Post({IoThread::Mail::Kind::kShutdown, 0, 0, {}});
  // Once no thread watches the listening socket, close it: connections that
  // arrive from now on are refused by the kernel.
  std::unique_lock<std::mutex> lock(shutdown_mu_);
  shutdown_cv_.wait_for(lock, std::chrono::seconds(5), [&] { return threads_shut_ == threads_.size(); });
  if (threads_shut_ == threads_.size() && listen_fd_ >= 0) {
    close(listen_fd_);
    listen_fd_ = -1;
  }
}

bool GrpcFrontend::WaitIdle(int64_t timeout_ns) {
  std::unique_lock<std::mutex> lock(idle_mu_);
  return idle_cv_.wait_for(lock, std::chrono::nanoseconds(std::max<int64_t>(0, timeout_ns)),
                           [&] { return streams_open_.load(std::memory_order_acquire) == 0; });
}

void GrpcFrontend::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (!started_) return;
  for (auto& t : threads_) t->Post({IoThread::Mail::Kind::kStop, 0, 0, {}});
  for (auto& t : threads_) t->Join();
  for (auto& t : threads_) t->ReleaseLeftovers();
}

FrontendStats GrpcFrontend::Stats() const {
  FrontendStats s;
  s.connections_open = connections_open_.load(std::memory_order_relaxed);
  s.connections_accepted = connections_accepted_.load(std::memory_order_relaxed);
  s.connections_refused = connections_refused_.load(std::memory_order_relaxed);
  s.streams_open = streams_open_.load(std::memory_order_relaxed);
  s.native_requests = native_requests_.load(std::memory_order_relaxed);
  s.bridged_calls = bridged_calls_.load(std::memory_order_relaxed);
  for (const auto& t : threads_) {
    s.streams_refused += t->streams_refused.load(std::memory_order_relaxed);
    s.streams_reset_by_peer += t->streams_reset_by_peer.load(std::memory_order_relaxed);
    s.protocol_errors += t->protocol_errors.load(std::memory_order_relaxed);
    s.connection_memory_bytes += t->memory_bytes.load(std::memory_order_relaxed);
    s.wakeups += t->wakeups.load(std::memory_order_relaxed);
    s.connections_per_thread.push_back(t->open_connections.load(std::memory_order_relaxed));
  }
  return s;
}

}  // namespace steadyserve
