// Shared by the request-path and frontend tests: a tiny protobuf encoder and
// decoder for ModelInferRequest / ModelInferResponse, a test model (x FP32
// [-1, 4] -> y FP32 [-1, 2], y = [sum(x), 1000 * x[0] + x[1]] per row) and an
// executor thread that runs its batches natively.
#pragma once

#include <poll.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "steadyserve/completion_queue.h"
#include "steadyserve/inference_core.h"
#include "steadyserve/model_core.h"
#include "steadyserve/signature.h"

#define CHECK_STR(a, b)                                                                              \
  do {                                                                                               \
    const std::string sa = (a), sb = (b);                                                            \
    if (sa != sb) {                                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK_STR failed: %s == %s ('%s' vs '%s')\n", __FILE__, __LINE__, \
                   #a, #b, sa.c_str(), sb.c_str());                                                  \
      std::exit(1);                                                                                  \
    }                                                                                                \
  } while (0)

namespace steadyserve_test {

using namespace steadyserve;

constexpr int64_t kMs = 1000000;
constexpr int kFeatures = 4;

// ---------------------------------------------------------------------------
// A minimal protobuf encoder / decoder (proto3 wire format).

struct Pb {
  std::string s;
  void Varint(uint64_t v) {
    while (v >= 0x80) {
      s.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    s.push_back(static_cast<char>(v));
  }
  void Tag(uint32_t field, uint32_t wt) { Varint((uint64_t{field} << 3) | wt); }
  void Bytes(uint32_t field, const std::string& v) {
    Tag(field, 2);
    Varint(v.size());
    s += v;
  }
  void Msg(uint32_t field, const Pb& m) { Bytes(field, m.s); }
  void Int(uint32_t field, uint64_t v) {
    Tag(field, 0);
    Varint(v);
  }
};

struct Field {
  uint32_t number = 0;
  uint32_t wt = 0;
  uint64_t varint = 0;
  std::string bytes;
};

std::vector<Field> Decode(const std::string& data) {
  std::vector<Field> out;
  size_t at = 0;
  auto varint = [&]() {
    uint64_t v = 0;
    int shift = 0;
    for (;;) {
      CHECK(at < data.size());
      const uint8_t b = static_cast<uint8_t>(data[at++]);
      v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return v;
      shift += 7;
      CHECK(shift < 64);
    }
  };
  while (at < data.size()) {
    const uint64_t tag = varint();
    Field f;
    f.number = static_cast<uint32_t>(tag >> 3);
    f.wt = static_cast<uint32_t>(tag & 7);
    if (f.wt == 0) {
      f.varint = varint();
    } else if (f.wt == 2) {
      const uint64_t n = varint();
      CHECK(n <= data.size() - at);
      f.bytes = data.substr(at, n);
      at += n;
    } else if (f.wt == 1) {
      CHECK(data.size() - at >= 8);
      f.bytes = data.substr(at, 8);
      at += 8;
    } else if (f.wt == 5) {
      CHECK(data.size() - at >= 4);
      f.bytes = data.substr(at, 4);
      at += 4;
    } else {
      CHECK(false);
    }
    out.push_back(std::move(f));
  }
  return out;
}

struct Param {
  bool is_bool = false, is_string = false;
  bool b = false;
  int64_t i = 0;
  std::string s;
};

struct OutTensor {
  std::string name, datatype;
  std::vector<int64_t> shape;
  std::string raw;
};

struct Response {
  std::string model, version, id;
  std::map<std::string, Param> params;
  std::vector<OutTensor> outputs;
};

Response ParseResponse(const std::string& bytes) {
  Response r;
  std::vector<std::string> raws;
  for (const Field& f : Decode(bytes)) {
    switch (f.number) {
      case 1:
        r.model = f.bytes;
        break;
      case 2:
        r.version = f.bytes;
        break;
      case 3:
        r.id = f.bytes;
        break;
      case 4: {  // map<string, InferParameter>
        std::string key;
        Param p;
        for (const Field& e : Decode(f.bytes)) {
          if (e.number == 1) key = e.bytes;
          if (e.number == 2) {
            for (const Field& v : Decode(e.bytes)) {
              if (v.number == 1) p.is_bool = true, p.b = v.varint != 0;
              if (v.number == 2) p.i = static_cast<int64_t>(v.varint);
              if (v.number == 3) p.is_string = true, p.s = v.bytes;
            }
          }
        }
        r.params[key] = p;
        break;
      }
      case 5: {
        OutTensor t;
        for (const Field& e : Decode(f.bytes)) {
          if (e.number == 1) t.name = e.bytes;
          if (e.number == 2) t.datatype = e.bytes;
          if (e.number == 3 && e.wt == 0) t.shape.push_back(static_cast<int64_t>(e.varint));
          if (e.number == 3 && e.wt == 2) {
            size_t at = 0;  // packed varints
            while (at < e.bytes.size()) {
              uint64_t v = 0;
              int shift = 0;
              for (;;) {
                const uint8_t b = static_cast<uint8_t>(e.bytes[at++]);
                v |= uint64_t{b & 0x7fu} << shift;
                shift += 7;
                if (!(b & 0x80)) break;
              }
              t.shape.push_back(static_cast<int64_t>(v));
            }
          }
        }
        r.outputs.push_back(t);
        break;
      }
      case 6:
        raws.push_back(f.bytes);
        break;
      default:
        break;
    }
  }
  CHECK_EQ(raws.size(), r.outputs.size());
  for (size_t i = 0; i < raws.size(); ++i) r.outputs[i].raw = raws[i];
  return r;
}

// Row k of request `token`: x = [token, k, 1, 2].
std::vector<float> Rows(uint32_t token, uint32_t rows) {
  std::vector<float> x(static_cast<size_t>(rows) * kFeatures);
  for (uint32_t k = 0; k < rows; ++k) {
    x[k * kFeatures + 0] = static_cast<float>(token);
    x[k * kFeatures + 1] = static_cast<float>(k);
    x[k * kFeatures + 2] = 1;
    x[k * kFeatures + 3] = 2;
  }
  return x;
}

struct WireOptions {
  std::string version;
  int64_t timeout_us = -1;  // the `timeout` parameter; < 0: not sent
  std::vector<int64_t> shape;  // default [rows, 4]
  bool send_id = true;         // the V2 id field (the token)
};

// A ModelInferRequest for `model` with id = the token, input x FP32 in raw_input_contents.
std::string InferRequest(const std::string& model, uint32_t token, uint32_t rows, const WireOptions& o = {}) {
  Pb req;
  req.Bytes(1, model);
  if (!o.version.empty()) req.Bytes(2, o.version);
  if (o.send_id) req.Bytes(3, std::to_string(token));
  if (o.timeout_us >= 0) {
    Pb value, entry;
    value.Int(2, static_cast<uint64_t>(o.timeout_us));  // int64_param
    entry.Bytes(1, "timeout");
    entry.Msg(2, value);
    req.Msg(4, entry);
  }
  Pb in;
  in.Bytes(1, "x");
  in.Bytes(2, "FP32");
  std::vector<int64_t> shape = o.shape.empty() ? std::vector<int64_t>{rows, kFeatures} : o.shape;
  Pb packed;
  for (int64_t d : shape) packed.Varint(static_cast<uint64_t>(d));
  in.Bytes(3, packed.s);
  req.Msg(5, in);
  const std::vector<float> x = Rows(token, rows);
  req.Bytes(7, std::string(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float)));
  return req.s;
}

// Checks y of `rows` rows is the executor's answer for request `token`.
void CheckY(const uint8_t* data, size_t size, uint32_t token, uint32_t rows) {
  CHECK_EQ(size, static_cast<size_t>(rows) * 2 * sizeof(float));
  std::vector<float> y(rows * 2);
  std::memcpy(y.data(), data, size);
  for (uint32_t k = 0; k < rows; ++k) {
    CHECK_EQ(y[k * 2], static_cast<float>(token + k + 3));
    CHECK_EQ(y[k * 2 + 1], static_cast<float>(token * 1000 + k));
  }
}

void CheckResponse(const Response& resp, const std::string& model, uint32_t token, uint32_t rows) {
  CHECK_STR(resp.model, model);
  CHECK_STR(resp.id, std::to_string(token));
  CHECK_EQ(resp.outputs.size(), size_t{1});
  const OutTensor& y = resp.outputs[0];
  CHECK_STR(y.name, std::string("y"));
  CHECK_STR(y.datatype, std::string("FP32"));
  CHECK(y.shape == (std::vector<int64_t>{rows, 2}));
  CheckY(reinterpret_cast<const uint8_t*>(y.raw.data()), y.raw.size(), token, rows);
}

// ---------------------------------------------------------------------------
// Models and executors.

std::unique_ptr<Signature> MakeSignature(const std::string& model, uint32_t max_batch = 8) {
  std::vector<TensorSignature> in(1), out(1);
  in[0].name = "x";
  in[0].dtype = DataType::kFp32;
  in[0].dims = {kFeatures};
  out[0].name = "y";
  out[0].dtype = DataType::kFp32;
  out[0].dims = {2};
  std::unique_ptr<Signature> sig;
  Status s = Signature::Create(model, max_batch, std::move(in), std::move(out), 1 << 20, &sig);
  CHECK(s.ok());
  return sig;
}

ModelCoreOptions Opts(uint32_t max_batch = 8, int64_t delay_ns = 0, uint32_t queue = 64) {
  ModelCoreOptions o;
  o.version = "1";
  o.batching.max_batch_size = max_batch;
  o.batching.max_queue_delay_ns = delay_ns;
  o.batching.max_queue_size = queue;
  o.latency_bounds_ns = {1 * kMs, 10 * kMs, 100 * kMs, 1000 * kMs};
  return o;
}

std::shared_ptr<ModelCore> AddModel(InferenceCore& core, const std::string& name, ModelCoreOptions o = Opts()) {
  std::unique_ptr<ModelCore> m;
  Status s = ModelCore::Create(MakeSignature(name, o.batching.max_batch_size), o, &core.pool(), &core, &m);
  if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
  CHECK(s.ok());
  std::shared_ptr<ModelCore> shared(std::move(m));
  core.AddModel(shared);
  shared->set_ready(true);
  return shared;
}

// Runs batches of one model on its own thread until the model stops.
class Executor {
 public:
  enum class Mode { kComplete, kFail, kFailSome, kBadOutput };  // kFailSome: every third batch fails
  // unique_tags: each request has its own user tag (checked: executed at most once).
  explicit Executor(std::shared_ptr<ModelCore> m, Mode mode = Mode::kComplete, bool unique_tags = true)
      : m_(std::move(m)), mode_(mode), unique_tags_(unique_tags) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Executor() { Join(); }
  void Join() {
    if (!thread_.joinable()) return;
    m_->Stop();
    thread_.join();
  }
  // The next batch blocks until Release() (to keep the executor busy).
  void HoldNext() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_ = true;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      hold_ = false;
    }
    cv_.notify_all();
  }
  bool Holding() {
    std::lock_guard<std::mutex> lock(mu_);
    return holding_;
  }
  std::set<uint64_t> Seen() {
    std::lock_guard<std::mutex> lock(mu_);
    return seen_;
  }
  uint64_t batches() const { return batches_.load(); }

 private:
  void Loop() {
    std::vector<float> y;
    for (;;) {
      const Batch* batch = nullptr;
      bool stopped = false;
      CHECK(m_->NextBatch(5 * kMs, &batch, &stopped).ok());
      if (batch == nullptr) {
        if (stopped) return;
        continue;
      }
      {
        std::unique_lock<std::mutex> lock(mu_);
        for (const auto& item : batch->items) {
          const bool first = seen_.insert(item.request->user_tag).second;
          if (unique_tags_) CHECK(first);  // executed at most once
        }
        if (hold_) {
          holding_ = true;
          cv_.wait(lock, [this] { return !hold_; });
          holding_ = false;
        }
      }
      ++batches_;
      BatchTimings t;
      t.infer_ns = 1000;
      t.learn_ns = 1000;
      if (mode_ == Mode::kFail || (mode_ == Mode::kFailSome && batch->id % 3 == 0)) {
        m_->FailBatch(batch->buffer, "execution_error", "backend raised", t);
        continue;
      }
      const float* x = reinterpret_cast<const float*>(m_->batcher().BufferData(batch->buffer, 0));
      CHECK_EQ(m_->batcher().BufferSize(batch->buffer, 0), batch->rows * kFeatures * sizeof(float));
      y.assign(batch->rows * 2, 0.f);
      for (uint32_t k = 0; k < batch->rows; ++k) {
        const float* row = x + k * kFeatures;
        y[k * 2] = row[0] + row[1] + row[2] + row[3];
        y[k * 2 + 1] = row[0] * 1000 + row[1];
      }
      const int64_t shape[2] = {batch->rows + (mode_ == Mode::kBadOutput ? 1 : 0), 2};
      if (mode_ == Mode::kBadOutput) y.resize((batch->rows + 1) * 2);
      OutputTensor out;
      out.dtype = DataType::kFp32;
      out.shape = shape;
      out.rank = 2;
      out.data = reinterpret_cast<const uint8_t*>(y.data());
      out.size = y.size() * sizeof(float);
      const Status done = m_->CompleteBatch(batch->buffer, &out, 1, t);
      CHECK(done.ok() == (mode_ != Mode::kBadOutput));
      if (!done.ok()) CHECK(done.code() == StatusCode::kInternal);
    }
  }

  std::shared_ptr<ModelCore> m_;
  const Mode mode_;
  const bool unique_tags_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = false, holding_ = false;
  std::set<uint64_t> seen_;
  std::atomic<uint64_t> batches_{0};
  std::thread thread_;
};

// Collects `n` answers from `cq` (polling its fd), at most `timeout_ms`.
std::vector<Request*> DrainN(CompletionQueue& cq, size_t n, int timeout_ms = 10000) {
  std::vector<Request*> all, some;
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (all.size() < n && std::chrono::steady_clock::now() < until) {
    pollfd p{cq.fd(), POLLIN, 0};
    if (cq.fd() >= 0) poll(&p, 1, 20);
    else std::this_thread::sleep_for(std::chrono::milliseconds(1));
    cq.Drain(&some);
    all.insert(all.end(), some.begin(), some.end());
  }
  if (all.size() != n) std::fprintf(stderr, "drained %zu answers, expected %zu\n", all.size(), n);
  CHECK_EQ(all.size(), n);
  return all;
}

}  // namespace steadyserve_test
