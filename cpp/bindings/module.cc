// steadyserve._core: the one pybind11 module over the native core.
//
// Rules kept here: every call that may block or copy request data releases the
// GIL; core Status codes become steadyserve.errors exceptions in one place
// (RaiseIfError); the core never calls back into Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "steadyserve/batcher.h"
#include "steadyserve/feature_transform.h"

namespace py = pybind11;
using namespace steadyserve;

namespace {

const char* ExceptionName(StatusCode code) {
  switch (code) {
    case StatusCode::kInvalidArgument:
      return "InvalidArgumentError";
    case StatusCode::kNotFound:
      return "NotFoundError";
    case StatusCode::kResourceExhausted:
      return "ResourceExhaustedError";
    case StatusCode::kDeadlineExceeded:
      return "DeadlineExceededError";
    case StatusCode::kUnavailable:
      return "UnavailableError";
    case StatusCode::kCancelled:
      return "CancelledError";
    default:
      return "InternalError";
  }
}

// Call with the GIL held.
void RaiseIfError(const Status& status) {
  if (status.ok()) return;
  py::object errors = py::module_::import("steadyserve.errors");
  py::object cls = errors.attr(ExceptionName(status.code()));
  PyErr_SetString(cls.ptr(), status.message().c_str());
  throw py::error_already_set();
}

// Calls that only take a core mutex briefly keep the GIL for small requests:
// releasing and re-taking it costs more than the copy, and hands the GIL to
// another thread (an executor) that the caller then has to wait for. Calls that
// can wait (next_batch) always release it; so do calls over large data.
constexpr uint64_t kReleaseGilBytes = 64 * 1024;

class MaybeReleaseGil {
 public:
  explicit MaybeReleaseGil(bool release) {
    if (release) release_.emplace();
  }

 private:
  std::optional<py::gil_scoped_release> release_;
};

int64_t TimeoutNs(py::object timeout_s) {
  if (timeout_s.is_none()) return -1;
  const double s = timeout_s.cast<double>();
  if (!(s >= 0) || !std::isfinite(s)) throw py::value_error("timeout must be a finite number >= 0 or None");
  return static_cast<int64_t>(s * 1e9);
}

// The Python face of a Batcher, plus one reusable Batch per executor slot is
// unnecessary: next_batch builds the Python result from a stack Batch.
class PyBatcher {
 public:
  explicit PyBatcher(const BatcherOptions& options) { RaiseIfError(Batcher::Create(options, &batcher_)); }

  py::tuple Submit(uint64_t token, const py::sequence& arrays, uint32_t rows, int64_t deadline_ns,
                   uint32_t priority) {
    const auto& inputs = batcher_->options().inputs;
    const size_t n = py::len(arrays);
    if (n != inputs.size()) {
      RaiseIfError(Status(StatusCode::kInvalidArgument, "model '" + batcher_->options().model +
                                                            "': expected " + std::to_string(inputs.size()) +
                                                            " inputs, got " + std::to_string(n)));
    }
    // Pointers stay valid while `arrays` (held by the caller) is alive; the core
    // copies them before Submit returns.
    const uint8_t* ptrs[64];
    if (n > 64) RaiseIfError(Status(StatusCode::kInvalidArgument, "more than 64 inputs"));
    uint64_t total_bytes = 0;
    std::vector<py::buffer_info> infos;
    infos.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      infos.push_back(py::reinterpret_borrow<py::buffer>(arrays[i]).request());
      const py::buffer_info& info = infos.back();
      const uint64_t need = static_cast<uint64_t>(rows) * inputs[i].row_bytes;
      const uint64_t have = static_cast<uint64_t>(info.size) * static_cast<uint64_t>(info.itemsize);
      bool contiguous = true;
      py::ssize_t expect = info.itemsize;
      for (py::ssize_t d = info.ndim; d-- > 0;) {
        if (info.shape[d] != 1 && info.strides[d] != expect) contiguous = false;
        expect *= info.shape[d];
      }
      if (!contiguous || have != need) {
        RaiseIfError(Status(StatusCode::kInvalidArgument,
                            "input '" + inputs[i].name + "': expected " + std::to_string(need) +
                                " contiguous bytes for " + std::to_string(rows) + " rows, got " +
                                std::to_string(have) + (contiguous ? "" : " (not contiguous)")));
      }
      ptrs[i] = static_cast<const uint8_t*>(info.ptr);
      total_bytes += need;
    }
    SubmitResult result;
    Status status;
    {
      MaybeReleaseGil release(total_bytes >= kReleaseGilBytes);
      status = batcher_->Submit(token, ptrs, n, rows, deadline_ns, priority, &result);
    }
    RaiseIfError(status);
    // (handle, evicted token or 0): tokens start at 1, so 0 means none was evicted.
    return py::make_tuple(result.handle, result.evicted ? result.evicted_token : 0);
  }

  bool Cancel(uint64_t handle) { return batcher_->Cancel(handle); }

  // Returns None on timeout with nothing to report, else a tuple
  // (buffer, rows, tokens, offsets, counts, enqueue_ns, inputs, dropped_tokens, dropped_codes, stopped).
  // `inputs` are uint8 views of the batch buffer, valid until complete(buffer, ...).
  py::object NextBatch(py::object self, py::object timeout_s) {
    const int64_t timeout_ns = TimeoutNs(timeout_s);
    Batch batch;
    Status status;
    {
      py::gil_scoped_release release;
      status = batcher_->NextBatch(timeout_ns, &batch);
    }
    RaiseIfError(status);
    if (batch.rows == 0 && batch.dropped.empty() && !batch.stopped) return py::none();

    const size_t n_items = batch.items.size();
    py::array_t<uint64_t> tokens(n_items);
    py::array_t<uint32_t> offsets(n_items), counts(n_items);
    py::array_t<int64_t> enqueue(n_items);
    auto t = tokens.mutable_unchecked<1>();
    auto o = offsets.mutable_unchecked<1>();
    auto c = counts.mutable_unchecked<1>();
    auto e = enqueue.mutable_unchecked<1>();
    for (size_t k = 0; k < n_items; ++k) {
      t(k) = batch.items[k].token;
      o(k) = batch.items[k].offset;
      c(k) = batch.items[k].rows;
      e(k) = batch.items[k].enqueue_ns;
    }
    py::list inputs;
    if (batch.rows > 0) {
      const auto& layout = batcher_->options().inputs;
      for (size_t i = 0; i < layout.size(); ++i) {
        const py::ssize_t bytes = static_cast<py::ssize_t>(batch.rows * layout[i].row_bytes);
        inputs.append(py::array(py::dtype("uint8"), {bytes}, {py::ssize_t{1}},
                                batcher_->BufferData(batch.buffer, i), self));
      }
    }
    const size_t n_dropped = batch.dropped.size();
    py::array_t<uint64_t> dropped_tokens(n_dropped);
    py::array_t<int32_t> dropped_codes(n_dropped);
    auto dt = dropped_tokens.mutable_unchecked<1>();
    auto dc = dropped_codes.mutable_unchecked<1>();
    for (size_t k = 0; k < n_dropped; ++k) {
      dt(k) = batch.dropped[k].token;
      dc(k) = static_cast<int32_t>(batch.dropped[k].code);
    }
    return py::make_tuple(batch.buffer, batch.rows, tokens, offsets, counts, enqueue, inputs, dropped_tokens,
                          dropped_codes, batch.stopped);
  }

  void Complete(uint32_t buffer, uint32_t rows, int64_t exec_ns) {
    batcher_->Complete(buffer, rows, exec_ns);
  }

  void Stop() { batcher_->Stop(); }

  py::dict Stats() const {
    const BatcherStats s = batcher_->Stats();
    py::dict d;
    d["submitted"] = s.submitted;
    d["rejected_queue_full"] = s.rejected_queue_full;
    d["rejected_deadline"] = s.rejected_deadline;
    d["rejected_stopped"] = s.rejected_stopped;
    d["rejected_admission"] = s.rejected_admission;
    d["evicted"] = s.evicted;
    d["expired"] = s.expired;
    d["cancelled"] = s.cancelled;
    d["batches"] = s.batches;
    d["rows_executed"] = s.rows_executed;
    d["queued_requests"] = s.queued_requests;
    d["queued_rows"] = s.queued_rows;
    return d;
  }

  uint32_t QueuedRequests() const { return batcher_->Stats().queued_requests; }
  int64_t EstimateNs(uint32_t rows) const { return batcher_->latency_model().EstimateNs(rows); }
  void RecordLatency(uint32_t rows, int64_t ns) {
    batcher_->latency_model().Record(rows, ns);
    batcher_->RefreshCap();
  }
  int64_t EstimateCompletionNs(uint32_t rows, uint32_t priority) const {
    return batcher_->EstimateCompletionNs(rows, priority);
  }
  uint32_t BatchCap() const { return batcher_->BatchCap(); }
  const BatcherOptions& options() const { return batcher_->options(); }

 private:
  std::unique_ptr<Batcher> batcher_;
};

// A C-contiguous float32 matrix [rows, n_features] (or a 1-D row), checked with the GIL held.
py::array_t<float, py::array::c_style> FeatureMatrix(const py::array& a, uint32_t n_features,
                                                     const char* what) {
  if (!py::isinstance<py::array_t<float>>(a) || !(a.flags() & py::array::c_style))
    throw py::type_error(std::string(what) + " must be a C-contiguous float32 array");
  auto m = py::array_t<float, py::array::c_style>::ensure(a);
  const py::ssize_t last = m.ndim() == 0 ? 0 : m.shape(m.ndim() - 1);
  if (m.ndim() < 1 || m.ndim() > 2 || last != static_cast<py::ssize_t>(n_features))
    throw py::value_error(std::string(what) + " must have shape [rows, " + std::to_string(n_features) + "]");
  return m;
}

std::shared_ptr<FeatureTransform> MakeTransform(
    const std::string& model, const std::string& input, const std::vector<std::string>& names,
    const std::vector<float>& lo, const std::vector<float>& hi, const std::vector<uint8_t>& range_policy,
    const std::vector<uint8_t>& missing_policy, const std::vector<float>& impute,
    const std::vector<float>& offset, const std::vector<float>& scale, uint32_t bins,
    const std::vector<float>& edges, uint32_t sub_windows, uint64_t sub_window_rows, double sub_window_s) {
  FeatureTransformOptions o;
  o.model = model;
  o.input = input;
  o.n_features = static_cast<uint32_t>(offset.size());
  o.names = names;
  o.lo = lo;
  o.hi = hi;
  o.range_policy = range_policy;
  o.missing_policy = missing_policy;
  o.impute = impute;
  o.offset = offset;
  o.scale = scale;
  o.bins = bins;
  o.edges = edges;
  o.sub_windows = sub_windows;
  o.sub_window_rows = sub_window_rows;
  o.sub_window_ns = static_cast<int64_t>(sub_window_s * 1e9);
  std::unique_ptr<FeatureTransform> t;
  RaiseIfError(FeatureTransform::Create(o, &t));
  return std::shared_ptr<FeatureTransform>(std::move(t));
}

py::dict SnapshotDict(FeatureTransform& t) {
  DriftSnapshot s = t.Snapshot();
  const auto& o = t.options();
  const py::ssize_t n = o.n_features, bins = std::max<uint32_t>(o.bins, 1);
  py::array_t<uint64_t> counts({n, bins});
  std::copy(s.counts.begin(), s.counts.end(), counts.mutable_data());
  py::array_t<uint64_t> missing(n), out_of_range(n);
  std::copy(s.missing.begin(), s.missing.end(), missing.mutable_data());
  std::copy(s.out_of_range.begin(), s.out_of_range.end(), out_of_range.mutable_data());
  py::dict d;
  d["rows"] = s.rows;
  d["counts"] = counts;
  d["missing"] = missing;
  d["out_of_range"] = out_of_range;
  return d;
}

using InputSpec = std::tuple<std::string, uint64_t, std::shared_ptr<FeatureTransform>>;

BatcherOptions MakeOptions(const std::string& model, const std::vector<InputSpec>& inputs,
                           uint32_t max_batch_size, const std::vector<uint32_t>& preferred,
                           int64_t max_queue_delay_us, uint32_t max_queue_size, uint32_t priority_levels,
                           uint32_t executors, int64_t slack_margin_us, int64_t slo_latency_us,
                           bool admission_control, const std::vector<uint32_t>& level_max_queue) {
  BatcherOptions o;
  o.model = model;
  for (const auto& [name, bytes, transform] : inputs) o.inputs.push_back({name, bytes, transform});
  o.max_batch_size = max_batch_size;
  o.preferred_batch_sizes = preferred;
  o.max_queue_delay_ns = max_queue_delay_us * 1000;
  o.max_queue_size = max_queue_size;
  o.priority_levels = priority_levels;
  o.executors = executors;
  o.slack_margin_ns = slack_margin_us * 1000;
  o.slo_latency_ns = slo_latency_us * 1000;
  o.admission_control = admission_control;
  o.level_max_queue = level_max_queue;
  return o;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "steadyserve native core: dynamic batcher and latency model";
  m.def("now_ns", &Batcher::NowNs, "The core's monotonic clock (same as time.monotonic_ns()).");

  py::class_<FeatureTransform, std::shared_ptr<FeatureTransform>>(m, "FeatureTransform")
      .def(py::init(&MakeTransform), py::arg("model"), py::arg("input"), py::arg("names"), py::arg("lo"),
           py::arg("hi"), py::arg("range_policy"), py::arg("missing_policy"), py::arg("impute"),
           py::arg("offset"), py::arg("scale"), py::arg("bins") = 0, py::arg("edges") = std::vector<float>{},
           py::arg("sub_windows") = 10, py::arg("sub_window_rows") = 1000, py::arg("sub_window_s") = 0.0,
           "Per-feature policies: range_policy 0 none / 1 reject / 2 clip; missing_policy 0 reject / 1 "
           "impute.")
      .def(
          "apply",
          [](FeatureTransform& t, const py::array& x) {
            auto in = FeatureMatrix(x, t.options().n_features, "x");
            py::array_t<float, py::array::c_style> out(
                std::vector<py::ssize_t>(in.shape(), in.shape() + in.ndim()));
            const uint64_t rows = in.ndim() == 1 ? 1 : static_cast<uint64_t>(in.shape(0));
            Status s;
            {
              MaybeReleaseGil release(rows * t.options().n_features * sizeof(float) >= kReleaseGilBytes);
              s = t.Apply(in.data(), out.mutable_data(), rows);
            }
            RaiseIfError(s);
            return out;
          },
          py::arg("x"), "Validate, impute, scale and count x; returns the model-ready rows.")
      .def(
          "observe",
          [](FeatureTransform& t, const py::array& x) {
            auto in = FeatureMatrix(x, t.options().n_features, "values");
            const uint64_t rows = in.ndim() == 1 ? 1 : static_cast<uint64_t>(in.shape(0));
            MaybeReleaseGil release(rows * t.options().n_features * sizeof(float) >= kReleaseGilBytes);
            t.Observe(in.data(), rows);
          },
          py::arg("values"), "Count values (e.g. model outputs) into the drift window, no policies.")
      .def("snapshot", &SnapshotDict, "Window totals: rows, counts [features, bins], missing, out_of_range.")
      .def("reset", &FeatureTransform::Reset, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("n_features", [](const FeatureTransform& t) { return t.options().n_features; })
      .def_property_readonly("bins", [](const FeatureTransform& t) { return t.options().bins; });

  py::class_<PyBatcher>(m, "Batcher")
      .def(py::init([](const std::string& model, const std::vector<InputSpec>& inputs,
                       uint32_t max_batch_size, const std::vector<uint32_t>& preferred_batch_sizes,
                       int64_t max_queue_delay_us, uint32_t max_queue_size, uint32_t priority_levels,
                       uint32_t executors, int64_t slack_margin_us, int64_t slo_latency_us,
                       bool admission_control, const std::vector<uint32_t>& level_max_queue) {
             return new PyBatcher(MakeOptions(model, inputs, max_batch_size, preferred_batch_sizes,
                                              max_queue_delay_us, max_queue_size, priority_levels, executors,
                                              slack_margin_us, slo_latency_us, admission_control,
                                              level_max_queue));
           }),
           py::arg("model"), py::arg("inputs"), py::arg("max_batch_size"),
           py::arg("preferred_batch_sizes") = std::vector<uint32_t>{}, py::arg("max_queue_delay_us") = 0,
           py::arg("max_queue_size") = 1024, py::arg("priority_levels") = 1, py::arg("executors") = 1,
           py::arg("slack_margin_us") = 0, py::arg("slo_latency_us") = 0,
           py::arg("admission_control") = false, py::arg("level_max_queue") = std::vector<uint32_t>{})
      .def("submit", &PyBatcher::Submit, py::arg("token"), py::arg("arrays"), py::arg("rows"),
           py::arg("deadline_ns") = 0, py::arg("priority") = 0,
           "Queue a request; returns (handle for cancel(), evicted token or 0). Raises steadyserve.errors on "
           "refusal.")
      .def("cancel", &PyBatcher::Cancel, py::arg("handle"))
      .def(
          "next_batch",
          [](py::object self, py::object timeout) {
            return self.cast<PyBatcher&>().NextBatch(self, timeout);
          },
          py::arg("timeout") = py::none())
      .def("complete", &PyBatcher::Complete, py::arg("buffer"), py::arg("rows"), py::arg("exec_ns"))
      .def("stop", &PyBatcher::Stop, py::call_guard<py::gil_scoped_release>())
      .def("stats", &PyBatcher::Stats)
      .def_property_readonly("queued_requests", &PyBatcher::QueuedRequests)
      .def("estimate_ns", &PyBatcher::EstimateNs, py::arg("rows"))
      .def("record_latency", &PyBatcher::RecordLatency, py::arg("rows"), py::arg("exec_ns"))
      .def("estimate_completion_ns", &PyBatcher::EstimateCompletionNs, py::arg("rows"),
           py::arg("priority") = 0,
           "Absolute monotonic ns when a request submitted now would finish; 0 without measurements.")
      .def_property_readonly("batch_cap", &PyBatcher::BatchCap)
      .def_property_readonly("max_batch_size", [](const PyBatcher& b) { return b.options().max_batch_size; });
}
