// Request: one inference request from the moment the core accepts its bytes
// (or its arrays) until its answer has been read.
//
// Ownership: requests live in a RequestPool and are never freed while the pool
// lives; a request is referenced by the core (while queued, in a batch, or
// being answered) and by its caller (until the caller has read the answer or
// gave up). Each holder drops its reference with RequestPool::Release; the last
// one returns the request to the pool, keeping its buffers' capacity, so the
// steady state allocates nothing.
//
// Answering: exactly once. Whoever wins TryAnswer (the batch that ran it, the
// deadline reaper, a refusal, a cancel) fills the answer and calls Deliver,
// which pushes the request to its completion queue or wakes its waiting thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "steadyserve/status.h"

namespace steadyserve {

class Batcher;
class CompletionQueue;

// Where a request is, as seen by the batcher that holds it (guarded by that batcher's lock).
enum class RequestState : uint8_t { kIdle, kQueued, kWithdrawn, kTaken };

// One output of an in-process answer: the request's own rows.
struct OutputRows {
  std::string name;
  uint8_t dtype = 0;  // a DataType
  std::vector<uint8_t> data;
  std::vector<int64_t> shape;
  uint32_t output = 0;  // index in the answering model's outputs
};

struct Request {
  // --- identity (set by the pool)
  uint32_t index = 0;
  std::atomic<uint32_t> generation{0};
  std::atomic<int> refs{0};

  // --- what was asked (set before submit, read-only afterwards)
  std::string model;    // the model asked for (the chain's first link)
  std::string version;  // "" = latest
  std::string id;       // V2 request id, echoed
  // The request id its answer carries as x-request-id (the transport's choice: the
  // header, the V2 id, or one it made up); what the prediction log keys a record by.
  std::string request_id;
  uint32_t rows = 0;
  std::vector<std::vector<uint8_t>> inputs;       // decoded, per signature input, rows x row bytes
  std::vector<std::vector<uint8_t>> transformed;  // per input with a feature transform at the current link
  uint64_t output_mask = 0;                       // bit i: output i asked for; 0 = every output
  int64_t arrival_ns = 0;
  int64_t deadline_ns = 0;  // absolute steady-clock ns; 0 = none
  uint32_t priority = 0;    // as sent: 0 = the model's default level, 1 = highest
  bool wire = false;        // answer as serialized ModelInferResponse bytes

  // --- route (owned by whoever holds the request)
  uint32_t link = 0;             // position in the failover chain
  std::string failover_reasons;  // "; "-joined, for the answer's parameters and errors
  uint32_t level = 0;            // priority level at the current link
  int64_t enqueue_ns = 0;
  std::atomic<Batcher*> owner{nullptr};  // the batcher that holds it now (set under its lock)
  RequestState state = RequestState::kIdle;  // guarded by the owner's lock
  bool probe = false;  // routed as a half-open probe
  // Drawn once, at the first model that admits it (its prediction_log.sample_rate): the
  // batch that answers it hands it to the prediction log.
  bool log_drawn = false, logged = false;

  // --- answer
  std::atomic<bool> answered{false};
  StatusCode code = StatusCode::kOk;
  std::string message;
  std::string response;              // wire answers
  // In-process answers: the first n_outputs entries (entries past it keep their buffers'
  // capacity for the next answer, so answering allocates nothing in steady state).
  std::vector<OutputRows> outputs;
  size_t n_outputs = 0;
  OutputRows& AddOutput() {
    if (n_outputs == outputs.size()) outputs.emplace_back();
    return outputs[n_outputs++];
  }
  std::string answered_by, answered_version;
  bool failover = false, default_output = false;

  // --- completion: a queue (asyncio callers) or a waiting thread
  CompletionQueue* cq = nullptr;
  uint64_t user_tag = 0;
  std::mutex wait_mu;
  std::condition_variable wait_cv;
  bool delivered = false;

  // Claims the right to answer; true once per request lifetime.
  bool TryAnswer() {
    bool expected = false;
    return answered.compare_exchange_strong(expected, true, std::memory_order_acq_rel);
  }
  // Fills an error answer (after TryAnswer).
  void SetError(StatusCode c, std::string m) {
    code = c;
    message = std::move(m);
  }
  // Hands the answer to the caller (after TryAnswer and filling the answer).
  void Deliver();
  // Blocks until delivered or timeout_ns passes (< 0: no timeout); true when delivered.
  bool Wait(int64_t timeout_ns);

  // The handle a caller keeps: pool index and generation, so a stale handle is recognised.
  uint64_t Handle() const {
    return (static_cast<uint64_t>(generation.load(std::memory_order_relaxed)) << 32) | index;
  }
};

class RequestPool {
 public:
  // At most `capacity` requests exist at once.
  explicit RequestPool(uint32_t capacity);

  // A fresh request with two references (core and caller); nullptr when `capacity`
  // requests are in use.
  Request* Acquire();
  // Drops one reference; the last returns the request to the pool.
  void Release(Request* r);
  // The request a caller's handle names, or nullptr when it was already recycled.
  Request* Find(uint64_t handle);

  uint32_t capacity() const { return capacity_; }
  uint32_t in_use() const;

 private:
  const uint32_t capacity_;
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Request>> all_;  // grows up to capacity_, never shrinks
  std::vector<Request*> free_;
};

}  // namespace steadyserve
