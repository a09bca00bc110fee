// GrpcFrontend: the native gRPC server of steadyserve. A listening socket,
// I/O threads that each run an epoll loop over their own connections
// (h2_connection.h), and the two ways a call goes:
//
//  - ModelInfer and ModelStreamInfer go straight to the InferenceCore: the
//    I/O thread that read a request's last byte parses, routes and queues it,
//    and the same thread writes its answer when the core delivers it to the
//    thread's completion queue (its eventfd is in the thread's epoll set). No
//    Python runs per request.
//  - Every other method (metadata, statistics, repository, health, reflection)
//    is bridged: its events go to one queue that the Python event loop drains
//    (PollBridge, woken through bridge_fd()), and Python answers with
//    BridgeSend / BridgeFinish, which the owning I/O thread applies.
//
// Threads: Start() spawns io_threads named "ss-io-N"; Stop() joins them. The
// listening socket is in every thread's epoll set with EPOLLEXCLUSIVE, so one
// thread takes each new connection; it hands connections round robin to the
// threads, and each lives on its thread from then on.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "steadyserve/h2_connection.h"
#include "steadyserve/status.h"

namespace steadyserve {

class InferenceCore;

struct FrontendOptions {
  std::string host = "0.0.0.0";
  int port = 8001;  // 0: any free port
  // An already bound and listening socket to serve (several processes share
  // one socket this way); the frontend then owns it. -1: bind host:port
  // (without SO_REUSEPORT: a port in use is an error, never a silent share).
  int listen_fd = -1;
  int io_threads = 0;  // 0: one per CPU core
  uint32_t max_connections = 10000;
  h2::ConnectionLimits limits;
  // Of a grpc-timeout, the part kept for the answer's way back: the core aims
  // to answer before the client gives up.
  int64_t response_allowance_ns = 1'000'000;
  // Open bridged calls at once; more are answered RESOURCE_EXHAUSTED.
  uint32_t max_bridged_calls = 1024;
  // Share of inference requests (ModelInfer, and each request of a stream)
  // recorded for the request log, 0..1; 0: none, and no cost but one branch.
  double log_sample_rate = 0.0;
  // Records waiting for Python (TakeRequestLog) beyond which new ones are dropped.
  uint32_t max_log_records = 10000;
};

// One sampled inference request, for the request log.
struct RequestLogRecord {
  std::string request_id;  // x-request-id, else the V2 id, else the one generated here
  std::string model, answered_by, answered_version;
  int grpc_status = 0;
  std::string message;  // the error, when there is one
  int64_t latency_ns = 0;  // from the request's arrival in the core to its answer
  bool failover = false;
};

// One event of a bridged call, for Python.
struct BridgeEvent {
  enum class Kind : uint8_t { kStart, kMessage, kHalfClose, kCancel };
  Kind kind = Kind::kStart;
  uint64_t call = 0;
  // kStart:
  std::string path;
  std::vector<std::pair<std::string, std::string>> metadata;
  int64_t timeout_ns = -1;
  std::string peer;
  // kMessage:
  std::string data;
};

struct FrontendStats {
  uint64_t connections_open = 0;
  uint64_t connections_accepted = 0;
  uint64_t connections_refused = 0;  // over max_connections
  uint64_t streams_open = 0;
  uint64_t native_requests = 0;  // ModelInfer calls and ModelStreamInfer messages
  uint64_t bridged_calls = 0;
  uint64_t streams_refused = 0;
  uint64_t streams_reset_by_peer = 0;
  uint64_t protocol_errors = 0;
  uint64_t connection_memory_bytes = 0;  // what the open connections hold now
  uint64_t wakeups = 0;                  // epoll_wait returns with events, all threads
  std::vector<uint64_t> connections_per_thread;  // open now, per I/O thread
};

class GrpcFrontend {
 public:
  // Binds (or adopts options.listen_fd) and listens; threads start in Start().
  // UNAVAILABLE naming host:port and the system's reason when the port cannot
  // be had.
  static Status Create(InferenceCore* core, const FrontendOptions& options, std::unique_ptr<GrpcFrontend>* out);
  ~GrpcFrontend();  // Stop()s if still running
  GrpcFrontend(const GrpcFrontend&) = delete;
  GrpcFrontend& operator=(const GrpcFrontend&) = delete;

  int port() const { return port_; }
  Status Start();

  // --- the bridge
  int bridge_fd() const { return bridge_fd_; }
  // Moves every pending event into *out (cleared first); resets bridge_fd().
  void PollBridge(std::vector<BridgeEvent>* out);
  // Answers of Python, applied by the call's I/O thread. False when the call
  // is already gone (reset by the peer, or finished).
  bool BridgeSend(uint64_t call, std::string message);
  bool BridgeFinish(uint64_t call, int grpc_status, std::string message);

  // --- shutdown
  // GOAWAY on every connection, stop accepting (the listening socket closes);
  // open calls go on.
  void Shutdown();
  // Blocks until no call is open or timeout_ns passes; true when none is.
  bool WaitIdle(int64_t timeout_ns);
  // Closes every connection (open calls are cancelled) and joins the threads.
  void Stop();

  FrontendStats Stats() const;

  // The sampled requests recorded since the last call, oldest first; *dropped:
  // records not kept since then because Python fell behind.
  std::vector<RequestLogRecord> TakeRequestLog(uint64_t* dropped);

 private:
  class IoThread;
  friend class IoThread;
  GrpcFrontend(InferenceCore* core, const FrontendOptions& options);

  // BridgeSend / BridgeFinish: Python's answer to the call's I/O thread, unless the call is gone.
  bool PostToCall(uint64_t call, bool finish, int grpc_status, std::string data);

  // Called by I/O threads.
  void PushBridge(BridgeEvent event);
  bool BridgeAdmit();       // one more bridged call, unless at the limit
  void BridgeDone();        // a bridged call ended
  void StreamOpened();
  void StreamClosed();
  void Record(RequestLogRecord record);

  InferenceCore* core_;
  FrontendOptions options_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::vector<std::unique_ptr<IoThread>> threads_;
  std::atomic<bool> started_{false};
  std::atomic<bool> stopped_{false};

  std::mutex shutdown_mu_;
  std::condition_variable shutdown_cv_;
  bool shutdown_requested_ = false;
  size_t threads_shut_ = 0;  // threads that stopped watching the listening socket

  int bridge_fd_ = -1;
  std::mutex bridge_mu_;
  std::vector<BridgeEvent> bridge_events_;
  std::unordered_set<uint64_t> bridge_live_;  // open bridged calls, so answers to gone ones are refused
  std::atomic<uint32_t> bridged_open_{0};

  std::mutex idle_mu_;
  std::condition_variable idle_cv_;
  std::atomic<uint64_t> streams_open_{0};
  std::atomic<uint64_t> connections_open_{0};
  std::atomic<uint64_t> connections_accepted_{0};
  std::atomic<uint64_t> connections_refused_{0};
  std::atomic<uint64_t> native_requests_{0};
  std::atomic<uint64_t> bridged_calls_{0};
  std::atomic<size_t> next_thread_{0};  // round robin of new connections

  // Generated request ids: "<process tag>-<thread>-<connection>-<stream>", unique
  // in this process and, through the random tag, across its restarts.
  std::string id_tag_;
  std::mutex log_mu_;
  std::vector<RequestLogRecord> log_;
  uint64_t log_dropped_ = 0;
};

}  // namespace steadyserve
