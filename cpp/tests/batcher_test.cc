// Tests of the Batcher on its own: options, admission, batch closing rules,
// deadlines (the min-deadline index and ExpireDue), priorities, withdrawal and
// the request references it holds. Time is a ManualClock wherever the
// behaviour allows (NextBatch(0) after advancing it); only tests of real
// waking (Stop, the stress test) use the steady clock.
#include "steadyserve/batcher.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "check.h"

using namespace steadyserve;

namespace {

constexpr int kFeatures = 4;
constexpr int64_t kMs = 1000000;

BatcherOptions Options(uint32_t max_batch, int64_t delay_ns = 0, uint32_t queue = 64,
                       const Clock* clock = nullptr) {
  BatcherOptions o;
  o.model = "m";
  o.inputs = {{"x", kFeatures * sizeof(float)}};
  o.max_batch_size = max_batch;
  o.max_queue_delay_ns = delay_ns;
  o.max_queue_size = queue;
  o.clock = clock;
  return o;
}

// A pool, a batcher, and every request the test made (the test is each one's
// "caller": it releases the caller's reference at the end).
struct Fixture {
  explicit Fixture(const BatcherOptions& o, uint32_t pool_capacity = 256) : pool(pool_capacity) {
    Status s = Batcher::Create(o, &pool, &b);
    if (!s.ok()) std::fprintf(stderr, "%s\n", s.ToString().c_str());
    CHECK(s.ok());
  }
  ~Fixture() {
    // Whatever is still queued holds the core's reference: the batcher gives it back.
    b.reset();
    for (Request* r : made) pool.Release(r);
    CHECK_EQ(pool.in_use(), 0u);
  }

  // A request of `rows` rows whose every feature equals token*100 + row (user_tag = token).
  Request* Make(uint64_t token, uint32_t rows, int64_t deadline_ns = 0) {
    Request* r = pool.Acquire();
    CHECK(r != nullptr);
    r->user_tag = token;
    r->rows = rows;
    r->deadline_ns = deadline_ns;
    r->inputs.resize(1);
    r->inputs[0].resize(static_cast<size_t>(rows) * kFeatures * sizeof(float));
    float* x = reinterpret_cast<float*>(r->inputs[0].data());
    for (uint32_t k = 0; k < rows; ++k)
      for (int f = 0; f < kFeatures; ++f) x[k * kFeatures + f] = static_cast<float>(token * 100 + k);
    r->transformed.clear();
    made.push_back(r);
    return r;
  }

  // Makes and submits; on a refusal the core's reference is dropped at once (as ModelCore does).
  Status Submit(uint64_t token, uint32_t rows, int64_t deadline_ns = 0, uint32_t level = 0,
                Request** out = nullptr, Request** evicted = nullptr) {
    Request* r = Make(token, rows, deadline_ns);
    if (out) *out = r;
    Request* ev = nullptr;
    Status s = b->Submit(r, level, &ev);
    if (evicted) *evicted = ev;
    if (ev != nullptr && !evicted) pool.Release(ev);  // the core's reference of the shed one
    if (!s.ok()) pool.Release(r);
    return s;
  }

  // Completes a batch and drops the core's reference of each of its requests.
  void Complete(const Batch& batch, int64_t exec_ns = 1000) {
    b->Complete(batch, exec_ns);
    for (const auto& item : batch.items) pool.Release(item.request);
  }
  // Drops the core's reference of requests handed back (dropped / expired-queued are released by the
  // batcher for ExpireDue's; Batch::dropped is the caller's to release).
  void ReleaseAll(const std::vector<Request*>& rs) {
    for (Request* r : rs) pool.Release(r);
  }

  // Every row of every item carries its own request's values.
  void CheckRows(const Batch& batch) {
    const float* x = reinterpret_cast<const float*>(b->BufferData(batch.buffer, 0));
    CHECK_EQ(b->BufferSize(batch.buffer, 0), static_cast<size_t>(batch.rows) * kFeatures * sizeof(float));
    uint32_t at = 0;
    for (const auto& item : batch.items) {
      CHECK_EQ(item.offset, at);
      CHECK_EQ(item.rows, item.request->rows);
      at += item.rows;
      for (uint32_t k = 0; k < item.rows; ++k)
        for (int f = 0; f < kFeatures; ++f)
          CHECK_EQ(x[(item.offset + k) * kFeatures + f], static_cast<float>(item.request->user_tag * 100 + k));
    }
    CHECK_EQ(at, batch.rows);
  }

  RequestPool pool;
  std::unique_ptr<Batcher> b;
  std::vector<Request*> made;
};

uint64_t Token(const Batch& batch, size_t i) { return batch.items[i].request->user_tag; }

}  // namespace

TEST(CreateRejectsBadOptions) {
  RequestPool pool(8);
  std::unique_ptr<Batcher> b;
  auto o = Options(8);
  o.preferred_batch_sizes = {9};
  Status s = Batcher::Create(o, &pool, &b);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), "preferred batch size 9");
  CHECK(!Batcher::Create(Options(0), &pool, &b).ok());
  o = Options(8);
  o.inputs.clear();
  CHECK(!Batcher::Create(o, &pool, &b).ok());
  o = Options(8, -1);
  CHECK(!Batcher::Create(o, &pool, &b).ok());
  o = Options(8, 0, 0);
  CHECK(!Batcher::Create(o, &pool, &b).ok());
  o = Options(8);
  o.priority_levels = 0;
  CHECK(!Batcher::Create(o, &pool, &b).ok());
  o = Options(8);
  o.priority_levels = 2;
  o.level_max_queue = {1};
  s = Batcher::Create(o, &pool, &b);
  CHECK_CONTAINS(s.message(), "one entry per priority level");
  o = Options(8);
  o.executors = 0;
  CHECK(!Batcher::Create(o, &pool, &b).ok());
  o = Options(8);
  o.slack_margin_ns = -1;
  CHECK(!Batcher::Create(o, &pool, &b).ok());
  CHECK(!Batcher::Create(Options(8), nullptr, &b).ok());
  CHECK(b == nullptr);
  CHECK(Batcher::Create(Options(8), &pool, &b).ok());
  CHECK(b != nullptr);
}

TEST(SubmitValidatesRowsAndPriority) {
  Fixture f(Options(4));
  Status s = f.Submit(1, 5);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), "batch of 5 rows");
  CHECK_CONTAINS(s.message(), "max_batch_size 4");
  s = f.Submit(2, 0);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  s = f.Submit(3, 1, 0, /*level=*/3);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), "priority level 3");
  CHECK_EQ(f.b->Stats().queued_requests, 0u);
}

TEST(EagerDispatchTakesWhatIsQueued) {
  ManualClock clock;
  Fixture f(Options(8, 0, 64, &clock));
  CHECK(f.Submit(1, 2).ok());
  CHECK(f.Submit(2, 1).ok());
  CHECK_EQ(f.b->Stats().queued_rows, 3u);
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  CHECK_EQ(batch.items.size(), size_t{2});
  CHECK_EQ(batch.items[0].offset, 0u);
  CHECK_EQ(batch.items[1].offset, 2u);
  CHECK_EQ(Token(batch, 0), uint64_t{1});
  f.CheckRows(batch);
  CHECK_EQ(batch.formed_ns, clock.NowNs());
  CHECK_EQ(f.b->Stats().executing, 1u);
  CHECK_EQ(f.b->Stats().queued_requests, 0u);
  f.Complete(batch);
  CHECK_EQ(f.b->Stats().batches, uint64_t{1});
  CHECK_EQ(f.b->Stats().rows_executed, uint64_t{3});
  CHECK_EQ(f.b->Stats().executing, 0u);
  // Nothing queued: a zero timeout returns at once with no batch.
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK(!batch.stopped);
}

TEST(MaxBatchSizeSplitsWithoutBreakingRequests) {
  ManualClock clock;
  Fixture f(Options(4, 0, 64, &clock));
  CHECK(f.Submit(1, 3).ok());
  CHECK(f.Submit(2, 3).ok());  // does not fit behind the first: next batch
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  CHECK_EQ(Token(batch, 0), uint64_t{1});
  f.Complete(batch);
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  CHECK_EQ(Token(batch, 0), uint64_t{2});
  f.CheckRows(batch);
  f.Complete(batch);
}

TEST(EveryExecutorBufferInUseMeansNoBatch) {
  ManualClock clock;
  auto o = Options(2, 0, 64, &clock);
  o.executors = 2;
  Fixture f(o);
  for (uint64_t t = 1; t <= 6; ++t) CHECK(f.Submit(t, 1).ok());
  Batch b1, b2, b3;
  CHECK(f.b->NextBatch(0, &b1).ok());
  CHECK(f.b->NextBatch(0, &b2).ok());
  CHECK_EQ(b1.rows, 2u);
  CHECK_EQ(b2.rows, 2u);
  CHECK(b1.buffer != b2.buffer);
  CHECK(f.b->NextBatch(0, &b3).ok());  // both buffers are out
  CHECK_EQ(b3.rows, 0u);
  f.CheckRows(b1);
  f.CheckRows(b2);
  f.Complete(b1);
  CHECK(f.b->NextBatch(0, &b3).ok());
  CHECK_EQ(b3.rows, 2u);
  CHECK_EQ(b3.buffer, b1.buffer);
  CHECK_EQ(Token(b3, 0), uint64_t{5});
  f.CheckRows(b3);
  f.Complete(b2);
  f.Complete(b3);
}

TEST(DelayWindowCollectsThenCloses) {
  ManualClock clock;
  Fixture f(Options(8, 500 * kMs, 64, &clock));
  CHECK(f.Submit(1, 1).ok());
  const int64_t first_ns = clock.NowNs();
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());  // the window is open: nothing yet
  CHECK_EQ(batch.rows, 0u);
  clock.Advance(499 * kMs);
  CHECK(f.Submit(2, 1).ok());
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  clock.Advance(1 * kMs);  // the oldest request's window closes now
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 2u);
  CHECK_EQ(batch.formed_ns, first_ns + 500 * kMs);
  CHECK_EQ(batch.items[0].request->enqueue_ns, first_ns);
  f.CheckRows(batch);
  f.Complete(batch);
}

TEST(DelayWindowWithRealClock) {
  // The wait itself (relative, on the condition variable): a lower bound only.
  Fixture f(Options(8, 50 * kMs));
  CHECK(f.Submit(1, 1).ok());
  Batch batch;
  CHECK(f.b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 1u);
  CHECK(batch.formed_ns >= batch.items[0].request->enqueue_ns + 50 * kMs);
  f.Complete(batch);
}

TEST(FullBatchClosesBeforeWindow) {
  ManualClock clock;
  Fixture f(Options(4, 60 * 1000 * kMs, 64, &clock));  // a window of a minute
  for (uint64_t t = 1; t <= 3; ++t) CHECK(f.Submit(t, 1).ok());
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK(f.Submit(4, 1).ok());
  CHECK(f.b->NextBatch(0, &batch).ok());  // full: closes at once
  CHECK_EQ(batch.rows, 4u);
  f.CheckRows(batch);
  f.Complete(batch);
}

TEST(PreferredSizeClosesBeforeWindow) {
  ManualClock clock;
  auto o = Options(16, 60 * 1000 * kMs, 64, &clock);
  o.preferred_batch_sizes = {2, 3};
  Fixture f(o);
  CHECK(f.Submit(1, 1).ok());
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK(f.Submit(2, 2).ok());
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  f.CheckRows(batch);
  f.Complete(batch);
}

TEST(QueueFullIsResourceExhausted) {
  ManualClock clock;
  Fixture f(Options(8, 0, /*queue=*/2, &clock));
  CHECK(f.Submit(1, 1).ok());
  CHECK(f.Submit(2, 1).ok());
  Status s = f.Submit(3, 1);
  CHECK(s.code() == StatusCode::kResourceExhausted);
  CHECK_CONTAINS(s.message(), "max_queue_size 2");
  CHECK_EQ(f.b->Stats().rejected_queue_full, uint64_t{1});
  CHECK_EQ(f.b->Stats().queued_requests, 2u);
}

TEST(PerLevelCapRefusesThatLevelOnly) {
  ManualClock clock;
  auto o = Options(8, 60 * 1000 * kMs, 64, &clock);
  o.priority_levels = 2;
  o.level_max_queue = {0, 2};  // level 0: only the global cap; level 1: 2 requests
  Fixture f(o);
  CHECK(f.Submit(1, 1, 0, 1).ok());
  CHECK(f.Submit(2, 1, 0, 1).ok());
  Status s = f.Submit(3, 1, 0, 1);
  CHECK(s.code() == StatusCode::kResourceExhausted);
  CHECK_CONTAINS(s.message(), "priority level 2 is full");
  CHECK_CONTAINS(s.message(), "max_queue_size 2 for this level");
  for (uint64_t t = 4; t <= 8; ++t) CHECK(f.Submit(t, 1, 0, 0).ok());
  CHECK_EQ(f.b->Stats().queued_requests, 7u);
  CHECK_EQ(f.b->Stats().rejected_queue_full, uint64_t{1});
}

TEST(ExpiredRequestsAreDroppedNotExecuted) {
  ManualClock clock;
  Fixture f(Options(8, 60 * 1000 * kMs, 64, &clock));
  Request* r1 = nullptr;
  CHECK(f.Submit(1, 1, clock.NowNs() + 5 * kMs, 0, &r1).ok());
  CHECK(f.Submit(2, 1).ok());
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK(batch.dropped.empty());
  clock.Advance(5 * kMs);
  // Request 1 (the head) is reported dropped; request 2 keeps waiting for its window.
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK_EQ(batch.dropped.size(), size_t{1});
  CHECK(batch.dropped[0] == r1);
  CHECK(r1->owner.load() == nullptr);
  CHECK_EQ(f.b->Stats().expired, uint64_t{1});
  CHECK_EQ(f.b->Stats().queued_requests, 1u);
  CHECK(!f.b->Withdraw(r1));  // no longer here
  f.ReleaseAll(batch.dropped);
  f.b->Stop();
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 1u);
  CHECK_EQ(Token(batch, 0), uint64_t{2});
  f.Complete(batch);
  CHECK_EQ(f.b->Stats().rows_executed, uint64_t{1});
}

TEST(PastDeadlineRefusedAtSubmit) {
  ManualClock clock;
  Fixture f(Options(8, 0, 64, &clock));
  Status s = f.Submit(1, 1, clock.NowNs() - 1);
  CHECK(s.code() == StatusCode::kDeadlineExceeded);
  CHECK_CONTAINS(s.message(), "deadline already passed");
  s = f.Submit(2, 1, clock.NowNs());
  CHECK(s.code() == StatusCode::kDeadlineExceeded);
  CHECK_EQ(f.b->Stats().rejected_deadline, uint64_t{2});
}

TEST(SlackClosesBatchEarly) {
  ManualClock clock;
  Fixture f(Options(8, 60 * 1000 * kMs, 64, &clock));  // a minute-long window
  f.b->latency_model().Record(1, 1000 * kMs);          // a batch of 1 takes 1 s
  const int64_t deadline = clock.NowNs() + 2000 * kMs;
  CHECK(f.Submit(1, 1, deadline).ok());
  Batch batch;
  clock.Advance(999 * kMs);
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  clock.Advance(1 * kMs);  // deadline - 1 s: no slack left
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 1u);
  CHECK_EQ(batch.formed_ns, deadline - 1000 * kMs);
  f.Complete(batch);
}

TEST(SlackMarginCountsToo) {
  ManualClock clock;
  auto o = Options(8, 60 * 1000 * kMs, 64, &clock);
  o.slack_margin_ns = 100 * kMs;
  Fixture f(o);
  f.b->latency_model().Record(1, 400 * kMs);
  const int64_t deadline = clock.NowNs() + 1000 * kMs;
  CHECK(f.Submit(1, 1, deadline).ok());
  Batch batch;
  clock.Advance(499 * kMs);
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  clock.Advance(1 * kMs);  // deadline - 400 ms - 100 ms
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 1u);
  f.Complete(batch);
}

// The min-deadline index: a tighter deadline behind the head closes the batch in time.
TEST(TightDeadlineBehindTheHeadClosesTheBatch) {
  ManualClock clock;
  auto o = Options(8, 60 * 1000 * kMs, 64, &clock);
  o.priority_levels = 2;
  Fixture f(o);
  f.b->latency_model().Record(1, 10 * kMs);
  f.b->latency_model().Record(3, 30 * kMs);
  CHECK(f.Submit(1, 1, clock.NowNs() + 10000 * kMs).ok());  // head: a loose deadline
  CHECK(f.Submit(2, 1).ok());                               // no deadline
  const int64_t tight = clock.NowNs() + 100 * kMs;
  CHECK(f.Submit(3, 1, tight, /*level=*/1).ok());  // behind, at a lower level, a tight one
  Batch batch;
  clock.Advance(69 * kMs);
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  clock.Advance(1 * kMs);  // tight - estimate(3 rows) = 70 ms
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  CHECK_EQ(Token(batch, 0), uint64_t{1});
  CHECK_EQ(Token(batch, 2), uint64_t{3});
  f.CheckRows(batch);
  f.Complete(batch);
}

TEST(TightDeadlineWakesAWaitingExecutor) {
  // Real clock: an executor waiting for a minute-long window is woken by a
  // request whose deadline leaves no slack.
  Fixture f(Options(8, 60 * 1000 * kMs));
  f.b->latency_model().Record(1, 10 * kMs);
  f.b->latency_model().Record(2, 10 * kMs);
  CHECK(f.Submit(1, 1).ok());
  std::atomic<uint32_t> rows{0};
  std::thread executor([&] {
    Batch batch;
    CHECK(f.b->NextBatch(20000 * kMs, &batch).ok());
    rows = batch.rows;
    f.Complete(batch);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const int64_t deadline = f.b->NowNs() + 100 * kMs;
  CHECK(f.Submit(2, 1, deadline).ok());
  executor.join();
  CHECK_EQ(rows.load(), 2u);
  CHECK(f.b->NowNs() < deadline + 5000 * kMs);  // long before the window; generous on a loaded machine
}

// ExpireDue: an expired request behind the head stops counting as queued at once.
TEST(ExpireDueWithdrawsExpiredBehindTheHead) {
  ManualClock clock;
  Fixture f(Options(8, 60 * 1000 * kMs, 64, &clock));
  CHECK(f.Submit(1, 1).ok());  // head, no deadline
  Request* r2 = nullptr;
  CHECK(f.Submit(2, 2, clock.NowNs() + 50 * kMs, 0, &r2).ok());
  CHECK(f.Submit(3, 1, clock.NowNs() + 80 * kMs).ok());
  std::vector<Request*> queued, executing;
  CHECK_EQ(f.b->ExpireDue(clock.NowNs(), &queued, &executing), clock.NowNs() + 50 * kMs);
  CHECK(queued.empty());
  clock.Advance(50 * kMs);
  const int64_t next = f.b->ExpireDue(clock.NowNs(), &queued, &executing);
  CHECK_EQ(next, clock.NowNs() + 30 * kMs);
  CHECK_EQ(queued.size(), size_t{1});
  CHECK(queued[0] == r2);
  CHECK(executing.empty());
  auto st = f.b->Stats();
  CHECK_EQ(st.queued_requests, 2u);
  CHECK_EQ(st.queued_rows, 2u);
  CHECK_EQ(st.expired, uint64_t{1});
  CHECK(!f.b->Withdraw(r2));  // withdrawn already
  // The pool still counts it until its ring slot is popped (the batcher's reference).
  const uint32_t in_use = f.pool.in_use();
  f.b->Stop();
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 2u);  // 1 and 3: never 2
  CHECK_EQ(Token(batch, 0), uint64_t{1});
  CHECK_EQ(Token(batch, 1), uint64_t{3});
  CHECK(batch.dropped.empty());
  f.CheckRows(batch);
  CHECK_EQ(f.pool.in_use(), in_use);  // r2's ring reference dropped, the caller's still held
  CHECK_EQ(r2->refs.load(), 1);
  f.Complete(batch);
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK(batch.stopped);
}

TEST(ExpireDueReportsExecutingPastTheirDeadline) {
  ManualClock clock;
  Fixture f(Options(8, 0, 64, &clock));
  Request *r1 = nullptr, *r2 = nullptr;
  CHECK(f.Submit(1, 1, clock.NowNs() + 10 * kMs, 0, &r1).ok());
  CHECK(f.Submit(2, 1, clock.NowNs() + 20 * kMs, 0, &r2).ok());
  CHECK(f.Submit(3, 1).ok());
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  std::vector<Request*> queued, executing;
  CHECK_EQ(f.b->ExpireDue(clock.NowNs(), &queued, &executing), clock.NowNs() + 10 * kMs);
  clock.Advance(10 * kMs);
  CHECK_EQ(f.b->ExpireDue(clock.NowNs(), &queued, &executing), clock.NowNs() + 10 * kMs);
  CHECK(queued.empty());
  CHECK_EQ(executing.size(), size_t{1});
  CHECK(executing[0] == r1);
  // Reported once: the next call does not report it again.
  executing.clear();
  CHECK_EQ(f.b->ExpireDue(clock.NowNs(), &queued, &executing), clock.NowNs() + 10 * kMs);
  CHECK(executing.empty());
  // An answered request is no longer reported (the reaper answered r2 meanwhile, say).
  CHECK(r2->TryAnswer());
  clock.Advance(10 * kMs);
  CHECK_EQ(f.b->ExpireDue(clock.NowNs(), &queued, &executing), 0);
  CHECK(executing.empty());
  f.Complete(batch);
  clock.Advance(1000 * kMs);
  CHECK_EQ(f.b->ExpireDue(clock.NowNs(), &queued, &executing), 0);
  CHECK(executing.empty());
  CHECK(queued.empty());
}

TEST(WithdrawnRequestsNeverExecuteAndGoBackToThePool) {
  ManualClock clock;
  Fixture f(Options(8, 0, 64, &clock));
  Request *r1 = nullptr, *r2 = nullptr;
  CHECK(f.Submit(1, 1, 0, 0, &r1).ok());
  CHECK(f.Submit(2, 1, 0, 0, &r2).ok());
  CHECK(f.b->Withdraw(r1));
  CHECK(!f.b->Withdraw(r1));  // second withdraw: no longer queued
  CHECK_EQ(f.b->Stats().cancelled, uint64_t{1});
  CHECK_EQ(f.b->Stats().queued_requests, 1u);
  CHECK_EQ(r1->refs.load(), 2);  // the ring still holds it
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 1u);
  CHECK_EQ(Token(batch, 0), uint64_t{2});
  CHECK_EQ(r1->refs.load(), 1);  // popped: the batcher's reference is back
  CHECK(r1->owner.load() == nullptr);
  CHECK(!f.b->Withdraw(r2));  // already taken into a batch
  f.Complete(batch);
  CHECK(!f.b->Withdraw(r2));
  // A request of another batcher is not withdrawn here.
  RequestPool other_pool(4);
  std::unique_ptr<Batcher> other;
  CHECK(Batcher::Create(Options(8, 0, 64, &clock), &other_pool, &other).ok());
  Request* r3 = nullptr;
  CHECK(f.Submit(3, 1, 0, 0, &r3).ok());
  CHECK(!other->Withdraw(r3));
  CHECK(f.b->Withdraw(r3));
  // Everything answered and released: the pool is empty again.
  for (Request* r : f.made) f.pool.Release(r);
  f.made.clear();
  CHECK_EQ(f.pool.in_use(), 1u);  // r3, withdrawn, still in its ring
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK_EQ(f.pool.in_use(), 0u);
}

TEST(WithdrawnBehindTheHeadIsSkippedWhenGathered) {
  ManualClock clock;
  Fixture f(Options(8, 0, 64, &clock));
  Request* r2 = nullptr;
  CHECK(f.Submit(1, 1).ok());
  CHECK(f.Submit(2, 1, 0, 0, &r2).ok());
  CHECK(f.Submit(3, 1).ok());
  CHECK(f.b->Withdraw(r2));
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 2u);
  CHECK_EQ(Token(batch, 0), uint64_t{1});
  CHECK_EQ(Token(batch, 1), uint64_t{3});
  CHECK_EQ(batch.items[1].offset, 1u);
  f.CheckRows(batch);
  CHECK_EQ(r2->refs.load(), 1);
  f.Complete(batch);
}

TEST(HigherPriorityLevelGoesFirst) {
  ManualClock clock;
  auto o = Options(2, 0, 64, &clock);
  o.priority_levels = 3;
  Fixture f(o);
  CHECK(f.Submit(1, 1, 0, 2).ok());
  CHECK(f.Submit(2, 1, 0, 1).ok());
  CHECK(f.Submit(3, 1, 0, 0).ok());
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(Token(batch, 0), uint64_t{3});
  CHECK_EQ(Token(batch, 1), uint64_t{2});
  CHECK_EQ(batch.items[0].request->level, 0u);
  f.CheckRows(batch);
  f.Complete(batch);
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(Token(batch, 0), uint64_t{1});
  f.Complete(batch);
}

TEST(HigherLevelEvictsLowerWhenFull) {
  ManualClock clock;
  auto o = Options(8, 60 * 1000 * kMs, /*queue=*/2, &clock);
  o.priority_levels = 2;
  Fixture f(o);
  Request* r2 = nullptr;
  CHECK(f.Submit(1, 1, 0, /*level=*/1).ok());
  CHECK(f.Submit(2, 1, 0, 1, &r2).ok());
  CHECK(f.Submit(3, 1, 0, 1).code() == StatusCode::kResourceExhausted);  // same level: refused
  Request* evicted = nullptr;
  CHECK(f.Submit(4, 1, 0, /*level=*/0, nullptr, &evicted).ok());
  CHECK(evicted == r2);  // the newest of the lower level
  CHECK(evicted->owner.load() == nullptr);
  f.pool.Release(evicted);  // the core's reference (answered RESOURCE_EXHAUSTED by its owner)
  auto st = f.b->Stats();
  CHECK_EQ(st.evicted, uint64_t{1});
  CHECK_EQ(st.queued_requests, 2u);
  // Level 0 full too and nothing lower: refused.
  CHECK(f.Submit(5, 1, 0, 0, nullptr, &evicted).ok());
  CHECK(evicted != nullptr && evicted->user_tag == 1);
  f.pool.Release(evicted);
  Status s = f.Submit(6, 1, 0, 0, nullptr, &evicted);
  CHECK(s.code() == StatusCode::kResourceExhausted);
  CHECK(evicted == nullptr);
  f.b->Stop();
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 2u);
  CHECK_EQ(Token(batch, 0), uint64_t{4});
  CHECK_EQ(Token(batch, 1), uint64_t{5});
  f.Complete(batch);
}

TEST(EvictionSkipsWithdrawnRequests) {
  ManualClock clock;
  auto o = Options(8, 60 * 1000 * kMs, /*queue=*/2, &clock);
  o.priority_levels = 2;
  Fixture f(o);
  Request *r1 = nullptr, *r2 = nullptr;
  CHECK(f.Submit(1, 1, 0, 1, &r1).ok());
  CHECK(f.Submit(2, 1, 0, 1, &r2).ok());
  CHECK(f.b->Withdraw(r2));  // still at the back of level 1's ring
  CHECK(f.Submit(3, 1, 0, 0).ok());
  CHECK_EQ(f.b->Stats().queued_requests, 2u);
  Request* evicted = nullptr;
  CHECK(f.Submit(4, 1, 0, 0, nullptr, &evicted).ok());
  CHECK(evicted == r1);          // the withdrawn one is passed over (and released), the live one shed
  CHECK_EQ(r2->refs.load(), 1);  // the ring's reference of the withdrawn one is back
  f.pool.Release(evicted);
  CHECK_EQ(f.b->Stats().evicted, uint64_t{1});
  CHECK_EQ(f.b->Stats().queued_requests, 2u);
}

TEST(StopDrainsThenReportsStopped) {
  ManualClock clock;
  Fixture f(Options(2, 60 * 1000 * kMs, 64, &clock));
  for (uint64_t t = 1; t <= 3; ++t) CHECK(f.Submit(t, 1).ok());
  f.b->Stop();
  CHECK(f.b->stopping());
  Status s = f.Submit(9, 1);
  CHECK(s.code() == StatusCode::kUnavailable);
  CHECK_EQ(f.b->Stats().rejected_stopped, uint64_t{1});
  Batch batch;
  uint32_t drained = 0;
  for (;;) {
    CHECK(f.b->NextBatch(0, &batch).ok());  // stopping: the window does not hold batches back
    if (batch.stopped) break;
    CHECK(batch.rows > 0);
    drained += batch.rows;
    f.CheckRows(batch);
    f.Complete(batch);
  }
  CHECK_EQ(drained, 3u);
}

TEST(StopWakesAnIdleDispatcher) {
  Fixture f(Options(2));
  std::atomic<bool> stopped{false};
  std::thread executor([&] {
    Batch batch;
    CHECK(f.b->NextBatch(-1, &batch).ok());
    stopped = batch.stopped;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  f.b->Stop();
  executor.join();
  CHECK(stopped.load());
}

TEST(NextBatchTimesOut) {
  Fixture f(Options(2, 60 * 1000 * kMs));
  CHECK(f.Submit(1, 1).ok());
  Batch batch;
  const int64_t start = f.b->NowNs();
  CHECK(f.b->NextBatch(20 * kMs, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK(!batch.stopped);
  CHECK(f.b->NowNs() - start >= 20 * kMs);
}

TEST(WaitForDeadlineReturnsOnStopReaper) {
  Fixture f(Options(2));
  std::thread reaper([&] {
    while (!f.b->ReaperStopped()) f.b->WaitForDeadline(0);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  f.b->StopReaper();
  reaper.join();
  CHECK(f.b->ReaperStopped());
}

// The reaper computes its next deadline (ExpireDue), then waits (WaitForDeadline).
// A deadline indexed in between notifies nobody; the wait must still not sleep past it.
TEST(WaitForDeadlineSeesADeadlineIndexedBeforeItWaits) {
  Fixture f(Options(8, 60 * 1000 * kMs));
  std::vector<Request*> queued, executing;
  CHECK_EQ(f.b->ExpireDue(f.b->NowNs(), &queued, &executing), 0);  // nothing to wait for
  const int64_t deadline = f.b->NowNs() + 30 * kMs;
  CHECK(f.Submit(1, 1, deadline).ok());  // its notify finds no reaper waiting yet
  std::atomic<bool> returned{false};
  std::thread reaper([&] {
    f.b->WaitForDeadline(0);  // what ExpireDue returned
    returned = true;
  });
  for (int i = 0; i < 5000 && !returned.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const bool in_time = returned.load();
  f.b->StopReaper();
  reaper.join();
  CHECK(in_time);
  CHECK_EQ(f.b->ExpireDue(f.b->NowNs(), &queued, &executing), 0);
  CHECK_EQ(queued.size(), size_t{1});
}

// Many producers, several executors: every accepted request is executed exactly
// once, with its own rows in its own slot, and batching happened.
TEST(ConcurrentProducersAndExecutors) {
  constexpr int kProducers = 8, kPerProducer = 500, kExecutors = 3;
  constexpr uint32_t kTotal = kProducers * kPerProducer;
  auto o = Options(16, 0, 4096);
  o.executors = kExecutors;
  o.priority_levels = 2;
  RequestPool pool(kTotal);
  std::unique_ptr<Batcher> b;
  CHECK(Batcher::Create(o, &pool, &b).ok());
  std::atomic<uint64_t> seen_rows{0}, batches{0};
  std::vector<std::atomic<int>> seen(kTotal + 1);
  std::vector<Request*> requests(kTotal + 1, nullptr);
  std::vector<std::thread> executors;
  for (int e = 0; e < kExecutors; ++e) {
    executors.emplace_back([&] {
      Batch batch;
      for (;;) {
        CHECK(b->NextBatch(-1, &batch).ok());
        CHECK(batch.dropped.empty());
        if (batch.stopped) return;
        if (batch.rows == 0) continue;
        const float* x = reinterpret_cast<const float*>(b->BufferData(batch.buffer, 0));
        uint32_t at = 0;
        for (const auto& item : batch.items) {
          CHECK_EQ(item.offset, at);
          at += item.rows;
          const uint64_t token = item.request->user_tag;
          for (uint32_t k = 0; k < item.rows; ++k)
            for (int f = 0; f < kFeatures; ++f)
              CHECK_EQ(x[(item.offset + k) * kFeatures + f], static_cast<float>(token * 100 + k));
          seen[token].fetch_add(1);
        }
        CHECK_EQ(at, batch.rows);
        seen_rows += batch.rows;
        ++batches;
        b->Complete(batch, 1000);
        for (const auto& item : batch.items) pool.Release(item.request);
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        const uint64_t token = static_cast<uint64_t>(p * kPerProducer + i + 1);
        Request* r = pool.Acquire();
        CHECK(r != nullptr);
        requests[token] = r;
        r->user_tag = token;
        r->rows = 1 + token % 3;
        r->deadline_ns = 0;
        r->transformed.clear();
        r->inputs.resize(1);
        r->inputs[0].resize(r->rows * kFeatures * sizeof(float));
        float* x = reinterpret_cast<float*>(r->inputs[0].data());
        for (uint32_t k = 0; k < r->rows; ++k)
          for (int f = 0; f < kFeatures; ++f) x[k * kFeatures + f] = static_cast<float>(token * 100 + k);
        Status s;
        Request* evicted = nullptr;
        do {
          s = b->Submit(r, static_cast<uint32_t>(token % 2), &evicted);
          CHECK(evicted == nullptr);  // nothing is shed: the queue never fills past its size
          if (s.code() == StatusCode::kResourceExhausted) std::this_thread::yield();
        } while (s.code() == StatusCode::kResourceExhausted);
        CHECK(s.ok());
      }
    });
  }
  for (auto& t : producers) t.join();
  b->Stop();
  for (auto& t : executors) t.join();
  uint64_t expected_rows = 0;
  for (uint64_t t = 1; t <= kTotal; ++t) {
    CHECK_EQ(seen[t].load(), 1);
    expected_rows += 1 + t % 3;
  }
  CHECK_EQ(seen_rows.load(), expected_rows);
  CHECK(batches.load() <= uint64_t{kTotal});
  CHECK_EQ(b->Stats().submitted, uint64_t{kTotal});
  CHECK_EQ(b->Stats().batches, batches.load());
  for (uint64_t t = 1; t <= kTotal; ++t) pool.Release(requests[t]);
  CHECK_EQ(pool.in_use(), 0u);
}

// The same with deadlines, withdrawals and an ExpireDue thread racing the executors:
// every request is accounted for exactly once (executed, dropped, expired or withdrawn),
// and every reference comes back to the pool.
TEST(ConcurrentDeadlinesAndWithdrawals) {
  constexpr int kProducers = 4, kPerProducer = 400, kExecutors = 2;
  constexpr uint32_t kTotal = kProducers * kPerProducer;
  auto o = Options(8, 1 * kMs, 256);
  o.executors = kExecutors;
  RequestPool pool(kTotal);
  std::unique_ptr<Batcher> b;
  CHECK(Batcher::Create(o, &pool, &b).ok());
  std::vector<std::atomic<int>> fate(kTotal + 1);  // executed / dropped / expired / withdrawn, counted
  std::vector<Request*> requests(kTotal + 1, nullptr);
  std::atomic<bool> reaper_stop{false};
  std::thread reaper([&] {
    std::vector<Request*> queued, executing;
    while (!reaper_stop.load()) {
      queued.clear();
      executing.clear();
      b->ExpireDue(b->NowNs(), &queued, &executing);
      for (Request* r : queued) fate[r->user_tag].fetch_add(1);  // released by the batcher when popped
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<std::thread> executors;
  for (int e = 0; e < kExecutors; ++e) {
    executors.emplace_back([&] {
      Batch batch;
      for (;;) {
        CHECK(b->NextBatch(-1, &batch).ok());
        for (Request* r : batch.dropped) {
          fate[r->user_tag].fetch_add(1);
          pool.Release(r);
        }
        if (batch.stopped) return;
        if (batch.rows == 0) continue;
        const float* x = reinterpret_cast<const float*>(b->BufferData(batch.buffer, 0));
        for (const auto& item : batch.items) {
          CHECK_EQ(x[item.offset * kFeatures], static_cast<float>(item.request->user_tag * 100));
          fate[item.request->user_tag].fetch_add(1);
        }
        b->Complete(batch, 100000);
        for (const auto& item : batch.items) pool.Release(item.request);
      }
    });
  }
  std::atomic<uint64_t> withdrawn{0}, refused{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        const uint64_t token = static_cast<uint64_t>(p * kPerProducer + i + 1);
        Request* r = pool.Acquire();
        CHECK(r != nullptr);
        requests[token] = r;
        r->user_tag = token;
        r->rows = 1;
        r->transformed.clear();
        r->inputs.resize(1);
        r->inputs[0].assign(kFeatures * sizeof(float), 0);
        float* x = reinterpret_cast<float*>(r->inputs[0].data());
        for (int f = 0; f < kFeatures; ++f) x[f] = static_cast<float>(token * 100);
        r->deadline_ns = token % 3 == 0 ? 0 : b->NowNs() + static_cast<int64_t>(token % 7) * 200000 + 1000;
        Request* evicted = nullptr;
        Status s = b->Submit(r, 0, &evicted);
        CHECK(evicted == nullptr);
        if (!s.ok()) {
          fate[token].fetch_add(1);
          ++refused;
          pool.Release(r);
          continue;
        }
        if (token % 5 == 0 && b->Withdraw(r)) {
          fate[token].fetch_add(1);
          ++withdrawn;
        }
        if (i % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  for (auto& t : producers) t.join();
  b->Stop();
  for (auto& t : executors) t.join();
  reaper_stop = true;
  reaper.join();
  for (uint64_t t = 1; t <= kTotal; ++t) CHECK_EQ(fate[t].load(), 1);
  CHECK_EQ(b->Stats().cancelled, withdrawn.load());
  for (uint64_t t = 1; t <= kTotal; ++t) pool.Release(requests[t]);
  b.reset();  // anything withdrawn still in a ring is released here
  CHECK_EQ(pool.in_use(), 0u);
}

TEST(AdmissionRefusesWhatWouldBeLate) {
  ManualClock clock;
  auto o = Options(4, 0, 64, &clock);
  o.admission_control = true;
  Fixture f(o);
  // Nothing measured yet: no basis to refuse, and no estimate.
  CHECK_EQ(f.b->EstimateCompletionNs(1, 0), 0);
  f.b->latency_model().Record(4, 10 * kMs);  // a full batch of 4 takes 10 ms
  f.b->latency_model().Record(1, 4 * kMs);
  // 8 rows queued ahead = two full batches (20 ms) before ours.
  for (uint64_t t = 1; t <= 8; ++t) CHECK(f.Submit(t, 1, clock.NowNs() + 10000 * kMs).ok());
  Status late = f.Submit(9, 1, clock.NowNs() + 15 * kMs);
  CHECK(late.code() == StatusCode::kDeadlineExceeded);
  CHECK_CONTAINS(late.message(), "estimated completion in");
  CHECK_CONTAINS(late.message(), "8 rows queued ahead");
  CHECK_EQ(f.b->Stats().rejected_admission, uint64_t{1});
  CHECK(f.Submit(10, 1, clock.NowNs() + 200 * kMs).ok());  // a loose deadline fits
  // 9 queued + 1 = 10 rows: two full batches (20 ms) + a batch of 2 (interpolated 6 ms).
  CHECK_EQ(f.b->EstimateCompletionNs(1, 0) - clock.NowNs(), 26 * kMs);
  // A batch executing counts what is left of it.
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 4u);
  clock.Advance(4 * kMs);
  // 5 queued + 1 = 6 rows: 10 ms + 6 ms, plus 6 ms left of the executing batch.
  CHECK_EQ(f.b->EstimateCompletionNs(1, 0) - clock.NowNs(), 22 * kMs);
  f.Complete(batch, 10 * kMs);
}

TEST(AdmissionCountsOnlyLevelsAhead) {
  ManualClock clock;
  auto o = Options(4, 0, 64, &clock);
  o.admission_control = true;
  o.priority_levels = 2;
  Fixture f(o);
  f.b->latency_model().Record(4, 10 * kMs);
  f.b->latency_model().Record(1, 4 * kMs);
  for (uint64_t t = 1; t <= 8; ++t) CHECK(f.Submit(t, 1, 0, /*level=*/1).ok());
  // Level 0 sees none of level 1's rows ahead of it.
  CHECK(f.Submit(9, 1, clock.NowNs() + 5 * kMs, 0).ok());
  CHECK(f.Submit(10, 1, clock.NowNs() + 5 * kMs, 1).code() == StatusCode::kDeadlineExceeded);
}

TEST(SloCapsBatchSize) {
  ManualClock clock;
  auto o = Options(16, 0, 64, &clock);
  o.slo_latency_ns = 10 * kMs;
  Fixture f(o);
  CHECK_EQ(f.b->BatchCap(), 16u);
  f.b->latency_model().Record(4, 8 * kMs);
  f.b->latency_model().Record(8, 16 * kMs);
  f.b->RefreshCap();
  CHECK_EQ(f.b->BatchCap(), 5u);  // 5 rows: interpolated 10 ms, the largest that fits
  for (uint64_t t = 1; t <= 12; ++t) CHECK(f.Submit(t, 1).ok());
  Batch batch;
  CHECK(f.b->NextBatch(0, &batch).ok());
  CHECK_EQ(batch.rows, 5u);
  f.CheckRows(batch);
  f.Complete(batch, 10 * kMs);
  CHECK_EQ(f.b->BatchCap(), 5u);
  f.b->Stop();
  while (true) {
    CHECK(f.b->NextBatch(0, &batch).ok());
    if (batch.stopped) break;
    CHECK(batch.rows <= 5u);
    f.Complete(batch, -1);
  }
}

TEST(PoolCapacityLimit) {
  RequestPool pool(2);
  CHECK_EQ(pool.capacity(), 2u);
  Request* a = pool.Acquire();
  Request* b = pool.Acquire();
  CHECK(a != nullptr && b != nullptr && a != b);
  CHECK(pool.Acquire() == nullptr);
  CHECK_EQ(pool.in_use(), 2u);
  CHECK_EQ(a->refs.load(), 2);
  const uint64_t ha = a->Handle();
  CHECK(pool.Find(ha) == a);
  pool.Release(a);  // one of two references
  CHECK(pool.Acquire() == nullptr);
  CHECK(pool.Find(ha) == a);
  pool.Release(a);
  CHECK_EQ(pool.in_use(), 1u);
  CHECK(pool.Find(ha) == nullptr);  // recycled: the old handle names nothing
  Request* c = pool.Acquire();
  CHECK(c == a);  // the same slot again, with a new generation
  CHECK(c->Handle() != ha);
  CHECK(!c->answered.load());
  CHECK(pool.Find(c->Handle()) == c);
  for (Request* r : {b, b, c, c}) pool.Release(r);
  CHECK_EQ(pool.in_use(), 0u);
}

TEST(RingsSizedByThePoolNeverOverflow) {
  // As many requests as the pool holds, all at one level, some withdrawn (still in the ring).
  ManualClock clock;
  auto o = Options(4, 60 * 1000 * kMs, 8, &clock);
  Fixture f(o, /*pool_capacity=*/8);
  std::vector<Request*> rs;
  for (uint64_t t = 1; t <= 8; ++t) {
    Request* r = nullptr;
    CHECK(f.Submit(t, 1, 0, 0, &r).ok());
    rs.push_back(r);
  }
  CHECK(f.pool.Acquire() == nullptr);
  for (int i = 0; i < 8; i += 2) CHECK(f.b->Withdraw(rs[i]));
  CHECK_EQ(f.b->Stats().queued_requests, 4u);
  f.b->Stop();
  Batch batch;
  uint32_t rows = 0;
  for (;;) {
    CHECK(f.b->NextBatch(0, &batch).ok());
    if (batch.stopped) break;
    for (const auto& item : batch.items) CHECK(item.request->user_tag % 2 == 0);
    rows += batch.rows;
    f.Complete(batch);
  }
  CHECK_EQ(rows, 4u);
}

TEST_MAIN()
