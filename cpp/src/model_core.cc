#include "steadyserve/model_core.h"

#include <pthread.h>

#include <chrono>
#include <cstring>

#include "steadyserve/inference_core.h"
#include "steadyserve/v2_wire.h"

namespace steadyserve {
namespace {

thread_local ResponseWriter tls_writer;
thread_local std::vector<int64_t> tls_shapes;                  // per output: rank dims
thread_local std::vector<std::vector<uint64_t>> tls_offsets;   // per BYTES output: element byte offsets
thread_local Batch tls_batch;
// A finished batch, moved out of inflight_[buffer] before its buffer is handed back
// (once Batcher::Complete returns, another executor's NextBatch may park a new
// batch in that slot).
thread_local Batch tls_done;
thread_local std::vector<Request*> tls_queued, tls_executing;

// Element byte offsets of Triton's BYTES serialization (count + 1 entries), or false if malformed.
bool ScanBytes(const uint8_t* data, size_t size, uint64_t count, std::vector<uint64_t>* offsets) {
  offsets->resize(count + 1);
  size_t at = 0;
  for (uint64_t k = 0; k < count; ++k) {
    (*offsets)[k] = at;
    if (size - at < 4) return false;
    uint32_t len;
    std::memcpy(&len, data + at, 4);
    if (len > size - at - 4) return false;
    at += 4 + len;
  }
  (*offsets)[count] = at;
  return at == size;
}

}  // namespace

Status ModelCore::Create(std::unique_ptr<Signature> signature, ModelCoreOptions options, RequestPool* pool,
                         InferenceCore* core, std::unique_ptr<ModelCore>* out) {
  options.batching.model = signature->model();
  options.batching.inputs.clear();
  for (const auto& in : signature->inputs()) options.batching.inputs.push_back({in.name, in.RowBytes()});
  if (!signature->batched()) options.batching.max_batch_size = 1;
  if (options.default_level >= options.batching.priority_levels)
    return Status(StatusCode::kInvalidArgument, "model '" + signature->model() + "': default level " +
                                                    std::to_string(options.default_level + 1) +
                                                    " is outside the priority levels");
  std::unique_ptr<Batcher> batcher;
  Status s = Batcher::Create(options.batching, pool, &batcher);
  if (!s.ok()) return s;
  std::unique_ptr<ModelCore> m(new ModelCore(std::move(signature), std::move(options), pool, core));
  m->batcher_ = std::move(batcher);
  m->inflight_.resize(m->options_.batching.executors);
  m->reaper_ = std::thread([raw = m.get()] { raw->ReaperLoop(); });
  *out = std::move(m);
  return Status::Ok();
}

ModelCore::ModelCore(std::unique_ptr<Signature> signature, ModelCoreOptions options, RequestPool* pool,
                     InferenceCore* core)
    : signature_(std::move(signature)),
      options_(std::move(options)),
      pool_(pool),
      core_(core),
      stats_(options_.latency_bounds_ns, options_.batching.max_batch_size, options_.slo_ns) {}

ModelCore::~ModelCore() { Close(); }

void ModelCore::Close() {
  batcher_->Stop();
  batcher_->StopReaper();
  if (reaper_.joinable()) reaper_.join();
}

Status ModelCore::Level(uint32_t priority, uint32_t* level) const {
  const uint32_t levels = options_.batching.priority_levels;
  if (priority == 0) {
    *level = options_.default_level;
    return Status::Ok();
  }
  if (priority <= levels) {
    *level = priority - 1;
    return Status::Ok();
  }
  return Status(StatusCode::kInvalidArgument,
                "model '" + name() + "': priority " + std::to_string(priority) + " is outside 0.." +
                    std::to_string(levels) + " (1 is the highest level, 0 means the default level " +
                    std::to_string(options_.default_level + 1) + ")");
}

int64_t ModelCore::EstimateCompletionNs(uint32_t rows, uint32_t priority) const {
  uint32_t level;
  if (!Level(priority, &level).ok()) level = options_.default_level;
  const uint32_t max_rows = options_.batching.max_batch_size;
  return batcher_->EstimateCompletionNs(std::max<uint32_t>(1, std::min(rows, max_rows)), level);
}

namespace {

// A uniform draw in [0, 1) per call, from a per-thread xorshift generator: sampling
// must cost nothing next to a request, and needs no shared state.
double UniformDraw() {
  thread_local uint64_t state = 0x9E3779B97F4A7C15ull ^ reinterpret_cast<uintptr_t>(&state) ^
                                static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return static_cast<double>(state >> 11) * 0x1.0p-53;
}

}  // namespace

Status ModelCore::Admit(Request* r) {
  if (!r->log_drawn) {
    r->log_drawn = true;
    const double rate = log_rate();
    r->logged = rate >= 1.0 || (rate > 0.0 && UniformDraw() < rate);
  }
  uint32_t level;
  Status s = Level(r->priority, &level);
  if (s.ok() && r->deadline_ns == 0 && options_.default_deadline_ns > 0)
    r->deadline_ns = batcher_->NowNs() + options_.default_deadline_ns;
  // The fused validate / impute / scale / count pass, into the request's own rows.
  const auto& inputs = signature_->inputs();
  if (s.ok()) {
    r->transformed.resize(inputs.size());
    for (size_t i = 0; i < inputs.size(); ++i) {
      auto& out = r->transformed[i];
      if (!inputs[i].transform) {
        out.clear();
        continue;
      }
      out.resize(r->inputs[i].size());
      s = inputs[i].transform->Apply(reinterpret_cast<const float*>(r->inputs[i].data()),
                                     reinterpret_cast<float*>(out.data()), r->rows);
      if (!s.ok()) break;
    }
  }
  if (!s.ok()) {
    stats_.Refused(Refusal::kInvalidInput);
    stats_.RequestDone(s.code(), batcher_->NowNs() - r->arrival_ns, -1);
    return s;
  }
  Request* evicted = nullptr;
  s = batcher_->Submit(r, level, &evicted);
  if (evicted != nullptr) {
    if (evicted->TryAnswer()) {
      stats_.Refused(Refusal::kShedForPriority);
      stats_.RequestDone(StatusCode::kResourceExhausted, batcher_->NowNs() - evicted->arrival_ns, -1);
      evicted->SetError(StatusCode::kResourceExhausted,
                        "model '" + name() +
                            "': shed from a full queue to make room for a request of higher priority");
      Finish(evicted);
    } else {
      pool_->Release(evicted);
    }
  }
  if (!s.ok()) {
    Refusal why = Refusal::kQueueFull;
    if (s.code() == StatusCode::kUnavailable) why = Refusal::kStopping;
    if (s.code() == StatusCode::kInvalidArgument) why = Refusal::kInvalidInput;
    if (s.code() == StatusCode::kDeadlineExceeded)
      why = r->deadline_ns <= batcher_->NowNs() ? Refusal::kDeadlinePassed : Refusal::kAdmission;
    stats_.Refused(why);
    stats_.RequestDone(s.code(), batcher_->NowNs() - r->arrival_ns, -1);
  }
  return s;
}

void ModelCore::Finish(Request* r) {
  r->Deliver();
  pool_->Release(r);
}

void ModelCore::ReaperLoop() {
  // Named for debuggers and profilers (15 characters at most).
  pthread_setname_np(pthread_self(), "ss-reaper");
  auto& queued = tls_queued;
  auto& executing = tls_executing;
  for (;;) {
    queued.clear();
    executing.clear();
    const int64_t now = batcher_->NowNs();
    const int64_t next = batcher_->ExpireDue(now, &queued, &executing);
    for (Request* r : queued) {
      // Still in its ring (released when popped): answer only.
      if (!r->TryAnswer()) continue;
      stats_.Refused(Refusal::kExpiredInQueue);
      stats_.RequestDone(StatusCode::kDeadlineExceeded, now - r->arrival_ns, -1);
      r->SetError(StatusCode::kDeadlineExceeded,
                  "model '" + name() + "': deadline passed while queued; the request was not executed");
      r->Deliver();
    }
    for (Request* r : executing) {
      // Its batch still holds it: answer only; the batch's completion skips it.
      if (!r->TryAnswer()) continue;
      stats_.RequestDone(StatusCode::kDeadlineExceeded, now - r->arrival_ns, -1);
      r->SetError(StatusCode::kDeadlineExceeded,
                  "model '" + name() + "': deadline passed while its batch was executing");
      r->Deliver();
    }
    if (!queued.empty() || !executing.empty()) continue;
    batcher_->WaitForDeadline(next);
    if (batcher_->ReaperStopped()) return;
  }
}

Status ModelCore::NextBatch(int64_t timeout_ns, const Batch** out, bool* stopped) {
  *out = nullptr;
  Batch& batch = tls_batch;
  Status s = batcher_->NextBatch(timeout_ns, &batch);
  if (!s.ok()) return s;
  *stopped = batch.stopped;
  const int64_t now = batcher_->NowNs();
  for (Request* r : batch.dropped) {
    if (r->TryAnswer()) {
      stats_.Refused(Refusal::kExpiredInQueue);
      stats_.RequestDone(StatusCode::kDeadlineExceeded, now - r->arrival_ns, -1);
      r->SetError(StatusCode::kDeadlineExceeded,
                  "model '" + name() + "': deadline passed while queued; the request was not executed");
      Finish(r);
    } else {
      pool_->Release(r);
    }
  }
  batch.dropped.clear();
  if (batch.rows == 0) return Status::Ok();
  // Park the batch with its buffer; the thread-local one takes the parked one's capacity.
  const uint32_t buffer = batch.buffer;
  std::swap(inflight_[buffer], batch);
  batch.items.clear();
  *out = &inflight_[buffer];
  return Status::Ok();
}

std::string ModelCore::MalformedOutputs(const Batch& batch, const OutputTensor* outputs, size_t n) {
  const auto& sig = signature_->outputs();
  std::string problem;
  if (n != sig.size()) {
    problem = "produced " + std::to_string(n) + " outputs, expected " + std::to_string(sig.size());
  }
  auto& offsets = tls_offsets;
  offsets.resize(sig.size());
  for (size_t o = 0; problem.empty() && o < n; ++o) {
    const OutputTensor& out = outputs[o];
    const std::string what = "output '" + sig[o].name + "' ";
    if (out.dtype != sig[o].dtype) {
      problem = what + "is " + DataTypeName(out.dtype) + ", the signature says " + DataTypeName(sig[o].dtype);
    } else if (signature_->batched() && (out.rank == 0 || out.shape[0] != batch.rows)) {
      problem = what + "has " + (out.rank ? std::to_string(out.shape[0]) : std::string("no")) +
                " rows, expected " + std::to_string(batch.rows) + " rows for a batch of " +
                std::to_string(batch.rows);
    } else {
      uint64_t count = 1;
      for (size_t d = 0; d < out.rank; ++d) count *= static_cast<uint64_t>(std::max<int64_t>(0, out.shape[d]));
      if (out.dtype == DataType::kBytes) {
        if (!ScanBytes(out.data, out.size, count, &offsets[o])) problem = what + "has malformed BYTES data";
      } else if (out.size != count * ElementSize(out.dtype)) {
        problem = what + "has " + std::to_string(out.size) + " bytes for " + std::to_string(count) + " elements";
      }
    }
  }
  return problem;
}

namespace {

// "[r, c]" of flat element k of a tensor of `shape`.
std::string IndexText(uint64_t k, const int64_t* shape, size_t rank) {
  std::vector<uint64_t> idx(rank);
  for (size_t d = rank; d-- > 0;) {
    const uint64_t dim = static_cast<uint64_t>(std::max<int64_t>(1, shape[d]));
    idx[d] = k % dim;
    k /= dim;
  }
  std::string s = "[";
  for (size_t d = 0; d < rank; ++d) s += (d ? ", " : "") + std::to_string(idx[d]);
  return s + "]";
}

std::string G(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (std::isnan(v)) return "nan";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

template <typename T>
std::string CheckValues(const T* v, uint64_t count, const OutputCheck& c, const int64_t* shape, size_t rank,
                        const std::string& where) {
  if (c.finite) {
    for (uint64_t k = 0; k < count; ++k)
      if (!std::isfinite(v[k]))
        return where + "has a non-finite value " + G(v[k]) + " at " + IndexText(k, shape, rank);
  }
  const std::string range = "[" + G(c.lo) + ", " + G(c.hi) + "]";
  for (uint64_t k = 0; k < count; ++k)
    if (v[k] < c.lo) return where + "value " + G(v[k]) + " at " + IndexText(k, shape, rank) + " is outside " + range;
  for (uint64_t k = 0; k < count; ++k)
    if (v[k] > c.hi) return where + "value " + G(v[k]) + " at " + IndexText(k, shape, rank) + " is outside " + range;
  return std::string();
}

}  // namespace

bool ModelCore::CheckOutputs(uint32_t buffer, const OutputTensor* outputs, size_t n, std::string* reason,
                             std::string* message) {
  if (buffer >= inflight_.size() || inflight_[buffer].rows == 0) {
    *reason = "execution_error";
    *message = "model '" + name() + "': batch buffer " + std::to_string(buffer) + " is not executing";
    return false;
  }
  std::string problem = MalformedOutputs(inflight_[buffer], outputs, n);
  if (!problem.empty()) {
    *reason = "execution_error";
    *message = "model '" + name() + "' version " + version() + ": " + problem;
    return false;
  }
  for (const OutputCheck& c : options_.checks) {
    const OutputTensor& out = outputs[c.output];
    const std::string where = "model '" + name() + "' version " + version() + ": output '" +
                              signature_->outputs()[c.output].name + "' ";
    const uint64_t count = out.size / std::max<size_t>(1, ElementSize(out.dtype));
    if (out.dtype == DataType::kFp32)
      problem = CheckValues(reinterpret_cast<const float*>(out.data), count, c, out.shape, out.rank, where);
    else if (out.dtype == DataType::kFp64)
      problem = CheckValues(reinterpret_cast<const double*>(out.data), count, c, out.shape, out.rank, where);
    if (!problem.empty()) {
      *reason = "bad_output";
      *message = problem;
      return false;
    }
  }
  return true;
}

Status ModelCore::CompleteBatch(uint32_t buffer, const OutputTensor* outputs, size_t n, const BatchTimings& t) {
  if (buffer >= inflight_.size() || inflight_[buffer].rows == 0)
    return Status(StatusCode::kInvalidArgument,
                  "model '" + name() + "': batch buffer " + std::to_string(buffer) + " is not executing");
  Batch& batch = inflight_[buffer];
  const std::string problem = MalformedOutputs(batch, outputs, n);
  if (!problem.empty()) {
    const std::string message = "model '" + name() + "' version " + version() + ": " + problem;
    FailBatch(buffer, "execution_error", message, t);
    return Status(StatusCode::kInternal, message);
  }
  // Fix (request_path_test): take the batch out of its slot first; inflight_[buffer]
  // belongs to the next batch of that buffer as soon as Complete returns.
  // Prediction drift: FP32 outputs with a monitor are counted, batch by batch.
  const auto& sig = signature_->outputs();
  for (size_t o = 0; o < sig.size() && signature_->batched(); ++o) {
    const auto& monitor = sig[o].transform;
    if (!monitor || outputs[o].dtype != DataType::kFp32) continue;
    const uint64_t width = outputs[o].size / sizeof(float) / std::max<uint32_t>(1, batch.rows);
    if (width == monitor->options().n_features)
      monitor->Observe(reinterpret_cast<const float*>(outputs[o].data), batch.rows);
  }
  Batch& done = tls_done;
  std::swap(done, batch);
  batch.items.clear();
  batch.rows = 0;
  batcher_->Complete(done, t.learn_ns);
  stats_.BatchDone(done.rows, t.input_ns, t.infer_ns, t.output_ns, true, t.wall_ms);
  for (const auto& item : done.items) {
    Request* r = item.request;
    if (r->TryAnswer()) {
      Answer(r, item.offset, outputs, done.formed_ns - r->enqueue_ns);
      Finish(r);
    } else {
      pool_->Release(r);  // answered at its deadline while the batch ran
    }
  }
  done.items.clear();
  done.rows = 0;
  return Status::Ok();
}

void ModelCore::Answer(Request* r, uint32_t offset, const OutputTensor* outputs, int64_t queue_ns) {
  const auto& sig = signature_->outputs();
  const bool batched = signature_->batched();
  r->code = StatusCode::kOk;
  r->failover = r->link > 0;
  if (r->failover) core_->CountFailover(r->model, name());
  r->answered_by = name();
  r->answered_version = version();
  ResponseWriter& w = tls_writer;
  if (r->wire) {
    w.Begin(name(), version(), r->id);
    if (r->failover) {
      w.AddParameterBool("failover", true);
      w.AddParameterString("failover_from", r->model);
      w.AddParameterString("failover_reason", r->failover_reasons);
    }
  } else {
    r->n_outputs = 0;
  }
  auto& shapes = tls_shapes;
  shapes.resize(kMaxRank * sig.size() + 1);
  for (size_t o = 0; o < sig.size(); ++o) {
    if (r->output_mask != 0 && !(r->output_mask & (uint64_t{1} << o))) continue;
    const OutputTensor& out = outputs[o];
    int64_t* shape = shapes.data() + o * kMaxRank;
    const size_t rank = std::min(out.rank, kMaxRank);
    for (size_t d = 0; d < rank; ++d) shape[d] = out.shape[d];
    const uint8_t* data = out.data;
    size_t size = out.size;
    if (batched) {
      shape[0] = r->rows;
      uint64_t per_row = 1;
      for (size_t d = 1; d < rank; ++d) per_row *= static_cast<uint64_t>(std::max<int64_t>(0, out.shape[d]));
      if (out.dtype == DataType::kBytes) {
        const auto& off = tls_offsets[o];
        const uint64_t begin = off[offset * per_row], end = off[(offset + r->rows) * per_row];
        data = out.data + begin;
        size = end - begin;
      } else {
        const size_t row_bytes = per_row * ElementSize(out.dtype);
        data = out.data + static_cast<size_t>(offset) * row_bytes;
        size = static_cast<size_t>(r->rows) * row_bytes;
      }
    }
    if (r->wire) {
      w.AddOutput(sig[o].name, DataTypeName(out.dtype), shape, rank, data, size);
    } else {
      OutputRows& rows = r->AddOutput();
      rows.output = static_cast<uint32_t>(o);
      rows.name = sig[o].name;
      rows.dtype = static_cast<uint8_t>(out.dtype);
      rows.data.assign(data, data + size);
      rows.shape.assign(shape, shape + rank);
    }
  }
  if (r->wire) w.Finish(&r->response);
  stats_.RequestDone(StatusCode::kOk, batcher_->NowNs() - r->arrival_ns, queue_ns);
}

void ModelCore::FailBatch(uint32_t buffer, const std::string& reason, const std::string& message,
                          const BatchTimings& t) {
  if (buffer >= inflight_.size() || inflight_[buffer].rows == 0) return;
  // Fix (request_path_test): as in CompleteBatch, out of the slot before Complete.
  Batch& batch = tls_done;
  std::swap(batch, inflight_[buffer]);
  inflight_[buffer].items.clear();
  inflight_[buffer].rows = 0;
  batcher_->Complete(batch, t.learn_ns);
  stats_.BatchDone(batch.rows, t.input_ns, t.infer_ns, t.output_ns, false, t.wall_ms);
  SkipReason why = SkipReason::kExecutionError;
  if (reason == "execution_timeout") why = SkipReason::kExecutionTimeout;
  if (reason == "bad_output") why = SkipReason::kBadOutput;
  const int64_t now = batcher_->NowNs();
  for (const auto& item : batch.items) {
    Request* r = item.request;
    stats_.RequestDone(StatusCode::kInternal, now - r->arrival_ns, -1);
    if (r->answered.load(std::memory_order_acquire)) {
      pool_->Release(r);  // its caller was answered at the deadline
      continue;
    }
    core_->Failover(r, why, message);  // takes over the core's reference
  }
  batch.items.clear();
  batch.rows = 0;
}

}  // namespace steadyserve
