// ModelCore: one model version inside the core — its signature, its batcher,
// its figures, and the per-batch answer path.
//
// Per request (any thread): Admit resolves the priority level and default
// deadline, runs the feature transforms, and queues the request.
// Per batch (the executor, Python): NextBatch hands out a batch buffer;
// CompleteBatch scatters each request's rows of the outputs and answers it (a
// serialized ModelInferResponse for wire callers, its own output rows for
// in-process ones); FailBatch sends the batch's requests on to the next model
// of their failover chain with their decoded inputs.
// A reaper thread answers requests at their deadline: queued ones are
// withdrawn (never executed), executing ones are answered DEADLINE_EXCEEDED
// while their batch finishes.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "steadyserve/batcher.h"
#include "steadyserve/model_stats.h"
#include "steadyserve/request.h"
#include "steadyserve/signature.h"

namespace steadyserve {

class InferenceCore;

// failover.output_checks of one output: a batch with a value that fails it fails over.
struct OutputCheck {
  uint32_t output = 0;  // index in the signature's outputs
  bool finite = true;
  double lo = -INFINITY, hi = INFINITY;  // inclusive bounds
};

struct ModelCoreOptions {
  std::string version;
  std::vector<OutputCheck> checks;
  BatcherOptions batching;           // model name and inputs are filled from the signature
  uint32_t default_level = 0;        // level of requests sent with priority 0 (0-based)
  int64_t default_deadline_ns = 0;   // relative deadline of requests that bring none; 0: none
  std::vector<int64_t> latency_bounds_ns;
  int64_t slo_ns = 0;
};

// One output of an executed batch, as the backend produced it (C-contiguous).
struct OutputTensor {
  DataType dtype = DataType::kInvalid;
  const int64_t* shape = nullptr;
  size_t rank = 0;
  const uint8_t* data = nullptr;
  size_t size = 0;
};

struct BatchTimings {
  int64_t input_ns = 0, infer_ns = 0, output_ns = 0;
  int64_t learn_ns = -1;  // what the latency model learns (< 0: nothing)
  int64_t wall_ms = 0;    // wall clock, for last_inference
};

class ModelCore {
 public:
  static Status Create(std::unique_ptr<Signature> signature, ModelCoreOptions options, RequestPool* pool,
                       InferenceCore* core, std::unique_ptr<ModelCore>* out);
  ~ModelCore();  // Close() if the owner did not

  // After the executors drained: stops the reaper thread and joins it. Idempotent.
  void Close();

  // Queues `r` here (r->link already names this model). On error the caller keeps r.
  Status Admit(Request* r);
  bool Withdraw(Request* r) { return batcher_->Withdraw(r); }

  // Executor side. *out is a batch (rows > 0) or nullptr (timeout, only expiries, or stopped:
  // *stopped tells). Expired requests are answered here.
  Status NextBatch(int64_t timeout_ns, const Batch** out, bool* stopped);
  // Checks a batch's outputs (shapes, datatypes, then the output checks) without answering
  // anything, so the caller can feed its circuit breaker first. False: *reason is
  // execution_error (malformed) or bad_output, *message says what and where.
  bool CheckOutputs(uint32_t buffer, const OutputTensor* outputs, size_t n, std::string* reason,
                    std::string* message);
  // Answers the requests of batch `buffer` from `outputs` (one per signature output, in order),
  // counting FP32 outputs with a monitor (signature output transform) into their drift window.
  // A malformed output fails the batch instead (INTERNAL, failover applies) and returns the reason.
  Status CompleteBatch(uint32_t buffer, const OutputTensor* outputs, size_t n, const BatchTimings& t);
  // The batch failed (reason: execution_error | execution_timeout | bad_output).
  void FailBatch(uint32_t buffer, const std::string& reason, const std::string& message, const BatchTimings& t);

  // The batch handed out in `buffer` and not yet completed or failed, or nullptr.
  const Batch* InflightBatch(uint32_t buffer) const {
    return buffer < inflight_.size() && inflight_[buffer].rows > 0 ? &inflight_[buffer] : nullptr;
  }
  void Stop() { batcher_->Stop(); }
  // prediction_log.sample_rate: the share of requests first admitted here that the
  // batch answering them hands to the prediction log; 0 = none.
  void set_log_rate(double rate) { log_rate_.store(rate, std::memory_order_relaxed); }
  double log_rate() const { return log_rate_.load(std::memory_order_relaxed); }
  bool ready() const { return ready_.load(std::memory_order_acquire); }
  void set_ready(bool ready) { ready_.store(ready, std::memory_order_release); }
  int64_t EstimateCompletionNs(uint32_t rows, uint32_t priority) const;
  // Level (0-based) of a V2 priority; INVALID_ARGUMENT outside 0..levels.
  Status Level(uint32_t priority, uint32_t* level) const;

  const std::string& name() const { return signature_->model(); }
  const std::string& version() const { return options_.version; }
  const Signature& signature() const { return *signature_; }
  Batcher& batcher() { return *batcher_; }
  const Batcher& batcher() const { return *batcher_; }
  ModelStats& stats() { return stats_; }
  const ModelStats& stats() const { return stats_; }
  InferenceCore* core() const { return core_; }

 private:
  ModelCore(std::unique_ptr<Signature> signature, ModelCoreOptions options, RequestPool* pool,
            InferenceCore* core);
  void ReaperLoop();
  // Why outputs cannot answer the batch (empty: they can); fills the BYTES element offsets.
  std::string MalformedOutputs(const Batch& batch, const OutputTensor* outputs, size_t n);
  // Answers `r` with its rows [offset, offset + rows) of the outputs.
  void Answer(Request* r, uint32_t offset, const OutputTensor* outputs, int64_t queue_ns);
  void Finish(Request* r);  // delivers and drops the core's reference

  std::unique_ptr<Signature> signature_;
  const ModelCoreOptions options_;
  RequestPool* pool_;
  InferenceCore* core_;
  std::unique_ptr<Batcher> batcher_;
  ModelStats stats_;
  std::atomic<bool> ready_{false};
  std::atomic<double> log_rate_{0.0};
  std::vector<Batch> inflight_;  // per batch buffer
  std::thread reaper_;
};

}  // namespace steadyserve
