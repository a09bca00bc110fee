#include "steadyserve/batcher.h"

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

BatcherOptions Options(uint32_t max_batch, int64_t delay_ns = 0, uint32_t queue = 64) {
  BatcherOptions o;
  o.model = "m";
  o.inputs = {{"x", kFeatures * sizeof(float), nullptr}};
  o.max_batch_size = max_batch;
  o.max_queue_delay_ns = delay_ns;
  o.max_queue_size = queue;
  return o;
}

std::unique_ptr<Batcher> Make(const BatcherOptions& o) {
  std::unique_ptr<Batcher> b;
  Status s = Batcher::Create(o, &b);
  CHECK(s.ok());
  return b;
}

// Submits `rows` rows whose every feature equals token*100 + row.
Status SubmitRows(Batcher& b, uint64_t token, uint32_t rows, int64_t deadline_ns = 0, uint32_t priority = 0,
                  uint64_t* handle_out = nullptr) {
  std::vector<float> data(rows * kFeatures);
  for (uint32_t r = 0; r < rows; ++r)
    for (int f = 0; f < kFeatures; ++f) data[r * kFeatures + f] = static_cast<float>(token * 100 + r);
  const uint8_t* ptr = reinterpret_cast<const uint8_t*>(data.data());
  SubmitResult result;
  Status s = b.Submit(token, &ptr, 1, rows, deadline_ns, priority, &result);
  if (handle_out) *handle_out = result.handle;
  return s;
}

// Every row of every item carries its own token's values.
void CheckBatchRows(Batcher& b, const Batch& batch) {
  const float* x = reinterpret_cast<const float*>(b.BufferData(batch.buffer, 0));
  for (const auto& item : batch.items)
    for (uint32_t r = 0; r < item.rows; ++r)
      for (int f = 0; f < kFeatures; ++f)
        CHECK_EQ(x[(item.offset + r) * kFeatures + f], static_cast<float>(item.token * 100 + r));
}

}  // namespace

TEST(CreateRejectsBadOptions) {
  std::unique_ptr<Batcher> b;
  auto o = Options(8);
  o.preferred_batch_sizes = {9};
  Status s = Batcher::Create(o, &b);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), "preferred batch size 9");
  o = Options(0);
  CHECK(!Batcher::Create(o, &b).ok());
  o = Options(8);
  o.inputs.clear();
  CHECK(!Batcher::Create(o, &b).ok());
}

TEST(SubmitValidatesRowsAndPriority) {
  auto b = Make(Options(4));
  Status s = SubmitRows(*b, 1, 5);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), "batch of 5 rows");
  CHECK_CONTAINS(s.message(), "max_batch_size 4");
  s = SubmitRows(*b, 1, 1, 0, /*priority=*/3);
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), "priority level 3");
}

TEST(EagerDispatchTakesWhatIsQueued) {
  auto b = Make(Options(8));
  CHECK(SubmitRows(*b, 1, 2).ok());
  CHECK(SubmitRows(*b, 2, 1).ok());
  Batch batch;
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  CHECK_EQ(batch.items.size(), size_t{2});
  CHECK_EQ(batch.items[0].offset, 0u);
  CHECK_EQ(batch.items[1].offset, 2u);
  CheckBatchRows(*b, batch);
  b->Complete(batch.buffer, batch.rows, 1000);
  CHECK_EQ(b->Stats().batches, uint64_t{1});
}

TEST(MaxBatchSizeSplitsWithoutBreakingRequests) {
  auto b = Make(Options(4));
  CHECK(SubmitRows(*b, 1, 3).ok());
  CHECK(SubmitRows(*b, 2, 3).ok());  // does not fit behind the first: next batch
  Batch batch;
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  CHECK_EQ(batch.items[0].token, uint64_t{1});
  b->Complete(batch.buffer, batch.rows, 1);
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  CHECK_EQ(batch.items[0].token, uint64_t{2});
  CheckBatchRows(*b, batch);
  b->Complete(batch.buffer, batch.rows, 1);
}

TEST(DelayWindowCollectsThenCloses) {
  // Timing bounds here are lower bounds, or upper bounds with a wide margin:
  // the test must hold on a loaded machine.
  auto b = Make(Options(8, 500 * kMs));
  CHECK(SubmitRows(*b, 1, 1).ok());
  Batch batch;
  // Well before the window closes: nothing yet.
  CHECK(b->NextBatch(1 * kMs, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK(SubmitRows(*b, 2, 1).ok());
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 2u);
  CHECK(batch.formed_ns >= batch.items[0].enqueue_ns + 500 * kMs);
  b->Complete(batch.buffer, batch.rows, 1);
}

TEST(FullBatchClosesBeforeWindow) {
  auto b = Make(Options(4, 60 * 1000 * kMs));  // a window of a minute
  for (uint64_t t = 1; t <= 4; ++t) CHECK(SubmitRows(*b, t, 1).ok());
  Batch batch;
  CHECK(b->NextBatch(-1, &batch).ok());  // returns at once: the batch is full
  CHECK_EQ(batch.rows, 4u);
  b->Complete(batch.buffer, batch.rows, 1);
}

TEST(PreferredSizeClosesBeforeWindow) {
  auto o = Options(16, 60 * 1000 * kMs);
  o.preferred_batch_sizes = {2, 3};
  auto b = Make(o);
  CHECK(SubmitRows(*b, 1, 1).ok());
  CHECK(SubmitRows(*b, 2, 2).ok());
  Batch batch;
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 3u);
  b->Complete(batch.buffer, batch.rows, 1);
}

TEST(QueueFullIsResourceExhausted) {
  auto b = Make(Options(8, 0, /*queue=*/2));
  CHECK(SubmitRows(*b, 1, 1).ok());
  CHECK(SubmitRows(*b, 2, 1).ok());
  Status s = SubmitRows(*b, 3, 1);
  CHECK(s.code() == StatusCode::kResourceExhausted);
  CHECK_CONTAINS(s.message(), "max_queue_size 2");
  CHECK_EQ(b->Stats().rejected_queue_full, uint64_t{1});
}

TEST(ExpiredRequestsAreDroppedNotExecuted) {
  auto b = Make(Options(8, 60 * 1000 * kMs));
  const int64_t soon = Batcher::NowNs() + 5 * kMs;
  CHECK(SubmitRows(*b, 1, 1, soon).ok());
  CHECK(SubmitRows(*b, 2, 1).ok());
  Batch batch;
  // The deadline (not the minute-long window) wakes the dispatcher; request 1
  // is reported dropped, request 2 keeps waiting for its window.
  CHECK(b->NextBatch(2000 * kMs, &batch).ok());
  CHECK_EQ(batch.rows, 0u);
  CHECK_EQ(batch.dropped.size(), size_t{1});
  CHECK_EQ(batch.dropped[0].token, uint64_t{1});
  CHECK(batch.dropped[0].code == StatusCode::kDeadlineExceeded);
  CHECK_EQ(b->Stats().expired, uint64_t{1});
  CHECK_EQ(b->Stats().queued_requests, 1u);
}

TEST(PastDeadlineRefusedAtSubmit) {
  auto b = Make(Options(8));
  Status s = SubmitRows(*b, 1, 1, Batcher::NowNs() - 1);
  CHECK(s.code() == StatusCode::kDeadlineExceeded);
}

TEST(SlackClosesBatchEarly) {
  auto b = Make(Options(8, 60 * 1000 * kMs));  // a minute-long window
  b->latency_model().Record(1, 1000 * kMs);    // a batch of 1 takes 1 s
  const int64_t deadline = Batcher::NowNs() + 2000 * kMs;
  CHECK(SubmitRows(*b, 1, 1, deadline).ok());
  Batch batch;
  CHECK(b->NextBatch(10000 * kMs, &batch).ok());
  CHECK_EQ(batch.rows, 1u);
  // Closed when the slack ran out (deadline - 1 s), long before the window and the deadline.
  CHECK(batch.formed_ns >= deadline - 1000 * kMs);
  CHECK(batch.formed_ns < deadline);
  b->Complete(batch.buffer, batch.rows, 1);
}

TEST(CancelledRequestsNeverExecute) {
  auto b = Make(Options(8));
  uint64_t h1 = 0, h2 = 0;
  CHECK(SubmitRows(*b, 1, 1, 0, 0, &h1).ok());
  CHECK(SubmitRows(*b, 2, 1, 0, 0, &h2).ok());
  CHECK(b->Cancel(h1));
  CHECK(!b->Cancel(h1));  // second cancel: no longer queued
  Batch batch;
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 1u);
  CHECK_EQ(batch.items[0].token, uint64_t{2});
  CHECK(!b->Cancel(h2));  // already taken into a batch
  b->Complete(batch.buffer, batch.rows, 1);
  // The freed slot's old handle must not cancel its next occupant.
  uint64_t h3 = 0;
  CHECK(SubmitRows(*b, 3, 1, 0, 0, &h3).ok());
  CHECK(!b->Cancel(h1));
  CHECK(b->Cancel(h3));
}

TEST(HigherPriorityLevelGoesFirst) {
  auto o = Options(2);
  o.priority_levels = 3;
  auto b = Make(o);
  CHECK(SubmitRows(*b, 1, 1, 0, 2).ok());
  CHECK(SubmitRows(*b, 2, 1, 0, 1).ok());
  CHECK(SubmitRows(*b, 3, 1, 0, 0).ok());
  Batch batch;
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.items[0].token, uint64_t{3});
  CHECK_EQ(batch.items[1].token, uint64_t{2});
  b->Complete(batch.buffer, batch.rows, 1);
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.items[0].token, uint64_t{1});
  b->Complete(batch.buffer, batch.rows, 1);
}

TEST(StopDrainsThenReportsStopped) {
  auto b = Make(Options(2, 60 * 1000 * kMs));
  for (uint64_t t = 1; t <= 3; ++t) CHECK(SubmitRows(*b, t, 1).ok());
  b->Stop();
  CHECK(SubmitRows(*b, 9, 1).code() == StatusCode::kUnavailable);
  Batch batch;
  uint32_t drained = 0;
  for (;;) {
    CHECK(b->NextBatch(-1, &batch).ok());
    if (batch.stopped) break;
    drained += batch.rows;
    CheckBatchRows(*b, batch);
    b->Complete(batch.buffer, batch.rows, 1);
  }
  CHECK_EQ(drained, 3u);
}

TEST(StopWakesAnIdleDispatcher) {
  auto b = Make(Options(2));
  std::atomic<bool> stopped{false};
  std::thread executor([&] {
    Batch batch;
    CHECK(b->NextBatch(-1, &batch).ok());
    stopped = batch.stopped;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  b->Stop();
  executor.join();
  CHECK(stopped.load());
}

// Many producers, several executors: every accepted row comes back exactly once,
// in its own request's slot, and batching happened.
TEST(ConcurrentProducersAndExecutors) {
  constexpr int kProducers = 8, kPerProducer = 500, kExecutors = 3;
  auto o = Options(16, 0, 4096);
  o.executors = kExecutors;
  auto b = Make(o);
  std::atomic<uint64_t> seen_rows{0}, batches{0};
  std::vector<std::atomic<int>> seen(kProducers * kPerProducer + 1);
  std::vector<std::thread> executors;
  for (int e = 0; e < kExecutors; ++e) {
    executors.emplace_back([&] {
      Batch batch;
      for (;;) {
        CHECK(b->NextBatch(-1, &batch).ok());
        if (batch.stopped) return;
        if (batch.rows == 0) continue;
        CheckBatchRows(*b, batch);
        for (const auto& item : batch.items) seen[item.token].fetch_add(1);
        seen_rows += batch.rows;
        ++batches;
        b->Complete(batch.buffer, batch.rows, 1000);
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        const uint64_t token = static_cast<uint64_t>(p * kPerProducer + i + 1);
        Status s;
        do {
          s = SubmitRows(*b, token, 1 + token % 3);
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
  for (uint64_t t = 1; t <= kProducers * kPerProducer; ++t) {
    CHECK_EQ(seen[t].load(), 1);
    expected_rows += 1 + t % 3;
  }
  CHECK_EQ(seen_rows.load(), expected_rows);
  CHECK(batches.load() <= uint64_t{kProducers * kPerProducer});
  CHECK_EQ(b->Stats().submitted, uint64_t{kProducers * kPerProducer});
}

TEST(AdmissionRefusesWhatWouldBeLate) {
  auto o = Options(4);
  o.admission_control = true;
  auto b = Make(o);
  b->latency_model().Record(4, 10 * kMs);  // a full batch of 4 takes 10 ms
  b->latency_model().Record(1, 4 * kMs);
  const int64_t now = Batcher::NowNs();
  // 8 rows queued ahead = two full batches (20 ms) before ours.
  for (uint64_t t = 1; t <= 8; ++t) CHECK(SubmitRows(*b, t, 1, now + 10000 * kMs).ok());
  Status late = SubmitRows(*b, 9, 1, Batcher::NowNs() + 15 * kMs);
  CHECK(late.code() == StatusCode::kDeadlineExceeded);
  CHECK_CONTAINS(late.message(), "estimated completion in");
  CHECK_CONTAINS(late.message(), "8 rows queued ahead");
  CHECK_EQ(b->Stats().rejected_admission, uint64_t{1});
  CHECK(SubmitRows(*b, 10, 1, Batcher::NowNs() + 200 * kMs).ok());  // a loose deadline fits
  const int64_t estimate = b->EstimateCompletionNs(1, 0) - Batcher::NowNs();
  // 8 + 1 queued + 1 = 10 rows: two full batches (20 ms) + a batch of 2 (interpolated 6 ms).
  CHECK(estimate > 16 * kMs && estimate <= 26 * kMs);  // 26 ms, less any time spent since
}

TEST(HigherLevelEvictsLowerWhenFull) {
  auto o = Options(8, 60 * 1000 * kMs, /*queue=*/2);
  o.priority_levels = 2;
  auto b = Make(o);
  CHECK(SubmitRows(*b, 1, 1, 0, /*priority=*/1).ok());
  CHECK(SubmitRows(*b, 2, 1, 0, 1).ok());
  CHECK(SubmitRows(*b, 3, 1, 0, 1).code() == StatusCode::kResourceExhausted);  // same level: refused
  std::vector<float> row(kFeatures, 4.f);
  const uint8_t* ptr = reinterpret_cast<const uint8_t*>(row.data());
  SubmitResult r;
  CHECK(b->Submit(4, &ptr, 1, 1, 0, /*priority=*/0, &r).ok());
  CHECK(r.evicted);
  CHECK_EQ(r.evicted_token, uint64_t{2});  // the newest of the lower level
  CHECK_EQ(b->Stats().evicted, uint64_t{1});
  CHECK_EQ(b->Stats().queued_requests, 2u);
}

TEST(SloCapsBatchSize) {
  auto o = Options(16);
  o.slo_latency_ns = 10 * kMs;
  auto b = Make(o);
  b->latency_model().Record(4, 8 * kMs);
  b->latency_model().Record(8, 16 * kMs);
  b->RefreshCap();
  CHECK_EQ(b->BatchCap(), 5u);  // 5 rows: interpolated 10 ms, the largest that fits
  for (uint64_t t = 1; t <= 12; ++t) CHECK(SubmitRows(*b, t, 1).ok());
  Batch batch;
  CHECK(b->NextBatch(-1, &batch).ok());
  CHECK_EQ(batch.rows, 5u);
  b->Complete(batch.buffer, batch.rows, 10 * kMs);
}

TEST_MAIN()
