// Batcher: the per-model dynamic batching queue of the native core.
//
// Producers (request handlers, any thread) call Submit: the request's rows are
// copied into a staging slot owned by the batcher, so the caller's memory is
// free again when Submit returns. Consumers (one executor thread per model
// instance) call NextBatch: it blocks, with no locks held while waiting, until a
// batch should close, gathers the queued rows into one of the preallocated batch
// buffers and hands that buffer to the executor until Complete.
//
// A batch closes when
//   * the queued rows reach max_batch_size (or the largest preferred size),
//   * max_queue_delay has passed since its oldest request was queued
//     (max_queue_delay 0: at once, whatever is queued: batching then comes only
//     from requests that arrive while the executor is busy, and a lone request
//     never waits),
//   * the oldest deadline's slack no longer covers the latency model's estimate
//     for the batch so far plus the margin, or
//   * the batcher is stopping (drain).
// Requests whose deadline passed while queued, and cancelled ones, are never
// executed: expired ones are reported back in Batch::dropped.
//
// Memory: staging slots grow to the largest request they held and are reused;
// batch buffers are sized max_batch_size rows per input and allocated once.
// Nothing on the submit or dispatch path allocates in steady state.
//
// Thread-safety: every public method may be called from any thread. The batcher
// starts no threads of its own; whoever calls NextBatch is the dispatcher.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "steadyserve/feature_transform.h"
#include "steadyserve/latency_model.h"
#include "steadyserve/status.h"

namespace steadyserve {

// One model input as the batcher sees it: bytes per row (all non-batch elements).
// With a transform (float32 inputs only), Submit runs the fused validate /
// impute / scale / drift-count pass instead of a plain copy.
struct InputLayout {
  std::string name;
  uint64_t row_bytes = 0;
  std::shared_ptr<FeatureTransform> transform;  // may be null
};

struct BatcherOptions {
  std::string model;                            // named in error messages
  std::vector<InputLayout> inputs;              // at least one
  uint32_t max_batch_size = 1;                  // rows per batch, >= 1
  std::vector<uint32_t> preferred_batch_sizes;  // each in [1, max_batch_size]
  int64_t max_queue_delay_ns = 0;               // >= 0
  uint32_t max_queue_size = 1024;               // queued requests, >= 1
  uint32_t priority_levels = 1;                 // level 0 is served first, >= 1
  std::vector<uint32_t> level_max_queue;        // per level: queued requests allowed, 0 = no own cap
  uint32_t executors = 1;                       // batch buffers = concurrent NextBatch callers
  int64_t slack_margin_ns = 0;                  // added to execution estimates, >= 0
  int64_t slo_latency_ns = 0;                   // > 0: cap batches so estimated execution + margin fits
  bool admission_control = false;               // refuse at submit when the estimate misses the deadline
};

// What Submit did besides queueing: a full queue may make room for a request of
// a higher priority level by evicting the newest request of a lower one. The
// caller answers the evicted request (RESOURCE_EXHAUSTED).
struct SubmitResult {
  uint64_t handle = 0;
  bool evicted = false;
  uint64_t evicted_token = 0;
};

struct BatchItem {
  uint64_t token;   // the caller's token from Submit
  uint32_t offset;  // first row of this request in the batch buffer
  uint32_t rows;
  int64_t enqueue_ns;  // steady clock when it was queued
};

struct DroppedItem {
  uint64_t token;
  StatusCode code;  // kDeadlineExceeded
};

// Filled by NextBatch; reuse one per executor so its vectors keep their capacity.
struct Batch {
  uint64_t id = 0;
  uint32_t buffer = 0;  // index for BufferData / Complete
  uint32_t rows = 0;    // 0: no batch this time (only drops, a timeout, or stopped)
  int64_t formed_ns = 0;
  bool stopped = false;  // stopping and nothing left: the executor should exit
  std::vector<BatchItem> items;
  std::vector<DroppedItem> dropped;
  std::vector<uint32_t> slots;  // internal: staging slots being copied from
};

struct BatcherStats {
  uint64_t submitted = 0;  // accepted into the queue
  uint64_t rejected_queue_full = 0;
  uint64_t rejected_deadline = 0;  // deadline already passed at submit
  uint64_t rejected_stopped = 0;
  uint64_t rejected_admission = 0;  // estimated completion after the deadline
  uint64_t rejected_invalid = 0;    // refused by an input's feature transform
  uint64_t evicted = 0;             // shed from a lower priority level for a higher one
  uint64_t expired = 0;             // deadline passed while queued, never executed
  uint64_t cancelled = 0;
  uint64_t batches = 0;
  uint64_t rows_executed = 0;
  uint32_t queued_requests = 0;
  uint32_t queued_rows = 0;
};

class Batcher {
 public:
  // Validates options; on OK *out owns a ready batcher.
  static Status Create(const BatcherOptions& options, std::unique_ptr<Batcher>* out);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues one request of `rows` rows. inputs[i] points to rows * row_bytes(i)
  // bytes (read only during the call). deadline_ns: absolute steady-clock time,
  // 0 for none. priority: 0 .. priority_levels-1. On OK result->handle
  // identifies the request for Cancel. Errors: INVALID_ARGUMENT (rows, input
  // count, priority), DEADLINE_EXCEEDED (already past, or with admission
  // control: estimated to finish after it), RESOURCE_EXHAUSTED (queue full and
  // nothing of a lower level to shed), UNAVAILABLE (stopping).
  Status Submit(uint64_t token, const uint8_t* const* inputs, size_t n_inputs, uint32_t rows,
                int64_t deadline_ns, uint32_t priority, SubmitResult* result);

  // When a request of `rows` rows at `priority` submitted now would finish:
  // absolute steady-clock ns, or 0 while the latency model has no data.
  int64_t EstimateCompletionNs(uint32_t rows, uint32_t priority) const;

  // Largest batch the dispatcher forms now (max_batch_size, or less to fit the SLO).
  uint32_t BatchCap() const;

  // Re-derives the batch cap from the latency model (Complete does this too).
  void RefreshCap();

  // Withdraws a queued request: true if it was still queued (it will never
  // execute), false if it is already in a batch, done, or unknown.
  bool Cancel(uint64_t handle);

  // Blocks until there is a batch, dropped requests to report, the timeout
  // passes (timeout_ns < 0: no timeout), or the batcher has stopped and drained.
  // On a batch the buffer belongs to the caller until Complete.
  Status NextBatch(int64_t timeout_ns, Batch* batch);

  // Pointer to input `input` of batch buffer `buffer` (max_batch_size rows).
  uint8_t* BufferData(uint32_t buffer, size_t input);

  // Returns the buffer and records the batch's execution time in the latency model.
  void Complete(uint32_t buffer, uint32_t rows, int64_t exec_ns);

  // Stops accepting; queued requests are still handed out, then NextBatch
  // reports stopped. Idempotent; joins nothing.
  void Stop();

  BatcherStats Stats() const;
  const BatcherOptions& options() const { return options_; }
  LatencyModel& latency_model() { return latency_; }

  static int64_t NowNs();

 private:
  enum class SlotState : uint8_t { kFree, kFilling, kQueued, kCancelled, kTaken };
  struct Slot {
    uint64_t token = 0;
    uint32_t generation = 0;
    uint32_t rows = 0;
    uint32_t priority = 0;
    int64_t deadline_ns = 0;
    int64_t enqueue_ns = 0;
    SlotState state = SlotState::kFree;
    std::vector<std::vector<uint8_t>> data;  // per input, rows * row_bytes
  };
  // Fixed-capacity FIFO of slot indices, one per priority level.
  struct Ring {
    std::vector<uint32_t> items;
    size_t head = 0;
    size_t size = 0;
    uint32_t front() const { return items[head]; }
    void push(uint32_t v) {
      items[(head + size) % items.size()] = v;
      ++size;
    }
    void pop() {
      head = (head + 1) % items.size();
      --size;
    }
    uint32_t back() const { return items[(head + size - 1) % items.size()]; }
    void pop_back() { --size; }
  };

  explicit Batcher(const BatcherOptions& options);
  void FreeSlotLocked(uint32_t index);
  int64_t EstimateCompletionLocked(int64_t now, uint32_t rows, uint32_t priority) const;
  // Frees the newest queued request of the lowest level below `priority`; false if none.
  bool EvictLowerLocked(uint32_t priority, uint64_t* token);
  // A queued request (already popped from its level) whose deadline passed: counted,
  // reported in batch->dropped, its slot freed.
  void ExpireLocked(uint32_t index, Batch* batch);
  // Pops cancelled and expired requests from the front of every level.
  void PruneHeadsLocked(int64_t now, Batch* batch);
  uint32_t TargetRows() const;
  uint32_t AheadRowsLocked(uint32_t priority) const;

  const BatcherOptions options_;
  LatencyModel latency_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::vector<Slot> slots_;
  std::vector<uint32_t> free_slots_;
  std::vector<Ring> levels_;
  uint32_t queued_requests_ = 0;
  uint32_t queued_rows_ = 0;
  std::vector<uint32_t> level_rows_;      // queued rows per level
  std::vector<uint32_t> level_requests_;  // queued requests per level
  uint32_t batch_cap_ = 0;
  uint64_t next_batch_id_ = 1;
  BatcherStats stats_;

  // buffers_[b][i]: batch buffer b, input i.
  std::vector<std::vector<std::vector<uint8_t>>> buffers_;
  std::vector<uint32_t> free_buffers_;
  std::vector<int64_t> inflight_start_ns_;  // per buffer: when its batch formed, 0 when free
  std::vector<uint32_t> inflight_rows_;
};

}  // namespace steadyserve
