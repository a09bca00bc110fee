// End-to-end tests of the native request path without Python: InferenceCore +
// ModelCore + Signature + Batcher + CompletionQueue. Requests go in as
// serialized ModelInferRequest bytes (a tiny protobuf encoder below) or as
// in-process tensors (request_fixture.h has the encoder, decoder, model and
// executor); answers come back through a CompletionQueue or Request::Wait.
#include <poll.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "request_fixture.h"
#include "steadyserve/completion_queue.h"
#include "steadyserve/inference_core.h"
#include "steadyserve/model_core.h"
#include "steadyserve/signature.h"

using namespace steadyserve;
using namespace steadyserve_test;

namespace {

// Nothing more arrives within `ms`.
void CheckQuiet(CompletionQueue& cq, int ms = 50) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  std::vector<Request*> some;
  cq.Drain(&some);
  CHECK(some.empty());
}

struct Submitted {
  bool queued = false;
  uint64_t handle = 0;
  Request* answer = nullptr;
  std::string model;
  Status status;
};

Submitted Wire(InferenceCore& core, const std::string& bytes, CompletionQueue* cq, uint64_t tag,
               int64_t deadline_ns = 0) {
  Submitted s;
  s.status = core.SubmitWire(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), deadline_ns, cq, tag,
                             &s.queued, &s.handle, &s.answer, &s.model);
  return s;
}

// Waits (bounded) until the pool holds no request: releases by the batcher happen when its
// executor next passes over a withdrawn ring slot.
void CheckPoolEmpty(InferenceCore& core) {
  for (int i = 0; i < 500 && core.pool().in_use() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  CHECK_EQ(core.pool().in_use(), 0u);
}

}  // namespace

// The request id a record of the prediction log carries is the one the answer carries:
// the transport's id when it wins (an x-request-id header), else the V2 id, else the
// transport's; and the log sample is drawn once per request at the first model.
TEST(RequestIdsAndLogSampling) {
  InferenceCore core(1024);
  auto a = AddModel(core, "A", Opts(8, 0, 1024));
  a->set_log_rate(0.25);
  Executor exec(a);
  CompletionQueue cq;
  constexpr uint32_t kN = 800;
  for (uint32_t token = 1; token <= kN; ++token) {
    WireOptions o;
    o.send_id = token % 3 != 0;  // every third request brings no V2 id
    const std::string bytes = InferRequest("A", token, 1, o);
    const std::string call_id = "call-" + std::to_string(token);
    Submitted s;
    s.status = core.SubmitWire(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), 0, &cq, token,
                               &s.queued, &s.handle, &s.answer, &s.model, call_id, token % 2 == 0);
    CHECK(s.status.ok());
    CHECK(s.queued);
  }
  std::vector<Request*> answers = DrainN(cq, kN);
  CHECK_EQ(answers.size(), size_t{kN});
  uint32_t logged = 0;
  for (Request* r : answers) {
    const auto token = static_cast<uint32_t>(r->user_tag);
    const bool wins = token % 2 == 0, has_id = token % 3 != 0;
    CHECK_STR(r->request_id, wins || !has_id ? "call-" + std::to_string(token) : std::to_string(token));
    CHECK(r->log_drawn);
    logged += r->logged ? 1 : 0;
    core.Release(r);
  }
  // 800 draws at 0.25: mean 200, sd 12.2; outside [120, 280] is a 6.5 sd event.
  CHECK(logged >= 120 && logged <= 280);
  a->set_log_rate(0.0);
  for (uint32_t token = kN + 1; token <= kN + 50; ++token) {  // tags stay unique
    Submitted s = Wire(core, InferRequest("A", token, 1), &cq, token);
    CHECK(s.queued);
  }
  for (Request* r : DrainN(cq, 50)) {
    CHECK(!r->logged);
    core.Release(r);
  }
  exec.Join();
  CheckPoolEmpty(core);
}

TEST(WireRequestsGetTheirOwnRows) {
  InferenceCore core(256);
  auto a = AddModel(core, "A", Opts(8, 2 * kMs));
  CompletionQueue cq;
  CHECK(cq.fd() >= 0);
  Executor exec(a);
  constexpr uint32_t kN = 60;
  uint64_t rows_total = 0;
  std::vector<std::thread> clients;
  std::atomic<uint32_t> queued{0};
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&, c] {
      for (uint32_t i = c; i < kN; i += 3) {
        const uint32_t token = i + 1;
        Submitted s = Wire(core, InferRequest("A", token, 1 + token % 3), &cq, token);
        CHECK(s.status.ok());
        CHECK(s.queued);
        CHECK(s.answer == nullptr);
        CHECK_STR(s.model, std::string("A"));
        ++queued;
      }
    });
  }
  for (uint32_t i = 0; i < kN; ++i) rows_total += 1 + (i + 1) % 3;
  for (auto& t : clients) t.join();
  CHECK_EQ(queued.load(), kN);
  std::vector<Request*> answers = DrainN(cq, kN);
  std::set<uint64_t> tags;
  for (Request* r : answers) {
    CHECK(tags.insert(r->user_tag).second);
    CHECK(r->code == StatusCode::kOk);
    CHECK(r->wire);
    const uint32_t token = static_cast<uint32_t>(r->user_tag);
    const Response resp = ParseResponse(r->response);
    CheckResponse(resp, "A", token, 1 + token % 3);
    CHECK_STR(resp.version, std::string("1"));
    CHECK(resp.params.empty());
    CHECK_STR(r->answered_by, std::string("A"));
    core.Release(r);
  }
  CheckQuiet(cq);
  exec.Join();
  CHECK_EQ(a->stats().Outcome(StatusCode::kOk), uint64_t{kN});
  CHECK_EQ(a->stats().inference_count.load(), rows_total);
  CHECK_EQ(a->stats().execution_count.load(), exec.batches());
  CHECK(exec.batches() >= 1 && exec.batches() <= kN);
  CHECK_EQ(a->stats().success.count.load(), uint64_t{kN});
  CHECK_EQ(a->batcher().Stats().rows_executed, rows_total);
  CheckPoolEmpty(core);
}

TEST(TypedContentsAndRequestedOutputs) {
  InferenceCore core(16);
  auto a = AddModel(core, "A");
  Executor exec(a);
  CompletionQueue cq;
  // fp32_contents instead of raw, and output y asked for by name.
  Pb req;
  req.Bytes(1, "A");
  req.Bytes(3, "typed");
  Pb in;
  in.Bytes(1, "x");
  in.Bytes(2, "FP32");
  Pb shape;
  shape.Varint(1);
  shape.Varint(kFeatures);
  in.Bytes(3, shape.s);
  const std::vector<float> x = Rows(7, 1);
  Pb contents;
  contents.Bytes(6, std::string(reinterpret_cast<const char*>(x.data()), x.size() * sizeof(float)));
  in.Msg(5, contents);
  req.Msg(5, in);
  Pb out;
  out.Bytes(1, "y");
  req.Msg(6, out);
  Submitted s = Wire(core, req.s, &cq, 7);
  CHECK(s.status.ok());
  CHECK(s.queued);
  std::vector<Request*> answers = DrainN(cq, 1);
  const Response resp = ParseResponse(answers[0]->response);
  CHECK_STR(resp.id, std::string("typed"));
  CHECK_EQ(resp.outputs.size(), size_t{1});
  CheckY(reinterpret_cast<const uint8_t*>(resp.outputs[0].raw.data()), resp.outputs[0].raw.size(), 7, 1);
  core.Release(answers[0]);
  // Asking for an output the model does not have: refused at the door, naming it.
  Pb bad = req;
  Pb out2;
  out2.Bytes(1, "nope");
  bad.Msg(6, out2);
  s = Wire(core, bad.s, &cq, 8);
  CHECK(s.status.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.status.message(), "no output 'nope'");
  exec.Join();
  CheckPoolEmpty(core);
}

TEST(InProcessTensorsAndWait) {
  InferenceCore core(16);
  auto a = AddModel(core, "A");
  Executor exec(a);
  for (uint32_t token = 1; token <= 5; ++token) {
    const uint32_t rows = token;
    const std::vector<float> x = Rows(token, rows);
    const int64_t shape[2] = {rows, kFeatures};
    TensorRef t;
    t.name = "x";
    t.dtype = DataType::kFp32;
    t.shape = shape;
    t.rank = 2;
    t.data = reinterpret_cast<const uint8_t*>(x.data());
    t.size = x.size() * sizeof(float);
    Request* r = nullptr;
    bool tq = false;
    Status s = core.SubmitTensors("A", "", &t, 1, nullptr, 0, 0, 0, nullptr, token, &tq, &r);
    CHECK(s.ok());
    CHECK(r != nullptr);
    CHECK(tq);
    CHECK(r->Wait(10000 * kMs));
    CHECK(r->code == StatusCode::kOk);
    CHECK_EQ(r->n_outputs, size_t{1});
    CHECK_EQ(r->outputs[0].output, 0u);
    CHECK(r->outputs[0].shape == (std::vector<int64_t>{rows, 2}));
    CheckY(r->outputs[0].data.data(), r->outputs[0].data.size(), token, rows);
    CHECK_STR(r->answered_by, std::string("A"));
    CHECK_STR(r->answered_version, std::string("1"));
    core.Release(r);
  }
  // FP64 values that are exact FP32 are converted on the way in.
  const std::vector<float> xf = Rows(9, 1);
  std::vector<double> xd(xf.begin(), xf.end());
  const int64_t shape[2] = {1, kFeatures};
  TensorRef t{"x", DataType::kFp64, shape, 2, reinterpret_cast<const uint8_t*>(xd.data()), xd.size() * 8};
  Request* r = nullptr;
  bool tq = false;
  CHECK(core.SubmitTensors("A", "1", &t, 1, nullptr, 0, 0, 0, nullptr, 9, &tq, &r).ok());
  CHECK(r->Wait(10000 * kMs));
  CHECK(r->code == StatusCode::kOk);
  CheckY(r->outputs[0].data.data(), r->outputs[0].data.size(), 9, 1);
  core.Release(r);
  exec.Join();
  CHECK_EQ(a->stats().Outcome(StatusCode::kOk), uint64_t{6});
  CheckPoolEmpty(core);
}

TEST(RefusalsAtTheDoor) {
  InferenceCore core(16);
  auto a = AddModel(core, "A", Opts(8, 60000 * kMs, /*queue=*/2));  // no executor yet: the queue fills
  CompletionQueue cq;
  // Unknown model.
  Submitted s = Wire(core, InferRequest("nope", 1, 1), &cq, 1);
  CHECK(s.status.code() == StatusCode::kNotFound);
  CHECK_CONTAINS(s.status.message(), "model 'nope' not found");
  CHECK_CONTAINS(s.status.message(), "A");
  CHECK(!s.queued);
  CHECK(s.answer == nullptr);
  // Unknown version.
  WireOptions v;
  v.version = "7";
  s = Wire(core, InferRequest("A", 1, 1, v), &cq, 1);
  CHECK(s.status.code() == StatusCode::kNotFound);
  CHECK_CONTAINS(s.status.message(), "no version '7'");
  // Wrong shape: the message names the input and the expected shape.
  WireOptions bad;
  bad.shape = {1, 3};
  s = Wire(core, InferRequest("A", 1, 1, bad), &cq, 1);
  CHECK(s.status.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.status.message(), "input 'x'");
  CHECK_CONTAINS(s.status.message(), "[-1, 4]");
  CHECK(s.answer == nullptr);
  // Malformed bytes.
  const std::string junk = "\xff\xff\xff";
  s = Wire(core, junk, &cq, 1);
  CHECK(s.status.code() == StatusCode::kInvalidArgument);
  CHECK_EQ(a->stats().RefusalCount(Refusal::kInvalidInput), uint64_t{1});
  CHECK_EQ(core.pool().in_use(), 0u);
  // Full queue: answered synchronously.
  CHECK(Wire(core, InferRequest("A", 1, 1), &cq, 1).queued);
  CHECK(Wire(core, InferRequest("A", 2, 1), &cq, 2).queued);
  s = Wire(core, InferRequest("A", 3, 1), &cq, 3);
  CHECK(s.status.ok());
  CHECK(!s.queued);
  CHECK(s.answer != nullptr);
  CHECK(s.answer->code == StatusCode::kResourceExhausted);
  CHECK_CONTAINS(s.answer->message, "queue is full");
  core.Release(s.answer);
  CHECK_EQ(a->stats().RefusalCount(Refusal::kQueueFull), uint64_t{1});
  // The same for an in-process caller that waits: the answer is there at once.
  const std::vector<float> x = Rows(4, 1);
  const int64_t shape[2] = {1, kFeatures};
  TensorRef t{"x", DataType::kFp32, shape, 2, reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4};
  Request* r = nullptr;
  bool tq = false;
  CHECK(core.SubmitTensors("A", "", &t, 1, nullptr, 0, 0, 0, nullptr, 4, &tq, &r).ok());
  CHECK(r != nullptr);
  CHECK(!tq);  // answered at once
  CHECK(r->answered.load());
  CHECK(r->code == StatusCode::kResourceExhausted);
  core.Release(r);
  // ... and for an async in-process caller: answered at once too, not through its queue.
  CompletionQueue cq2;
  CHECK(core.SubmitTensors("A", "", &t, 1, nullptr, 0, 0, 0, &cq2, 5, &tq, &r).ok());
  CHECK(!tq);
  CHECK(r->code == StatusCode::kResourceExhausted);
  core.Release(r);
  CheckQuiet(cq2, 10);
  // Wrong shape in-process: refused with a status, no request.
  const int64_t bad_shape[2] = {1, 3};
  TensorRef tb{"x", DataType::kFp32, bad_shape, 2, reinterpret_cast<const uint8_t*>(x.data()), 12};
  Status st = core.SubmitTensors("A", "", &tb, 1, nullptr, 0, 0, 0, nullptr, 6, &tq, &r);
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(st.message(), "input 'x'");
  // Priority outside the levels.
  st = core.SubmitTensors("A", "", &t, 1, nullptr, 0, 0, /*priority=*/5, nullptr, 7, &tq, &r);
  CHECK(st.ok());
  CHECK(!tq);
  CHECK(r->code == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(r->message, "priority 5");
  core.Release(r);
  // A model that is not ready.
  a->set_ready(false);
  s = Wire(core, InferRequest("A", 8, 1), &cq, 8);
  CHECK(s.status.ok());
  CHECK(!s.queued);
  CHECK(s.answer->code == StatusCode::kUnavailable);
  CHECK_CONTAINS(s.answer->message, "not ready");
  core.Release(s.answer);
  a->set_ready(true);
  // Now run the two queued ones.
  {
    Executor exec(a);
    exec.Join();  // Stop: the minute-long window no longer holds them back
    std::vector<Request*> answers = DrainN(cq, 2);
    for (Request* q : answers) {
      CHECK(q->code == StatusCode::kOk);
      CheckResponse(ParseResponse(q->response), "A", static_cast<uint32_t>(q->user_tag), 1);
      core.Release(q);
    }
  }
  CheckQuiet(cq);
  CheckPoolEmpty(core);
}

TEST(PoolLimitRefusesAtTheDoor) {
  InferenceCore core(2);
  auto a = AddModel(core, "A", Opts(8, 60000 * kMs));
  CompletionQueue cq;
  CHECK(Wire(core, InferRequest("A", 1, 1), &cq, 1).queued);
  CHECK(Wire(core, InferRequest("A", 2, 1), &cq, 2).queued);
  Submitted s = Wire(core, InferRequest("A", 3, 1), &cq, 3);
  CHECK(s.status.code() == StatusCode::kResourceExhausted);
  CHECK_CONTAINS(s.status.message(), "limit of 2 requests");
  {
    Executor exec(a);  // Stop() on join drains the window
  }
  std::vector<Request*> answers = DrainN(cq, 2);
  for (Request* r : answers) core.Release(r);
  CheckPoolEmpty(core);
}

TEST(FailedBatchFailsOverToTheBackup) {
  InferenceCore core(64);
  auto a = AddModel(core, "A");
  auto b = AddModel(core, "B");
  core.SetRoute("A", "B", true, {});
  Executor ea(a, Executor::Mode::kFail);
  Executor eb(b);
  CompletionQueue cq;
  for (uint32_t token = 1; token <= 10; ++token) CHECK(Wire(core, InferRequest("A", token, 2), &cq, token).queued);
  std::vector<Request*> answers = DrainN(cq, 10);
  for (Request* r : answers) {
    CHECK(r->code == StatusCode::kOk);
    const Response resp = ParseResponse(r->response);
    CheckResponse(resp, "B", static_cast<uint32_t>(r->user_tag), 2);
    CHECK(resp.params.count("failover") && resp.params.at("failover").b);
    CHECK_STR(resp.params.at("failover_from").s, std::string("A"));
    CHECK_CONTAINS(resp.params.at("failover_reason").s, "A: execution_error (backend raised)");
    CHECK(r->failover);
    CHECK_STR(r->answered_by, std::string("B"));
    core.Release(r);
  }
  ea.Join();
  eb.Join();
  CHECK_EQ(ea.Seen().size(), size_t{10});  // A ran (and failed) every one
  CHECK_EQ(eb.Seen().size(), size_t{10});
  CHECK_EQ(b->stats().Outcome(StatusCode::kOk), uint64_t{10});
  CHECK_EQ(a->stats().Outcome(StatusCode::kInternal), uint64_t{10});
  CHECK_EQ(a->stats().inference_count.load(), uint64_t{0});
  CHECK(a->stats().execution_count.load() >= 1);
  bool counted = false;
  for (const auto& s : core.Skips())
    if (s.model == "A" && s.reason == SkipReason::kExecutionError) counted = s.count == 10;
  CHECK(counted);
  CheckPoolEmpty(core);
}

TEST(MalformedOutputFailsTheBatchOver) {
  InferenceCore core(64);
  auto a = AddModel(core, "A");
  auto b = AddModel(core, "B");
  core.SetRoute("A", "B", true, {});
  Executor ea(a, Executor::Mode::kBadOutput);
  Executor eb(b);
  CompletionQueue cq;
  for (uint32_t token = 1; token <= 3; ++token) CHECK(Wire(core, InferRequest("A", token, 1), &cq, token).queued);
  for (Request* r : DrainN(cq, 3)) {
    CHECK(r->code == StatusCode::kOk);
    const Response resp = ParseResponse(r->response);
    CheckResponse(resp, "B", static_cast<uint32_t>(r->user_tag), 1);
    CHECK_CONTAINS(resp.params.at("failover_reason").s, "output 'y' has");
    core.Release(r);
  }
  ea.Join();
  eb.Join();
  CHECK_EQ(a->stats().inference_count.load(), uint64_t{0});
  CheckPoolEmpty(core);
}

TEST(OpenCircuitRoutesStraightToTheBackup) {
  InferenceCore core(64);
  auto a = AddModel(core, "A");
  auto b = AddModel(core, "B");
  core.SetRoute("A", "B", true, {});
  core.SetCircuit("A", CircuitState::kOpen, 0);
  Executor ea(a);
  Executor eb(b);
  CompletionQueue cq;
  for (uint32_t token = 1; token <= 5; ++token) CHECK(Wire(core, InferRequest("A", token, 1), &cq, token).queued);
  for (Request* r : DrainN(cq, 5)) {
    const Response resp = ParseResponse(r->response);
    CheckResponse(resp, "B", static_cast<uint32_t>(r->user_tag), 1);
    CHECK_CONTAINS(resp.params.at("failover_reason").s, "circuit open");
    core.Release(r);
  }
  CHECK(ea.Seen().empty());
  // Half-open: a budget of 2 probes goes to A, the rest to B.
  core.SetCircuit("A", CircuitState::kHalfOpen, 2);
  CHECK_EQ(core.ProbesLeft("A"), 2);
  for (uint32_t token = 11; token <= 14; ++token)
    CHECK(Wire(core, InferRequest("A", token, 1), &cq, token).queued);
  CHECK_EQ(core.ProbesLeft("A"), 0);
  uint32_t by_a = 0, by_b = 0;
  for (Request* r : DrainN(cq, 4)) {
    const Response resp = ParseResponse(r->response);
    if (resp.model == "A") {
      ++by_a;
      CHECK(resp.params.empty());
      CheckResponse(resp, "A", static_cast<uint32_t>(r->user_tag), 1);
    } else {
      ++by_b;
      CheckResponse(resp, "B", static_cast<uint32_t>(r->user_tag), 1);
      CHECK_CONTAINS(resp.params.at("failover_reason").s, "probe budget spent");
    }
    core.Release(r);
  }
  CHECK_EQ(by_a, 2u);
  CHECK_EQ(by_b, 2u);
  // Closed again: A answers.
  core.SetCircuit("A", CircuitState::kClosed, 0);
  CHECK(Wire(core, InferRequest("A", 21, 1), &cq, 21).queued);
  for (Request* r : DrainN(cq, 1)) {
    CheckResponse(ParseResponse(r->response), "A", 21, 1);
    core.Release(r);
  }
  ea.Join();
  eb.Join();
  CheckPoolEmpty(core);
}

TEST(DefaultOutputWhenEveryLinkFails) {
  InferenceCore core(64);
  auto a = AddModel(core, "A");
  auto b = AddModel(core, "B");
  DefaultOutput d;
  d.name = "y";
  d.dims = {2};
  d.row = {7.f, 8.f};
  core.SetRoute("A", "B", true, {d});
  Executor ea(a, Executor::Mode::kFail);
  Executor eb(b, Executor::Mode::kFail);
  CompletionQueue cq;
  for (uint32_t token = 1; token <= 4; ++token) CHECK(Wire(core, InferRequest("A", token, 3), &cq, token).queued);
  for (Request* r : DrainN(cq, 4)) {
    CHECK(r->code == StatusCode::kOk);
    CHECK(r->default_output);
    const Response resp = ParseResponse(r->response);
    CHECK_STR(resp.model, std::string("A"));
    CHECK_STR(resp.version, std::string("default"));
    CHECK(resp.params.at("default_output").b);
    CHECK(resp.params.at("failover").b);
    CHECK_CONTAINS(resp.params.at("failover_reason").s, "A: execution_error");
    CHECK_CONTAINS(resp.params.at("failover_reason").s, "B: execution_error");
    CHECK_EQ(resp.outputs.size(), size_t{1});
    CHECK(resp.outputs[0].shape == (std::vector<int64_t>{3, 2}));
    std::vector<float> y(6);
    CHECK_EQ(resp.outputs[0].raw.size(), size_t{24});
    std::memcpy(y.data(), resp.outputs[0].raw.data(), 24);
    for (int k = 0; k < 3; ++k) CHECK(y[k * 2] == 7.f && y[k * 2 + 1] == 8.f);
    core.Release(r);
  }
  bool counted = false;
  for (const auto& f : core.Failovers())
    if (f.model == "A" && f.answered_by == "default_output") counted = f.count == 4;
  CHECK(counted);
  // No default: UNAVAILABLE naming every failure.
  core.SetRoute("A", "B", true, {});
  CHECK(Wire(core, InferRequest("A", 9, 1), &cq, 9).queued);
  for (Request* r : DrainN(cq, 1)) {
    CHECK(r->code == StatusCode::kUnavailable);
    CHECK_CONTAINS(r->message, "could not answer");
    CHECK_CONTAINS(r->message, "B: execution_error");
    core.Release(r);
  }
  // In-process default output.
  core.SetRoute("A", "B", true, {d});
  const std::vector<float> x = Rows(5, 2);
  const int64_t shape[2] = {2, kFeatures};
  TensorRef t{"x", DataType::kFp32, shape, 2, reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4};
  Request* r = nullptr;
  bool tq = false;
  CHECK(core.SubmitTensors("A", "", &t, 1, nullptr, 0, 0, 0, nullptr, 5, &tq, &r).ok());
  CHECK(r->Wait(10000 * kMs));
  CHECK(r->code == StatusCode::kOk);
  CHECK(r->default_output);
  CHECK(r->outputs[0].shape == (std::vector<int64_t>{2, 2}));
  core.Release(r);
  ea.Join();
  eb.Join();
  CheckPoolEmpty(core);
}

TEST(DeadlinesAnsweredByTheReaperWhileTheExecutorIsBusy) {
  InferenceCore core(16);
  auto a = AddModel(core, "A", Opts(/*max_batch=*/1));
  Executor exec(a);
  exec.HoldNext();
  CompletionQueue cq;
  const int64_t now = a->batcher().NowNs();
  // 1: taken into a batch that will hang past its deadline.
  CHECK(Wire(core, InferRequest("A", 1, 1), &cq, 1, now + 150 * kMs).queued);
  for (int i = 0; i < 1000 && !exec.Holding(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  CHECK(exec.Holding());
  // 2: queued behind it, with a deadline by the `timeout` parameter (100 ms).
  WireOptions w;
  w.timeout_us = 100 * 1000;
  CHECK(Wire(core, InferRequest("A", 2, 1, w), &cq, 2).queued);
  // 3: queued, no deadline.
  CHECK(Wire(core, InferRequest("A", 3, 1), &cq, 3).queued);
  // Both deadlines are answered while the executor is still held.
  std::vector<Request*> answers = DrainN(cq, 2, 5000);
  CHECK(exec.Holding());
  for (Request* r : answers) {
    CHECK(r->code == StatusCode::kDeadlineExceeded);
    if (r->user_tag == 1) CHECK_CONTAINS(r->message, "while its batch was executing");
    if (r->user_tag == 2) CHECK_CONTAINS(r->message, "not executed");
    CHECK(r->user_tag == 1 || r->user_tag == 2);
    core.Release(r);
  }
  CHECK_EQ(a->batcher().Stats().queued_requests, 1u);  // 2 no longer counts as queued
  exec.Release();
  answers = DrainN(cq, 1);
  CHECK_EQ(answers[0]->user_tag, uint64_t{3});
  CHECK(answers[0]->code == StatusCode::kOk);
  core.Release(answers[0]);
  CheckQuiet(cq);
  exec.Join();
  const auto seen = exec.Seen();
  CHECK(seen.count(1) == 1);
  CHECK(seen.count(2) == 0);  // never executed
  CHECK(seen.count(3) == 1);
  CHECK_EQ(a->stats().RefusalCount(Refusal::kExpiredInQueue), uint64_t{1});
  CHECK_EQ(a->stats().Outcome(StatusCode::kDeadlineExceeded), uint64_t{2});
  CHECK_EQ(a->stats().Outcome(StatusCode::kOk), uint64_t{1});
  CheckPoolEmpty(core);
}

TEST(DefaultDeadlineOfTheModel) {
  InferenceCore core(16);
  auto o = Opts(8, 60000 * kMs);  // a window far longer than the default deadline
  o.default_deadline_ns = 50 * kMs;
  auto a = AddModel(core, "A", o);
  Executor exec(a);
  CompletionQueue cq;
  CHECK(Wire(core, InferRequest("A", 1, 1), &cq, 1).queued);
  std::vector<Request*> answers = DrainN(cq, 1, 5000);
  CHECK(answers[0]->code == StatusCode::kDeadlineExceeded);
  core.Release(answers[0]);
  exec.Join();
  CHECK(exec.Seen().empty());
  CheckPoolEmpty(core);
}

TEST(CancelWithdrawsAQueuedRequest) {
  InferenceCore core(16);
  auto a = AddModel(core, "A", Opts(8, 60000 * kMs));  // a minute-long window: stays queued
  Executor exec(a);
  CompletionQueue cq;
  Submitted s1 = Wire(core, InferRequest("A", 1, 1), &cq, 1);
  Submitted s2 = Wire(core, InferRequest("A", 2, 1), &cq, 2);
  CHECK(s1.queued && s2.queued);
  // A cancel that wins releases the caller's reference and delivers nothing.
  CHECK(core.Cancel(s1.handle));
  CHECK_EQ(a->batcher().Stats().queued_requests, 1u);
  CHECK_EQ(a->batcher().Stats().cancelled, uint64_t{1});
  CHECK(!core.Cancel(s1.handle));  // twice: nothing more (stale once recycled, answered before)
  CheckQuiet(cq);
  // In-process cancel of a waiting caller.
  const std::vector<float> x = Rows(3, 1);
  const int64_t shape[2] = {1, kFeatures};
  TensorRef t{"x", DataType::kFp32, shape, 2, reinterpret_cast<const uint8_t*>(x.data()), x.size() * 4};
  Request* r = nullptr;
  bool tq = false;
  CHECK(core.SubmitTensors("A", "", &t, 1, nullptr, 0, 0, 0, nullptr, 3, &tq, &r).ok());
  CHECK(tq);
  CHECK(core.Cancel(r->Handle()));
  exec.Join();  // Stop drains request 2
  std::vector<Request*> answers = DrainN(cq, 1);
  CHECK_EQ(answers[0]->user_tag, uint64_t{2});
  CHECK(answers[0]->code == StatusCode::kOk);
  core.Release(answers[0]);
  CHECK(exec.Seen().count(1) == 0);
  CHECK(exec.Seen().count(3) == 0);
  CheckPoolEmpty(core);
}

TEST(StressManyClientsWithFailoverAndDeadlines) {
  InferenceCore core(512);
  auto oa = Opts(8, 1 * kMs, 128);
  oa.batching.executors = 1;
  auto a = AddModel(core, "A", oa);
  auto b = AddModel(core, "B", Opts(8, 0, 128));
  core.SetRoute("A", "B", true, {});
  Executor ea(a);
  Executor eb(b);
  CompletionQueue cq;
  constexpr uint32_t kN = 2000;
  std::atomic<uint32_t> queued{0}, at_once{0}, cancelled{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (uint32_t i = c; i < kN; i += 4) {
        const uint32_t token = i + 1;
        const int64_t deadline = token % 4 == 0 ? a->batcher().NowNs() + 3 * kMs : 0;
        Submitted s = Wire(core, InferRequest("A", token, 1 + token % 2), &cq, token, deadline);
        if (!s.status.ok()) {
          CHECK(s.status.code() == StatusCode::kResourceExhausted);
          ++at_once;
          continue;
        }
        if (s.queued) {
          ++queued;
          // A cancel that wins delivers nothing: count it as answered here.
          if (token % 7 == 0 && core.Cancel(s.handle)) ++cancelled;
        } else {
          ++at_once;
          core.Release(s.answer);
        }
        if (token % 3 == 0) core.SetCircuit("A", token % 2 ? CircuitState::kOpen : CircuitState::kClosed, 0);
      }
    });
  }
  std::vector<Request*> answers;
  std::thread drainer([&] {
    std::vector<Request*> some;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      cq.Drain(&some);
      for (Request* r : some) {
        if (r->code == StatusCode::kOk) {
          const Response resp = ParseResponse(r->response);
          CheckResponse(resp, resp.model, static_cast<uint32_t>(r->user_tag), 1 + r->user_tag % 2);
        } else {
          CHECK(r->code == StatusCode::kDeadlineExceeded);
        }
        answers.push_back(r);
      }
      if (queued.load() + at_once.load() == kN && answers.size() + cancelled.load() == queued.load()) break;
      CHECK(std::chrono::steady_clock::now() < until);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (auto& t : clients) t.join();
  drainer.join();
  std::set<uint64_t> tags;
  for (Request* r : answers) {
    CHECK(tags.insert(r->user_tag).second);  // answered exactly once
    core.Release(r);
  }
  CheckQuiet(cq);
  ea.Join();
  eb.Join();
  CheckPoolEmpty(core);
}

// Two executors on one model (two batch buffers), a backup, failed batches, cancels and
// deadlines racing: every request answered exactly once with its own rows, nothing leaked.
TEST(TwoExecutorsPerModelWithFailoverAndCancels) {
  InferenceCore core(512);
  auto oa = Opts(2, 0, 256);
  oa.batching.executors = 2;
  auto a = AddModel(core, "A", oa);
  auto ob = Opts(4, 0, 256);
  ob.batching.executors = 2;
  auto b = AddModel(core, "B", ob);
  core.SetRoute("A", "B", true, {});
  Executor ea1(a, Executor::Mode::kFailSome), ea2(a, Executor::Mode::kFailSome);
  Executor eb1(b), eb2(b);
  CompletionQueue cq;
  constexpr uint32_t kN = 3000;
  std::atomic<uint32_t> queued{0}, at_once{0}, cancelled{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      for (uint32_t i = c; i < kN; i += 4) {
        const uint32_t token = i + 1;
        const int64_t deadline = token % 5 == 0 ? a->batcher().NowNs() + 2 * kMs : 0;
        Submitted s = Wire(core, InferRequest("A", token, 1 + token % 2), &cq, token, deadline);
        if (!s.status.ok()) {
          CHECK(s.status.code() == StatusCode::kResourceExhausted);
          ++at_once;
          continue;
        }
        if (!s.queued) {
          ++at_once;
          core.Release(s.answer);
          continue;
        }
        ++queued;
        if (token % 11 == 0 && core.Cancel(s.handle)) ++cancelled;
      }
    });
  }
  std::vector<Request*> answers;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  std::vector<Request*> some;
  for (;;) {
    cq.Drain(&some);
    for (Request* r : some) {
      if (r->code == StatusCode::kOk) {
        const Response resp = ParseResponse(r->response);
        CheckResponse(resp, resp.model, static_cast<uint32_t>(r->user_tag), 1 + r->user_tag % 2);
      } else {
        CHECK(r->code == StatusCode::kDeadlineExceeded || r->code == StatusCode::kUnavailable);
      }
      answers.push_back(r);
    }
    if (queued.load() + at_once.load() == kN && answers.size() + cancelled.load() == queued.load()) break;
    CHECK(std::chrono::steady_clock::now() < until);
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto& t : clients) t.join();
  std::set<uint64_t> tags;
  for (Request* r : answers) {
    CHECK(tags.insert(r->user_tag).second);
    core.Release(r);
  }
  CheckQuiet(cq);
  ea1.Join();
  ea2.Join();
  eb1.Join();
  eb2.Join();
  CheckPoolEmpty(core);
}

// Triton's BYTES framing, and UTF-8 text in every element (ONNX string tensors).
TEST(CheckBytesTensorFramingAndUtf8) {
  auto element = [](const std::string& text) {
    const uint32_t n = static_cast<uint32_t>(text.size());
    return std::string(reinterpret_cast<const char*>(&n), 4) + text;
  };
  auto check = [](const std::string& data, uint64_t count) {
    return CheckBytesTensor("text", reinterpret_cast<const uint8_t*>(data.data()), data.size(), count);
  };
  CHECK(check(element("cat") + element("") + element("stra\xc3\x9f" "e") + element("\xf0\x9f\x99\x82"), 4).ok());
  CHECK(check(element(std::string("a\0b", 3)), 1).ok());
  CHECK(check("", 0).ok());
  struct Bad {
    std::string data;
    uint64_t count;
    const char* says;
  };
  const Bad bad[] = {
      {element("ab") + std::string("\xff\0\0\0x", 5), 2, "element 1 says 255 bytes but only 1 remain"},
      {element("a") + element("b") + "zz", 2, "2 bytes after its 2 elements"},
      {element("a") + std::string("\x01\0", 2), 2, "ends inside the length of element 1"},
      {element("\xff"), 1, "element 0 is not valid UTF-8 (byte 0 is 0xff)"},
      {element("ok\xc3"), 1, "byte 2 is 0xc3"},                     // cut short
      {element("\xc0\xaf"), 1, "not valid UTF-8"},                 // overlong '/'
      {element("\xed\xa0\x80"), 1, "not valid UTF-8"},            // a surrogate
      {element("\xf4\x90\x80\x80"), 1, "not valid UTF-8"},       // above U+10FFFF
      {element("ok") + element("\xe2\x82"), 2, "element 1 is not"},  // 3-byte form, 2 given
  };
  for (const auto& b : bad) {
    const Status s = check(b.data, b.count);
    CHECK(s.code() == StatusCode::kInvalidArgument);
    if (s.message().find(b.says) == std::string::npos || s.message().find("input 'text'") == std::string::npos) {
      std::fprintf(stderr, "unexpected message: %s (wanted %s)\n", s.message().c_str(), b.says);
      std::exit(1);
    }
  }
}

TEST_MAIN()

// A reload under load: clients submit without pause while version 2 is added beside
// version 1, version 1 is taken out of routing, then stopped and drained. No request
// fails, each is executed once, and every request submitted after the swap returned
// is answered by version 2. Then the same for a replacement of version 2 by a new
// core of the same version (a changed config or stats file).
TEST(SwapVersionsUnderLoadDropsNothing) {
  InferenceCore core(1024);
  auto v1 = AddModel(core, "A", Opts(8, 200 * 1000, 256));
  auto exec1 = std::make_unique<Executor>(v1);
  CompletionQueue cq;
  std::atomic<bool> stop{false};
  std::atomic<uint32_t> next_tag{1}, queued{0}, refused{0}, done{0};
  std::atomic<uint64_t> swapped_at_tag{0}, replaced_at_tag{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 3; ++c) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        if (queued.load() - done.load() > 96) {  // stay under the queue's 256: no refusals
          std::this_thread::sleep_for(std::chrono::microseconds(50));
          continue;
        }
        const uint32_t tag = next_tag.fetch_add(1);
        Submitted s = Wire(core, InferRequest("A", tag, 1 + tag % 2), &cq, tag);
        if (!s.status.ok() || !s.queued) {
          ++refused;
          if (s.answer != nullptr) core.Release(s.answer);
          continue;
        }
        ++queued;
        if (tag % 64 == 0) std::this_thread::sleep_for(std::chrono::microseconds(100));
      }
    });
  }
  std::map<uint64_t, std::string> answered;  // tag -> version
  std::vector<std::string> errors;
  auto drain = [&] {
    std::vector<Request*> some;
    cq.Drain(&some);
    for (Request* r : some) {
      if (r->code != StatusCode::kOk) {
        errors.push_back(r->message);
      } else {
        const Response resp = ParseResponse(r->response);
        CheckResponse(resp, "A", static_cast<uint32_t>(r->user_tag), 1 + r->user_tag % 2);
        CHECK(answered.emplace(r->user_tag, resp.version).second);  // answered once
      }
      core.Release(r);
      ++done;
    }
  };
  auto run_for = [&](int ms) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < until) {
      drain();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  };
  run_for(60);
  auto o2 = Opts(8, 200 * 1000, 256);
  o2.version = "2";
  auto v2 = AddModel(core, "A", o2);  // routable at once: the latest version
  auto exec2 = std::make_unique<Executor>(v2);
  swapped_at_tag = next_tag.load();
  CHECK(core.RemoveModel("A", "1", v1.get()));
  CHECK(!core.RemoveModel("A", "1", v1.get()));  // gone already
  exec1.reset();  // stops v1: it runs what it admitted, then the thread ends
  run_for(60);
  // The same version again: a new core replaces the routed one.
  auto v2b = AddModel(core, "A", o2);
  auto exec2b = std::make_unique<Executor>(v2b);
  replaced_at_tag = next_tag.load();
  CHECK(!core.RemoveModel("A", "2", v2.get()));  // replaced: not the routed one any more
  exec2.reset();
  run_for(60);
  stop = true;
  for (auto& t : clients) t.join();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (answered.size() + errors.size() < queued.load()) {
    CHECK(std::chrono::steady_clock::now() < until);
    drain();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  CHECK(errors.empty());
  CHECK_EQ(refused.load(), 0u);
  CHECK_EQ(answered.size(), static_cast<size_t>(queued.load()));
  uint64_t after_swap = 0;
  for (const auto& [tag, version] : answered) {
    if (tag >= swapped_at_tag.load()) {
      CHECK_STR(version, std::string("2"));
      ++after_swap;
    }
  }
  CHECK(after_swap > 0);
  CHECK(v1->stats().Outcome(StatusCode::kOk) > 0);
  CHECK(v2b->stats().Outcome(StatusCode::kOk) > 0);
  exec2b.reset();
  CheckPoolEmpty(core);
}
