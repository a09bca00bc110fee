#include "steadyserve/inference_core.h"

#include <algorithm>
#include <cstring>

#include "steadyserve/v2_wire.h"

namespace steadyserve {
namespace {

thread_local InferRequestView tls_view;
thread_local ResponseWriter tls_default_writer;
// Fix (request_path_test): set by Route when it returns false — whether that call
// claimed the answer (TryAnswer). A Cancel can win first while a request of a failed
// batch is between models (owner == nullptr); then the cancel released the caller's
// reference and nobody may fill or deliver the answer.
thread_local bool tls_route_claimed = false;

bool Retryable(StatusCode c) {
  return c == StatusCode::kResourceExhausted || c == StatusCode::kDeadlineExceeded ||
         c == StatusCode::kUnavailable;
}

SkipReason RefusalReason(StatusCode c) {
  if (c == StatusCode::kResourceExhausted) return SkipReason::kResourceExhausted;
  if (c == StatusCode::kDeadlineExceeded) return SkipReason::kDeadlineExceeded;
  return SkipReason::kUnavailable;
}

}  // namespace

const char* SkipReasonName(SkipReason r) {
  switch (r) {
    case SkipReason::kExecutionError:
      return "execution_error";
    case SkipReason::kExecutionTimeout:
      return "execution_timeout";
    case SkipReason::kBadOutput:
      return "bad_output";
    case SkipReason::kNotReady:
      return "not_ready";
    case SkipReason::kCircuitOpen:
      return "circuit_open";
    case SkipReason::kDeadline:
      return "deadline";
    case SkipReason::kResourceExhausted:
      return "ResourceExhaustedError";
    case SkipReason::kDeadlineExceeded:
      return "DeadlineExceededError";
    case SkipReason::kUnavailable:
      return "UnavailableError";
    case SkipReason::kCount:
      break;
  }
  return "unknown";
}

InferenceCore::InferenceCore(uint32_t max_requests) : pool_(max_requests) {}

InferenceCore::~InferenceCore() = default;

InferenceCore::Entry* InferenceCore::EntryLocked(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : it->second.get();
}

InferenceCore::Entry* InferenceCore::GetOrAddLocked(const std::string& name) {
  auto& slot = entries_[name];
  if (!slot) {
    slot = std::make_unique<Entry>();
    slot->name = name;
    std::vector<std::string> names;
    for (const auto& [n, _] : entries_) names.push_back(n);
    std::sort(names.begin(), names.end());
    model_names_.clear();
    for (size_t i = 0; i < names.size(); ++i) model_names_ += (i ? ", " : "") + names[i];
  }
  return slot.get();
}

void InferenceCore::RebuildChainsLocked() {
  for (auto& [name, e] : entries_) {
    e->chain = {name};
    while (e->chain.size() <= 16) {
      const Entry* last = EntryLocked(e->chain.back());
      if (last == nullptr || last->backup.empty()) break;
      if (std::find(e->chain.begin(), e->chain.end(), last->backup) != e->chain.end()) break;  // cycle
      e->chain.push_back(last->backup);
    }
  }
}

void InferenceCore::LatestLocked(Entry* e) {
  // Latest: the highest numeric version.
  auto key = [](const std::string& v) {
    return std::make_pair(v.size(), v);  // numeric strings: longer is larger
  };
  std::shared_ptr<ModelCore> latest;
  for (const auto& [v, m] : e->versions)
    if (!latest || key(v) > key(latest->version())) latest = m;
  e->latest = latest;
}

void InferenceCore::AddModel(std::shared_ptr<ModelCore> model) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  Entry* e = GetOrAddLocked(model->name());
  e->unavailable.clear();
  e->versions[model->version()] = model;  // a reload of the same version replaces it here
  LatestLocked(e);
  RebuildChainsLocked();
}

bool InferenceCore::RemoveModel(const std::string& name, const std::string& version, const ModelCore* expected) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  Entry* e = EntryLocked(name);
  if (e == nullptr) return false;
  auto it = e->versions.find(version);
  if (it == e->versions.end() || (expected != nullptr && it->second.get() != expected)) return false;
  e->versions.erase(it);
  LatestLocked(e);
  return true;
}

void InferenceCore::SetRoute(const std::string& name, const std::string& backup, bool on_deadline_miss,
                             std::vector<DefaultOutput> defaults) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  Entry* e = GetOrAddLocked(name);
  e->backup = backup;
  e->on_deadline_miss = on_deadline_miss;
  e->defaults = std::move(defaults);
  RebuildChainsLocked();
}

void InferenceCore::SetUnavailable(const std::string& name, const std::string& why) {
  std::unique_lock<std::shared_mutex> lock(mu_);
  Entry* e = GetOrAddLocked(name);
  e->unavailable = why;
  e->versions.clear();
  e->latest.reset();
  RebuildChainsLocked();
}

void InferenceCore::SetCircuit(const std::string& name, CircuitState state, int32_t probe_budget) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  Entry* e = EntryLocked(name);
  if (e == nullptr) return;
  e->probes.store(probe_budget, std::memory_order_release);
  e->circuit.store(static_cast<uint8_t>(state), std::memory_order_release);
}

int32_t InferenceCore::ProbesLeft(const std::string& name) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  const Entry* e = EntryLocked(name);
  return e == nullptr ? 0 : std::max(0, e->probes.load(std::memory_order_acquire));
}

std::shared_ptr<ModelCore> InferenceCore::Find(const std::string& name, const std::string& version) const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  const Entry* e = EntryLocked(name);
  if (e == nullptr) return nullptr;
  if (version.empty()) return e->latest;
  auto it = e->versions.find(version);
  return it == e->versions.end() ? nullptr : it->second;
}

namespace {

// The repository's rule for a model name (repository.validate_model_name says
// it for directories; this is the same rule for names that arrive on the wire,
// checked only when the name is not a loaded model, so it costs nothing on the
// way of a valid request).
constexpr size_t kMaxModelNameLength = 255;

bool NameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
         c == '-';
}

Status CheckModelName(const std::string& name) {
  if (name.empty()) return Status(StatusCode::kInvalidArgument, "model name is empty");
  bool ok = name.size() <= kMaxModelNameLength && NameChar(name[0]) && name[0] != '_' && name[0] != '.' &&
            name[0] != '-' && name.find("..") == std::string::npos;
  for (size_t i = 0; ok && i < name.size(); ++i) ok = NameChar(name[i]);
  if (ok) return Status::Ok();
  std::string shown = name.size() <= 80 ? name : name.substr(0, 77) + "...";
  return Status(StatusCode::kInvalidArgument,
                "invalid model name '" + shown + "': a model name is 1 to " + std::to_string(kMaxModelNameLength) +
                    " characters of A-Z a-z 0-9 _ . -, starts with a letter or digit and contains no '..'");
}

}  // namespace

Status InferenceCore::LookupFirst(const std::string& model, const std::string& version) const {
  const Entry* e = EntryLocked(model);
  if (e == nullptr) {
    Status bad = CheckModelName(model);
    if (!bad.ok()) return bad;
  }
  if (e == nullptr)
    return Status(StatusCode::kNotFound, "model '" + model + "' not found (models: " +
                                             (model_names_.empty() ? "none" : model_names_) + ")");
  if (!version.empty() && e->versions.find(version) == e->versions.end() && e->unavailable.empty()) {
    std::string known;
    for (const auto& [v, _] : e->versions) known += (known.empty() ? "" : ", ") + v;
    return Status(StatusCode::kNotFound,
                  "model '" + model + "' has no version '" + version + "' (versions: " + known + ")");
  }
  return Status::Ok();
}

Status InferenceCore::FirstModelLocked(const std::string& model, const std::string& version,
                                       std::shared_ptr<ModelCore>* first) const {
  Status s = LookupFirst(model, version);
  if (!s.ok()) return s;
  const Entry* e = EntryLocked(model);
  if (!version.empty()) {
    auto it = e->versions.find(version);
    if (it != e->versions.end()) *first = it->second;
  } else {
    *first = e->latest;
  }
  if (!*first) {  // not loaded: decode against the first loaded link of the chain (same signature)
    for (const auto& link : e->chain) {
      const Entry* b = EntryLocked(link);
      if (b != nullptr && b->latest) {
        *first = b->latest;
        break;
      }
    }
  }
  if (!*first)
    return Status(StatusCode::kUnavailable,
                  "model '" + model + "' is not ready" + (e->unavailable.empty() ? "" : ": " + e->unavailable));
  return Status::Ok();
}

void InferenceCore::Note(Request* r, Entry* e, SkipReason reason, const std::string& detail) {
  if (!r->failover_reasons.empty()) r->failover_reasons += "; ";
  r->failover_reasons += e->name + ": " + SkipReasonName(reason) + " (" + detail + ")";
  e->skips[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
}

bool InferenceCore::Route(Request* r) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  Entry* primary = EntryLocked(r->model);
  const std::vector<std::string> empty;
  const std::vector<std::string>& chain = primary ? primary->chain : empty;
  for (; r->link < chain.size(); ++r->link) {
    Entry* e = EntryLocked(chain[r->link]);
    if (e == nullptr) {
      if (!r->failover_reasons.empty()) r->failover_reasons += "; ";
      r->failover_reasons += "backup '" + chain[r->link] + "' not found";
      continue;
    }
    ModelCore* m = nullptr;
    if (r->link == 0 && !r->version.empty()) {
      auto it = e->versions.find(r->version);
      if (it != e->versions.end()) m = it->second.get();
    } else {
      m = e->latest.get();
    }
    if (m == nullptr || !m->ready()) {
      std::string why = !e->unavailable.empty() ? "model '" + e->name + "' is not ready: " + e->unavailable
                                                : "model '" + e->name + "' is not ready";
      if (r->link == 0 && !r->version.empty())
        why = "model '" + e->name + "' version " + r->version + " is not ready";
      Note(r, e, SkipReason::kNotReady, why);
      if (r->link + 1 >= chain.size() && chain.size() == 1 && e->defaults.empty()) {
        tls_route_claimed = r->TryAnswer();
        if (tls_route_claimed) r->SetError(StatusCode::kUnavailable, why);
        return false;
      }
      continue;
    }
    // The circuit: open skips; half-open lets a budget of probes through.
    r->probe = false;
    const auto circuit = static_cast<CircuitState>(e->circuit.load(std::memory_order_acquire));
    if (circuit == CircuitState::kOpen) {
      Note(r, e, SkipReason::kCircuitOpen, "circuit open");
      continue;
    }
    if (circuit == CircuitState::kHalfOpen) {
      if (e->probes.fetch_sub(1, std::memory_order_acq_rel) <= 0) {
        e->probes.fetch_add(1, std::memory_order_acq_rel);
        Note(r, e, SkipReason::kCircuitOpen, "half-open, probe budget spent");
        continue;
      }
      r->probe = true;
    }
    // Estimated to miss the deadline while the next link would not: let the next one answer.
    if (r->deadline_ns != 0 && e->on_deadline_miss && r->link + 1 < chain.size()) {
      const int64_t done = m->EstimateCompletionNs(r->rows, r->priority);
      if (done != 0 && done > r->deadline_ns) {
        Entry* next = EntryLocked(chain[r->link + 1]);
        ModelCore* following = next ? next->latest.get() : nullptr;
        const int64_t after = following && following->ready() ? following->EstimateCompletionNs(r->rows, r->priority) : 0;
        if (after != 0 && after <= r->deadline_ns) {
          if (r->probe) e->probes.fetch_add(1, std::memory_order_acq_rel);
          Note(r, e, SkipReason::kDeadline, "estimated to finish after the deadline");
          continue;
        }
      }
    }
    const Status s = m->Admit(r);
    if (s.ok()) return true;
    if (r->probe) e->probes.fetch_add(1, std::memory_order_acq_rel);
    const bool deadline_left = r->deadline_ns == 0 || m->batcher().NowNs() < r->deadline_ns;
    if (Retryable(s.code()) && deadline_left && r->link + 1 < chain.size()) {
      Note(r, e, RefusalReason(s.code()), s.message());
      continue;
    }
    tls_route_claimed = r->TryAnswer();
    if (tls_route_claimed) r->SetError(s.code(), s.message());
    return false;
  }
  Exhausted(r);
  return false;
}

void InferenceCore::Exhausted(Request* r) {
  // Called with mu_ held shared.
  Entry* primary = EntryLocked(r->model);
  const std::string why =
      r->failover_reasons.empty() ? "no model in the chain could take the request" : r->failover_reasons;
  tls_route_claimed = r->TryAnswer();
  if (!tls_route_claimed) return;  // cancelled meanwhile: leave the request alone
  if (primary == nullptr || primary->defaults.empty()) {
    r->SetError(StatusCode::kUnavailable, "model '" + r->model + "' could not answer: " + why);
    return;
  }
  {
    std::lock_guard<std::mutex> guard(primary->failover_mu);
    ++primary->failovers["default_output"];
  }
  r->code = StatusCode::kOk;
  r->answered_by = r->model;
  r->answered_version = "default";
  r->failover = true;
  r->default_output = true;
  r->failover_reasons = why;
  std::vector<int64_t> shape;
  if (r->wire) {
    ResponseWriter& w = tls_default_writer;
    w.Begin(r->model, "default", r->id);
    w.AddParameterBool("failover", true);
    w.AddParameterBool("default_output", true);
    w.AddParameterString("failover_reason", why);
    // Rows are repeated into one buffer per output; the writer reads them before Finish returns.
    std::vector<std::vector<uint8_t>> rows(primary->defaults.size());
    std::vector<std::vector<int64_t>> shapes(primary->defaults.size());
    for (size_t o = 0; o < primary->defaults.size(); ++o) {
      const DefaultOutput& d = primary->defaults[o];
      shapes[o] = {static_cast<int64_t>(r->rows)};
      shapes[o].insert(shapes[o].end(), d.dims.begin(), d.dims.end());
      const size_t row_bytes = d.row.size() * sizeof(float);
      rows[o].resize(row_bytes * r->rows);
      for (uint32_t k = 0; k < r->rows; ++k) std::memcpy(rows[o].data() + k * row_bytes, d.row.data(), row_bytes);
      w.AddOutput(d.name, "FP32", shapes[o].data(), shapes[o].size(), rows[o].data(), rows[o].size());
    }
    w.Finish(&r->response);
    return;
  }
  r->n_outputs = 0;
  for (size_t o = 0; o < primary->defaults.size(); ++o) {
    const DefaultOutput& d = primary->defaults[o];
    OutputRows& out = r->AddOutput();
    out.output = static_cast<uint32_t>(o);
    out.name = d.name;
    out.dtype = static_cast<uint8_t>(DataType::kFp32);
    out.shape = {static_cast<int64_t>(r->rows)};
    out.shape.insert(out.shape.end(), d.dims.begin(), d.dims.end());
    const size_t row_bytes = d.row.size() * sizeof(float);
    out.data.resize(row_bytes * r->rows);
    for (uint32_t k = 0; k < r->rows; ++k) std::memcpy(out.data.data() + k * row_bytes, d.row.data(), row_bytes);
  }
}

Status InferenceCore::SubmitWire(const uint8_t* data, size_t size, int64_t deadline_ns, CompletionQueue* cq,
                                 uint64_t user_tag, bool* queued, uint64_t* handle, Request** answer,
                                 std::string* model_name, std::string_view call_id, bool call_id_wins) {
  *queued = false;
  *answer = nullptr;
  InferRequestView& view = tls_view;
  Status s = ParseInferRequest(data, size, &view);
  if (!s.ok()) return s;
  model_name->assign(view.model_name);
  std::shared_ptr<ModelCore> first;
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    s = FirstModelLocked(*model_name, std::string(view.model_version), &first);
    if (!s.ok()) return s;
  }
  // Request parameters: priority and timeout (Triton's names), integers >= 0.
  uint32_t priority = 0;
  int64_t timeout_us = 0;
  for (const auto& p : view.parameters) {
    if (p.key != "priority" && p.key != "timeout") continue;
    const char* what = p.key == "priority" ? "0 is the default level" : "microseconds";
    int64_t v;
    if (p.kind == ParameterView::Kind::kInt64) {
      v = p.int64_value;
    } else if (p.kind == ParameterView::Kind::kUint64 && p.uint64_value <= static_cast<uint64_t>(INT64_MAX)) {
      v = static_cast<int64_t>(p.uint64_value);
    } else {
      return Status(StatusCode::kInvalidArgument,
                    "request parameter '" + std::string(p.key) + "' must be an integer (" + what + ")");
    }
    if (v < 0)
      return Status(StatusCode::kInvalidArgument, "request parameter '" + std::string(p.key) +
                                                      "' must be >= 0 (" + what + "); got " + std::to_string(v));
    if (p.key == "priority") priority = static_cast<uint32_t>(std::min<int64_t>(v, UINT32_MAX));
    else timeout_us = v;
  }
  Request* r = nullptr;
  s = Decode(*first, [&](Request* req) { return first->signature().DecodeWire(view, req); }, &r);
  if (!s.ok()) return s;
  r->model = *model_name;
  r->version.assign(view.model_version);
  r->id.assign(view.id);
  if (call_id_wins || view.id.empty()) r->request_id.assign(call_id);
  else r->request_id.assign(view.id);
  r->wire = true;
  r->priority = priority;
  // The earlier of the transport's deadline and the `timeout` parameter binds.
  int64_t deadline = deadline_ns;
  if (timeout_us > 0) {
    const int64_t by_timeout = r->arrival_ns + std::min<int64_t>(timeout_us, INT64_MAX / 2000) * 1000;
    deadline = deadline == 0 ? by_timeout : std::min(deadline, by_timeout);
  }
  r->deadline_ns = deadline;
  r->cq = cq;
  r->user_tag = user_tag;
  *handle = r->Handle();
  if (Route(r)) {
    *queued = true;
    return Status::Ok();
  }
  pool_.Release(r);  // the core's reference; the caller reads the answer and releases its own
  *answer = r;
  return Status::Ok();
}

Status InferenceCore::SubmitTensors(const std::string& model, const std::string& version,
                                    const TensorRef* tensors, size_t n, const std::string_view* outputs,
                                    size_t n_outputs, int64_t deadline_ns, uint32_t priority,
                                    CompletionQueue* cq, uint64_t user_tag, bool* queued, Request** request,
                                    std::string_view request_id) {
  *request = nullptr;
  *queued = false;
  std::shared_ptr<ModelCore> first;
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    Status s = FirstModelLocked(model, version, &first);
    if (!s.ok()) return s;
  }
  Request* r = nullptr;
  Status s = Decode(*first, [&](Request* req) {
    return first->signature().LoadTensors(tensors, n, outputs, n_outputs, req);
  }, &r);
  if (!s.ok()) return s;
  r->model = model;
  r->version = version;
  r->request_id.assign(request_id);
  r->priority = priority;
  r->deadline_ns = deadline_ns;
  r->cq = cq;
  r->user_tag = user_tag;
  *request = r;
  *queued = Route(r);
  if (!*queued) pool_.Release(r);  // answered at once: the caller reads it, then releases its own reference
  return Status::Ok();
}

bool InferenceCore::Cancel(uint64_t handle) {
  Request* r = pool_.Find(handle);
  if (r == nullptr) return false;
  if (!r->TryAnswer()) return false;  // answered already: nothing to withdraw
  // Still queued: withdrawn (counted by the batcher, released when its ring slot
  // is popped); executing: its batch skips the answer.
  Batcher* b = r->owner.load(std::memory_order_acquire);
  if (b != nullptr) b->Withdraw(r);
  r->SetError(StatusCode::kCancelled, "cancelled by the caller");
  pool_.Release(r);  // the caller's reference: nobody will deliver this answer
  return true;
}

void InferenceCore::CountFailover(const std::string& primary, const std::string& answered_by) {
  std::shared_lock<std::shared_mutex> lock(mu_);
  Entry* e = EntryLocked(primary);
  if (e == nullptr) return;
  std::lock_guard<std::mutex> guard(e->failover_mu);
  ++e->failovers[answered_by];
}

std::vector<FailoverCount> InferenceCore::Failovers() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<FailoverCount> out;
  for (const auto& [name, e] : entries_) {
    std::lock_guard<std::mutex> guard(e->failover_mu);
    for (const auto& [by, n] : e->failovers) out.push_back({name, by, n});
  }
  return out;
}

std::vector<SkipCount> InferenceCore::Skips() const {
  std::shared_lock<std::shared_mutex> lock(mu_);
  std::vector<SkipCount> out;
  for (const auto& [name, e] : entries_)
    for (size_t k = 0; k < e->skips.size(); ++k) {
      const uint64_t n = e->skips[k].load(std::memory_order_relaxed);
      if (n) out.push_back({name, static_cast<SkipReason>(k), n});
    }
  return out;
}

void InferenceCore::Failover(Request* r, SkipReason reason, const std::string& detail) {
  {
    std::shared_lock<std::shared_mutex> lock(mu_);
    Entry* e = nullptr;
    const Entry* primary = EntryLocked(r->model);
    if (primary != nullptr && r->link < primary->chain.size()) e = EntryLocked(primary->chain[r->link]);
    if (e != nullptr) Note(r, e, reason, detail);
  }
  ++r->link;
  if (!Route(r)) {
    if (tls_route_claimed) r->Deliver();  // else a Cancel won: it answered the caller
    pool_.Release(r);
  }
}

}  // namespace steadyserve
