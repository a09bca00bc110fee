// InferenceCore: the native request path of one runtime — the table of loaded
// models with the routing Python publishes, the request pool, and the entry
// points every request takes (serialized gRPC bytes, or in-process tensors).
//
// Per request, natively: parse, look up, decode against the signature, route
// along the failover chain (skipping a model that is not ready, whose circuit
// is open, whose half-open probe budget is spent, or that is estimated to miss
// the deadline when the next one would not), admit or refuse at the door,
// queue. Python publishes routing state on the control plane (SetRoute,
// SetCircuit, AddModel / ready flags) and runs batches; it never sees a request.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "steadyserve/completion_queue.h"
#include "steadyserve/model_core.h"
#include "steadyserve/request.h"
#include "steadyserve/status.h"

namespace steadyserve {

// Why a model was passed over for the next link of its chain.
enum class SkipReason : uint8_t {
  kExecutionError,
  kExecutionTimeout,
  kBadOutput,
  kNotReady,
  kCircuitOpen,
  kDeadline,
  kResourceExhausted,  // refused: queue full
  kDeadlineExceeded,   // refused: admission / deadline
  kUnavailable,        // refused: stopping
  kCount,
};
const char* SkipReasonName(SkipReason r);

enum class CircuitState : uint8_t { kClosed = 0, kHalfOpen = 1, kOpen = 2 };

// A static answer of last resort: one FP32 row per output, repeated per request row.
struct DefaultOutput {
  std::string name;
  std::vector<int64_t> dims;  // non-batch dims
  std::vector<float> row;
};

struct FailoverCount {
  std::string model, answered_by;
  uint64_t count;
};
struct SkipCount {
  std::string model;
  SkipReason reason;
  uint64_t count;
};

class InferenceCore {
 public:
  explicit InferenceCore(uint32_t max_requests);
  ~InferenceCore();

  // --- control plane
  // Its version becomes routable once ready; one already there under the same version is
  // replaced (a reload): requests admitted to the old one stay with it.
  void AddModel(std::shared_ptr<ModelCore> model);
  // Takes a version out of routing (unloaded, or no longer selected) if it is still
  // `expected` (nullptr: whichever it is). Requests already admitted to it stay with
  // it: Python drains it after this returns. Once this returns no request reaches
  // it, since admission happens under the table's shared lock. True when removed.
  bool RemoveModel(const std::string& name, const std::string& version, const ModelCore* expected);
  // The model's failover settings (backup may be empty).
  void SetRoute(const std::string& name, const std::string& backup, bool on_deadline_miss,
                std::vector<DefaultOutput> defaults);
  // Marks a model that failed to load (no version serves): requests are routed past it.
  void SetUnavailable(const std::string& name, const std::string& why);
  void SetCircuit(const std::string& name, CircuitState state, int32_t probe_budget);
  // Probe budget left (half-open), for the breaker's bookkeeping.
  int32_t ProbesLeft(const std::string& name) const;
  std::shared_ptr<ModelCore> Find(const std::string& name, const std::string& version) const;

  // --- requests
  // Parses and routes one serialized ModelInferRequest. Returns OK with *queued
  // true (the answer will reach `cq` with `user_tag`; *handle for Cancel), or
  // with *queued false and *answer filled (answered at once: a refusal or a
  // default output; call Release(*answer) after reading it).
  // `call_id`: the transport's request id (x-request-id header, or one it made up);
  // the request's request_id is its V2 id instead when that is set and `call_id_wins`
  // is false (the transport made call_id up, or each stream message has its own id).
  Status SubmitWire(const uint8_t* data, size_t size, int64_t deadline_ns, CompletionQueue* cq,
                    uint64_t user_tag, bool* queued, uint64_t* handle, Request** answer,
                    std::string* model_name, std::string_view call_id = {}, bool call_id_wins = false);
  // The same for an in-process caller's tensors; *request is returned either
  // way: queued (cq == nullptr: the caller waits with Request::Wait) or
  // answered at once.
  Status SubmitTensors(const std::string& model, const std::string& version, const TensorRef* tensors,
                       size_t n, const std::string_view* outputs, size_t n_outputs, int64_t deadline_ns,
                       uint32_t priority, CompletionQueue* cq, uint64_t user_tag, bool* queued, Request** request,
                       std::string_view request_id = {});
  // The caller gives up on a request: withdrawn if still queued (never executed).
  // When the cancel wins, the caller's reference is released here; when the
  // request was answered first, its answer is delivered as usual and the
  // caller releases it after reading it. True when the cancel won.
  bool Cancel(uint64_t handle);
  // The caller is done with an answered request.
  void Release(Request* r) { pool_.Release(r); }

  // --- per batch (from ModelCore)
  // Sends a request of a failed batch to the next link of its chain, or answers it.
  void Failover(Request* r, SkipReason reason, const std::string& detail);
  // A request for `primary` answered by another model of its chain.
  void CountFailover(const std::string& primary, const std::string& answered_by);

  // --- figures
  std::vector<FailoverCount> Failovers() const;
  std::vector<SkipCount> Skips() const;
  RequestPool& pool() { return pool_; }

 private:
  struct Entry {
    std::string name;
    std::map<std::string, std::shared_ptr<ModelCore>> versions;
    std::shared_ptr<ModelCore> latest;
    std::string backup;
    std::vector<std::string> chain;  // name, backup, its backup, ...
    bool on_deadline_miss = true;
    std::string unavailable;  // why no version serves (load failure)
    std::vector<DefaultOutput> defaults;
    std::atomic<uint8_t> circuit{0};
    std::atomic<int32_t> probes{0};
    std::array<std::atomic<uint64_t>, static_cast<size_t>(SkipReason::kCount)> skips{};
    mutable std::mutex failover_mu;
    std::map<std::string, uint64_t> failovers;  // answered_by -> count
  };

  Entry* EntryLocked(const std::string& name) const;
  Entry* GetOrAddLocked(const std::string& name);
  void RebuildChainsLocked();
  static void LatestLocked(Entry* e);  // e->latest from e->versions
  // Walks r's chain from r->link. True: queued; false: r is answered (error or default).
  bool Route(Request* r);
  void Note(Request* r, Entry* e, SkipReason reason, const std::string& detail);
  void Exhausted(Request* r);
  Status LookupFirst(const std::string& model, const std::string& version) const;
  // The model version a request is decoded against: the one asked for, else the first
  // loaded link of its chain (backups share the signature). With mu_ held.
  Status FirstModelLocked(const std::string& model, const std::string& version,
                          std::shared_ptr<ModelCore>* first) const;

  // A fresh request from the pool, stamped and filled by `fill` (decode against `first`'s
  // signature); a refusal is counted on `first` and the request returned to the pool.
  template <typename Fill>
  Status Decode(ModelCore& first, Fill&& fill, Request** out) {
    Request* r = pool_.Acquire();
    if (r == nullptr)
      return Status(StatusCode::kResourceExhausted, "runtime is at its limit of " +
                                                        std::to_string(pool_.capacity()) + " requests in flight");
    r->arrival_ns = first.batcher().NowNs();
    Status s = fill(r);
    if (!s.ok()) {
      first.stats().Refused(Refusal::kInvalidInput);
      first.stats().RequestDone(s.code(), 0, -1);
      pool_.Release(r);  // both references: nobody else saw it
      pool_.Release(r);
      return s;
    }
    *out = r;
    return Status::Ok();
  }

  RequestPool pool_;
  mutable std::shared_mutex mu_;  // the table; requests take it shared
  std::unordered_map<std::string, std::unique_ptr<Entry>> entries_;
  std::string model_names_;  // "a, b" for NOT_FOUND messages
};

}  // namespace steadyserve
