// Batcher: the per-model dynamic batching queue of the native core.
//
// Producers (any thread) Submit requests whose inputs are already decoded (and
// transformed) in the Request; the batcher queues the Request itself, per
// priority level, so submitting copies nothing. Consumers (one executor per
// model instance, or the submitting thread in inline mode) call NextBatch: it
// blocks, with no locks held while waiting, until a batch should close, then
// gathers the queued rows into one of the preallocated batch buffers (the one
// copy after decoding) and hands that buffer to the executor until Complete.
//
// A batch closes when
//   * the queued rows reach max_batch_size (or the largest preferred size),
//   * max_queue_delay has passed since its oldest request was queued
//     (max_queue_delay 0: at once, whatever is queued),
//   * the earliest deadline of any queued request (a min-deadline index, not
//     just the level heads) leaves no slack for the latency model's estimate
//     of the batch so far plus the margin, or
//   * the batcher is stopping (drain).
//
// Deadlines: every admitted request with a deadline is in the min-deadline
// index. ExpireDue (called by the model's reaper thread at the index's next
// deadline) withdraws queued requests whose deadline passed — they are never
// executed and stop counting as queued work at once — and reports requests
// that are executing past their deadline, so their callers are answered on
// time. NextBatch skips expired requests too.
//
// Ownership: on OK from Submit the batcher holds the core's reference to the
// request until it is handed out by NextBatch (in Batch::items, to the
// executor) or returned in Batch::dropped / ExpireDue's lists (to the caller,
// who answers them and releases the reference). Withdrawn requests (cancelled
// or expired) are released through the pool when their slot in the queue is
// popped.
//
// Memory: batch buffers are sized max_batch_size rows per fixed-size input and
// allocated once; variable-size (BYTES) inputs grow to the largest batch seen.
// Queue rings and the deadline index are sized from the pool's capacity.
//
// Thread-safety: every public method may be called from any thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "steadyserve/clock.h"
#include "steadyserve/latency_model.h"
#include "steadyserve/request.h"
#include "steadyserve/status.h"

namespace steadyserve {

// One model input as the batcher sees it: bytes per row, or 0 for a
// variable-size (BYTES) input whose rows are as long as the request made them.
struct InputLayout {
  std::string name;
  uint64_t row_bytes = 0;
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
  const Clock* clock = nullptr;                 // nullptr: the steady clock
};

struct BatchItem {
  Request* request;
  uint32_t offset;  // first row of this request in the batch buffer
  uint32_t rows;
};

// Filled by NextBatch; reuse one per executor so its vectors keep their capacity.
struct Batch {
  uint64_t id = 0;
  uint32_t buffer = 0;  // index for BufferData / Complete
  uint32_t rows = 0;    // 0: no batch this time (only drops, a timeout, or stopped)
  int64_t formed_ns = 0;
  bool stopped = false;  // stopping and nothing left: the executor should exit
  std::vector<BatchItem> items;
  std::vector<Request*> dropped;  // expired while queued: answer DEADLINE_EXCEEDED, then release
};

struct BatcherStats {
  uint64_t submitted = 0;  // accepted into the queue
  uint64_t rejected_queue_full = 0;
  uint64_t rejected_deadline = 0;  // deadline already passed at submit
  uint64_t rejected_stopped = 0;
  uint64_t rejected_admission = 0;  // estimated completion after the deadline
  uint64_t evicted = 0;             // shed from a lower priority level for a higher one
  uint64_t expired = 0;             // deadline passed while queued, never executed
  uint64_t cancelled = 0;
  uint64_t batches = 0;
  uint64_t rows_executed = 0;
  uint32_t queued_requests = 0;
  uint32_t queued_rows = 0;
  uint32_t executing = 0;  // batches handed out and not completed
};

class Batcher {
 public:
  // Validates options; on OK *out owns a ready batcher. `pool` outlives it.
  static Status Create(const BatcherOptions& options, RequestPool* pool, std::unique_ptr<Batcher>* out);
  ~Batcher();
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `r` (rows, inputs, deadline_ns set) at priority `level`
  // (0 .. priority_levels-1). Errors: INVALID_ARGUMENT (rows, level),
  // DEADLINE_EXCEEDED (already past, or with admission control: estimated to
  // finish after it), RESOURCE_EXHAUSTED (queue full and nothing of a lower
  // level to shed), UNAVAILABLE (stopping); on error the caller keeps `r`.
  // *evicted: a request of a lower level shed to make room (answer it
  // RESOURCE_EXHAUSTED and release it), or nullptr.
  Status Submit(Request* r, uint32_t level, Request** evicted);

  // When a request of `rows` rows at `level` submitted now would finish:
  // absolute ns, or 0 while the latency model has no data.
  int64_t EstimateCompletionNs(uint32_t rows, uint32_t level) const;

  // Largest batch the dispatcher forms now (max_batch_size, or less to fit the SLO).
  uint32_t BatchCap() const;
  // Re-derives the batch cap from the latency model (Complete does this too).
  void RefreshCap();

  // Takes `r` out of the queue if it is still queued here (it will never execute).
  bool Withdraw(Request* r);

  // Blocks until there is a batch, expired requests to report, the timeout
  // passes (timeout_ns < 0: no timeout), or the batcher has stopped and drained.
  // On a batch the buffer belongs to the caller until Complete.
  Status NextBatch(int64_t timeout_ns, Batch* batch);

  // Input `input` of batch buffer `buffer`, and its size for the current batch.
  uint8_t* BufferData(uint32_t buffer, size_t input);
  size_t BufferSize(uint32_t buffer, size_t input) const;

  // Returns the batch's buffer and detaches its requests (the caller then
  // answers or resubmits them); records the execution time in the latency
  // model (exec_ns < 0: record nothing).
  void Complete(const Batch& batch, int64_t exec_ns);

  // Deadlines due at `now`: queued requests whose deadline passed are withdrawn
  // into *queued (answer only: they stay in their ring slot, and the batcher
  // releases the core's reference when it pops that slot — unlike Batch::dropped,
  // which the caller releases), executing ones appended to *executing
  // (answer only: their batch still holds them). Returns the next deadline in
  // the index (0: none).
  int64_t ExpireDue(int64_t now, std::vector<Request*>* queued, std::vector<Request*>* executing);
  // Blocks until `until_ns` (0: no deadline), a new earlier deadline is indexed, or StopReaper.
  void WaitForDeadline(int64_t until_ns);
  // Wakes the reaper for good (after the executors have drained).
  void StopReaper();
  bool ReaperStopped() const;

  // Stops accepting; queued requests are still handed out, then NextBatch
  // reports stopped. Idempotent; joins nothing.
  void Stop();
  bool stopping() const;

  BatcherStats Stats() const;
  const BatcherOptions& options() const { return options_; }
  LatencyModel& latency_model() { return latency_; }
  const LatencyModel& latency_model() const { return latency_; }
  int64_t NowNs() const { return clock_->NowNs(); }

 private:
  // Fixed-capacity FIFO of requests, one per priority level.
  struct Ring {
    std::vector<Request*> items;
    size_t head = 0;
    size_t size = 0;
    Request* front() const { return items[head]; }
    void push(Request* v) {
      items[(head + size) % items.size()] = v;
      ++size;
    }
    void pop() {
      head = (head + 1) % items.size();
      --size;
    }
    Request* back() const { return items[(head + size - 1) % items.size()]; }
    void pop_back() { --size; }
  };
  struct DeadlineEntry {
    int64_t deadline_ns;
    Request* request;
    uint32_t generation;
    bool operator>(const DeadlineEntry& o) const { return deadline_ns > o.deadline_ns; }
  };

  Batcher(const BatcherOptions& options, RequestPool* pool);
  int64_t EstimateCompletionLocked(int64_t now, uint32_t rows, uint32_t level) const;
  bool EvictLowerLocked(uint32_t level, Request** evicted);
  void UnqueueLocked(Request* r);  // counts a queued request as gone
  // Pops withdrawn requests from the front of every level, and expired ones into batch->dropped.
  void PruneHeadsLocked(int64_t now, Batch* batch);
  // True when the index entry still names a request that is here in `state`.
  bool LiveLocked(const DeadlineEntry& e, RequestState state) const;
  // Earliest live deadline of a heap (0: none), dropping stale entries on the way.
  int64_t EarliestLocked(std::vector<DeadlineEntry>* heap, RequestState state);
  void PushDeadlineLocked(std::vector<DeadlineEntry>* heap, Request* r, RequestState state);
  uint32_t TargetRows() const;
  uint32_t AheadRowsLocked(uint32_t level) const;
  void WaitLocked(std::unique_lock<std::mutex>& lock, int64_t until_ns);

  const BatcherOptions options_;
  const Clock* clock_;
  RequestPool* pool_;
  LatencyModel latency_;

  mutable std::mutex mu_;
  std::condition_variable cv_;         // executors: work, buffers, stop
  std::condition_variable reaper_cv_;  // the reaper: an earlier deadline, stop
  bool stopping_ = false;
  bool reaper_stop_ = false;
  std::vector<Ring> levels_;
  // Min-deadline indexes (heaps, std::greater), stale entries dropped lazily:
  // queued requests (batch closing, expiry in the queue) and executing ones
  // (answering on time a request whose batch runs past its deadline).
  std::vector<DeadlineEntry> queued_deadlines_;
  std::vector<DeadlineEntry> executing_deadlines_;
  uint32_t queued_requests_ = 0;
  uint32_t queued_rows_ = 0;
  std::vector<uint32_t> level_rows_;      // queued rows per level
  std::vector<uint32_t> level_requests_;  // queued requests per level
  uint32_t batch_cap_ = 0;
  uint64_t next_batch_id_ = 1;
  BatcherStats stats_;

  // buffers_[b][i]: batch buffer b, input i; sizes_[b][i]: its bytes in the current batch.
  std::vector<std::vector<std::vector<uint8_t>>> buffers_;
  std::vector<std::vector<size_t>> sizes_;
  std::vector<uint32_t> free_buffers_;
  std::vector<int64_t> inflight_start_ns_;  // per buffer: when its batch formed, 0 when free
  std::vector<uint32_t> inflight_rows_;
  std::vector<Request*> gather_;  // reused by NextBatch
};

}  // namespace steadyserve
