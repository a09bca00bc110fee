// steadyserve._core: the one pybind11 module over the native core.
//
// Rules kept here: every call that may block, copy request data or answer a
// batch releases the GIL; core Status codes become steadyserve.errors
// exceptions in one place (the classes are handed over once by
// steadyserve._native); the core never calls back into Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "steadyserve/completion_queue.h"
#include "steadyserve/feature_transform.h"
#include "steadyserve/inference_core.h"
#include "steadyserve/model_core.h"

namespace py = pybind11;
using namespace steadyserve;

void BindWire(py::module_& m);
void BindFrontend(py::module_& m, InferenceCore* (*core_of)(py::handle), void (*raise)(const Status&));

namespace {

// Set once by steadyserve._native: {status code: exception class} and the InferResult class.
py::dict& ErrorClasses() {
  static py::dict* classes = new py::dict();  // leaked on purpose: lives as long as the interpreter
  return *classes;
}
py::object& ResultFactory() {
  static py::object* factory = new py::object();
  return *factory;
}
py::object& SerializeBytes() {  // steadyserve.datatypes.serialize_bytes(array, name)
  static py::object* serialize = new py::object();
  return *serialize;
}

py::object ErrorOf(StatusCode code, const std::string& message) {
  py::dict& classes = ErrorClasses();
  py::int_ key(static_cast<int>(code));
  py::object cls = classes.contains(key) ? classes[key] : classes[py::int_(13)];
  return cls(message);
}

// Call with the GIL held.
[[noreturn]] void Raise(StatusCode code, const std::string& message) {
  py::object error = ErrorOf(code, message);
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(error.ptr())), error.ptr());
  throw py::error_already_set();
}

void RaiseIfError(const Status& status) {
  if (!status.ok()) Raise(status.code(), status.message());
}

// Small calls keep the GIL: releasing and re-taking it costs more than the work
// and hands it to another thread the caller then waits for.
constexpr uint64_t kReleaseGilBytes = 64 * 1024;

class MaybeReleaseGil {
 public:
  explicit MaybeReleaseGil(bool release) {
    if (release) release_.emplace();
  }

 private:
  std::optional<py::gil_scoped_release> release_;
};

int64_t TimeoutNs(const py::object& timeout_s) {
  if (timeout_s.is_none()) return -1;
  const double s = timeout_s.cast<double>();
  if (!(s >= 0) || !std::isfinite(s)) throw py::value_error("timeout must be a finite number >= 0 or None");
  return static_cast<int64_t>(s * 1e9);
}

// numpy dtype <-> DataType.
DataType TypeOfArray(const py::array& a) {
  const py::dtype dt = a.dtype();
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'b') return DataType::kBool;
  if (kind == 'u') return size == 1 ? DataType::kUint8 : size == 2 ? DataType::kUint16 : size == 4 ? DataType::kUint32 : DataType::kUint64;
  if (kind == 'i') return size == 1 ? DataType::kInt8 : size == 2 ? DataType::kInt16 : size == 4 ? DataType::kInt32 : DataType::kInt64;
  if (kind == 'f') return size == 2 ? DataType::kFp16 : size == 4 ? DataType::kFp32 : size == 8 ? DataType::kFp64 : DataType::kInvalid;
  return DataType::kInvalid;
}

const char* NumpyName(DataType t) {
  switch (t) {
    case DataType::kBool: return "bool";
    case DataType::kUint8: return "<u1";
    case DataType::kUint16: return "<u2";
    case DataType::kUint32: return "<u4";
    case DataType::kUint64: return "<u8";
    case DataType::kInt8: return "<i1";
    case DataType::kInt16: return "<i2";
    case DataType::kInt32: return "<i4";
    case DataType::kInt64: return "<i8";
    case DataType::kFp16: return "<f2";
    case DataType::kFp32: return "<f4";
    case DataType::kFp64: return "<f8";
    default: return "u1";  // BYTES: the serialized bytes
  }
}

// numpy dtype objects, made once (parsing a dtype string per answer costs more than the copy).
const py::dtype& DtypeOf(DataType t) {
  static std::vector<py::dtype>* cache = [] {
    auto* c = new std::vector<py::dtype>();  // leaked on purpose: lives as long as the interpreter
    for (int i = 0; i <= static_cast<int>(DataType::kBytes); ++i)
      c->push_back(py::dtype(NumpyName(static_cast<DataType>(i))));
    return c;
  }();
  return (*cache)[static_cast<size_t>(t)];
}

// Triton's BYTES serialization -> numpy object array of bytes with `shape`.
py::array BytesArray(const uint8_t* data, size_t size, const std::vector<int64_t>& shape) {
  py::list items;
  size_t at = 0;
  while (at + 4 <= size) {
    uint32_t len;
    std::memcpy(&len, data + at, 4);
    at += 4;
    items.append(py::bytes(reinterpret_cast<const char*>(data + at), std::min<size_t>(len, size - at)));
    at += len;
  }
  py::array flat = py::module_::import("numpy").attr("array")(items, py::dtype("O"));
  return flat.attr("reshape")(py::cast(shape));
}

// An answered request as the Python caller sees it: an InferResult, bytes (wire), or an exception
// instance; `failed` tells which. Reads the request; the caller releases it afterwards.
py::object AnswerOf(Request* r, bool* failed) {
  *failed = r->code != StatusCode::kOk;
  if (*failed) return ErrorOf(r->code, r->message);
  if (r->wire) return py::bytes(r->response);
  py::dict outputs;
  for (size_t i = 0; i < r->n_outputs; ++i) {
    const OutputRows& o = r->outputs[i];
    const auto type = static_cast<DataType>(o.dtype);
    if (type == DataType::kBytes) {
      outputs[py::str(o.name)] = BytesArray(o.data.data(), o.data.size(), o.shape);
      continue;
    }
    py::array a(DtypeOf(type), o.shape);
    std::memcpy(a.mutable_data(), o.data.data(), o.data.size());
    outputs[py::str(o.name)] = a;
  }
  if (!r->failover)
    return ResultFactory()(outputs, r->answered_by, r->answered_version, py::none(), r->request_id);
  py::dict params;
  params["failover"] = true;
  if (r->default_output) params["default_output"] = true;
  else params["failover_from"] = r->model;
  params["failover_reason"] = r->failover_reasons;
  return ResultFactory()(outputs, r->answered_by, r->answered_version, params, r->request_id);
}

class PyCompletionQueue {
 public:
  int fd() const { return cq_.fd(); }
  CompletionQueue* get() { return &cq_; }
  // Every answer that arrived: a list of (tag, value, failed); each request is released.
  py::list Drain(InferenceCore* core) {
    cq_.Drain(&scratch_);
    py::list out;
    for (Request* r : scratch_) {
      bool failed;
      py::object value = AnswerOf(r, &failed);
      out.append(py::make_tuple(r->user_tag, value, failed));
      core->Release(r);
    }
    scratch_.clear();
    return out;
  }

 private:
  CompletionQueue cq_;
  std::vector<Request*> scratch_;
};

// A sync in-process request waiting for its answer. wait() reads and releases it.
class PyPending {
 public:
  PyPending(InferenceCore* core, Request* r) : core_(core), r_(r) {}
  PyPending(const PyPending&) = delete;
  PyPending& operator=(const PyPending&) = delete;
  // Never waited for: withdraw it; if it was answered first, drop our reference here.
  ~PyPending() {
    if (r_ != nullptr && !core_->Cancel(r_->Handle())) core_->Release(r_);
  }
  uint64_t handle() const { return r_ ? r_->Handle() : 0; }
  py::object Wait(const py::object& timeout_s) {
    if (r_ == nullptr) throw py::value_error("this request was already read");
    const int64_t timeout_ns = TimeoutNs(timeout_s);
    bool done;
    {
      py::gil_scoped_release release;
      done = r_->Wait(timeout_ns);
    }
    if (!done) return py::none();
    Request* r = r_;
    r_ = nullptr;
    bool failed;
    py::object value = AnswerOf(r, &failed);
    core_->Release(r);
    if (failed) {
      PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(value.ptr())), value.ptr());
      throw py::error_already_set();
    }
    return value;
  }

 private:
  InferenceCore* core_;
  Request* r_;
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


// The Python face of a ModelCore: the executor's per-batch calls and the figures.
struct BatchView {
  uint32_t buffer;
  uint32_t rows;
  uint32_t requests;
  uint32_t logged;  // requests drawn for the prediction log (PyModelCore::LoggedRows)
  py::list inputs;  // numpy views of the batch buffer, [rows, dims...] (BYTES: the serialized bytes)
};

// The prediction log's copy of a batch's logged requests, in batch order. Tensors hold
// the requests' rows one request after the other.
struct LoggedRows {
  py::list request_ids;  // str per request (made up for in-process callers that sent none)
  py::list asked;        // the model each request asked for
  py::array_t<int64_t> offsets, rows;  // first row in the batch, rows
  py::list inputs;  // per signature input: the raw rows as sent, [rows, dims...]
  py::list scaled;  // per signature input: the model-ready rows where a transform ran, else None
};

// An id for a logged request that brought none (in-process callers): unique in this
// process and, by a random prefix, across processes writing one log.
std::string MadeUpRequestId() {
  static const std::string prefix = [] {
    std::random_device rd;
    char buf[24];
    std::snprintf(buf, sizeof buf, "ss-%08x%08x-", rd(), rd());
    return std::string(buf);
  }();
  static std::atomic<uint64_t> serial{0};
  return prefix + std::to_string(serial.fetch_add(1, std::memory_order_relaxed) + 1);
}

std::vector<int64_t> Dims(const py::sequence& seq) {
  std::vector<int64_t> dims;
  for (auto d : seq) dims.push_back(d.cast<int64_t>());
  return dims;
}

TensorSignature TensorOf(const py::tuple& spec, bool with_transform) {
  TensorSignature t;
  t.name = spec[0].cast<std::string>();
  t.dtype = ParseDataType(spec[1].cast<std::string>());
  if (t.dtype == DataType::kInvalid) throw py::value_error("tensor '" + t.name + "': unknown datatype");
  t.dims = Dims(spec[2].cast<py::sequence>());
  if (with_transform && spec.size() > 3 && !spec[3].is_none())
    t.transform = spec[3].cast<std::shared_ptr<FeatureTransform>>();
  return t;
}

class PyModelCore {
 public:
  std::shared_ptr<ModelCore> model;
  std::vector<uint8_t> scratch_;  // Logged's joining buffer (executors of a model share the GIL)

  py::object NextBatch(py::object self, const py::object& timeout_s) {
    const int64_t timeout_ns = TimeoutNs(timeout_s);
    const Batch* batch = nullptr;
    bool stopped = false;
    Status s;
    {
      // A poll (timeout 0, inline execution) never waits: keep the GIL rather than hand it
      // to another thread and queue for it again, once per request on the event loop.
      MaybeReleaseGil release(timeout_ns != 0);
      s = model->NextBatch(timeout_ns, &batch, &stopped);
    }
    RaiseIfError(s);
    if (batch == nullptr) return stopped ? py::object(py::str("stopped")) : py::object(py::none());
    uint32_t logged = 0;
    for (const BatchItem& item : batch->items) logged += item.request->logged ? 1 : 0;
    BatchView view{batch->buffer, batch->rows, static_cast<uint32_t>(batch->items.size()), logged, py::list()};
    const auto& sig = model->signature();
    Batcher& b = model->batcher();
    for (size_t i = 0; i < sig.inputs().size(); ++i) {
      const auto& in = sig.inputs()[i];
      uint8_t* data = b.BufferData(batch->buffer, i);
      if (in.dtype == DataType::kBytes) {
        view.inputs.append(py::array(py::dtype("u1"), {static_cast<py::ssize_t>(b.BufferSize(batch->buffer, i))},
                                     {py::ssize_t{1}}, data, self));
        continue;
      }
      std::vector<py::ssize_t> shape;
      if (sig.batched()) shape.push_back(batch->rows);
      for (int64_t d : in.dims) shape.push_back(d);
      std::vector<py::ssize_t> strides(shape.size());
      py::ssize_t stride = static_cast<py::ssize_t>(ElementSize(in.dtype));
      for (size_t k = shape.size(); k-- > 0;) {
        strides[k] = stride;
        stride *= shape[k];
      }
      view.inputs.append(py::array(py::dtype(NumpyName(in.dtype)), shape, strides, data, self));
    }
    return py::cast(std::move(view));
  }

  // The logged requests of the batch in `buffer` (handed out by NextBatch, not yet
  // completed or failed): copies, since the requests are answered and recycled next.
  LoggedRows Logged(uint32_t buffer) {
    const Batch* batch = model->InflightBatch(buffer);
    if (batch == nullptr) throw py::value_error("buffer " + std::to_string(buffer) + " holds no batch");
    const auto& sig = model->signature();
    std::vector<const BatchItem*> items;
    int64_t total_rows = 0;
    for (const BatchItem& item : batch->items) {
      if (!item.request->logged) continue;
      items.push_back(&item);
      total_rows += item.rows;
    }
    LoggedRows out;
    out.offsets = py::array_t<int64_t>(static_cast<py::ssize_t>(items.size()));
    out.rows = py::array_t<int64_t>(static_cast<py::ssize_t>(items.size()));
    int64_t* offsets = out.offsets.mutable_data();
    int64_t* rows = out.rows.mutable_data();
    for (size_t k = 0; k < items.size(); ++k) {
      Request* r = items[k]->request;
      if (r->request_id.empty()) r->request_id = MadeUpRequestId();  // read by its answer, after this
      out.request_ids.append(py::str(r->request_id));
      out.asked.append(py::str(r->model));
      offsets[k] = items[k]->offset;
      rows[k] = items[k]->rows;
    }
    for (size_t i = 0; i < sig.inputs().size(); ++i) {
      const auto& in = sig.inputs()[i];
      std::vector<int64_t> shape{total_rows};
      bool fixed = true;
      for (int64_t d : in.dims) {
        fixed = fixed && d >= 0;
        shape.push_back(d);
      }
      // The raw rows: each request's decoded input, as sent.
      std::vector<uint8_t>& joined = scratch_;
      joined.clear();
      for (const BatchItem* item : items) {
        const auto& raw = item->request->inputs[i];
        joined.insert(joined.end(), raw.begin(), raw.end());
      }
      if (in.dtype == DataType::kBytes) {
        out.inputs.append(BytesArray(joined.data(), joined.size(), fixed ? shape : std::vector<int64_t>{-1}));
        out.scaled.append(py::none());
        continue;
      }
      const size_t element = ElementSize(in.dtype);
      if (!fixed) shape = {static_cast<int64_t>(joined.size() / element)};
      py::array raw(DtypeOf(in.dtype), shape);
      std::memcpy(raw.mutable_data(), joined.data(), std::min<size_t>(joined.size(), raw.nbytes()));
      out.inputs.append(raw);
      if (!in.transform) {
        out.scaled.append(py::none());
        continue;
      }
      py::array scaled(DtypeOf(in.dtype), shape);
      auto* dst = static_cast<uint8_t*>(scaled.mutable_data());
      size_t at = 0;
      for (const BatchItem* item : items) {
        const auto& rows_of = item->request->transformed[i];
        const size_t n = std::min<size_t>(rows_of.size(), static_cast<size_t>(scaled.nbytes()) - at);
        std::memcpy(dst + at, rows_of.data(), n);
        at += n;
      }
      out.scaled.append(scaled);
    }
    return out;
  }

  // outputs: one numpy array (or for BYTES, a (bytes, shape) pair) per signature output, in order.
  // A batch's outputs as the core reads them; `keep` holds the Python objects alive. Up to
  // kInline outputs live in fixed arrays: a batch's answer allocates nothing here.
  struct Prepared {
    static constexpr size_t kInline = 16;
    size_t n = 0;
    OutputTensor inline_outs[kInline];
    py::object inline_keep[kInline];
    int64_t inline_shapes[kInline][kMaxRank];
    std::vector<OutputTensor> heap_outs;
    std::vector<py::object> heap_keep;
    std::vector<std::vector<int64_t>> heap_shapes;
    uint64_t total = 0;
    OutputTensor* outs() { return n > kInline ? heap_outs.data() : inline_outs; }
  };
  static void Prepare(const py::list& outputs, Prepared* p) {
    p->n = outputs.size();
    OutputTensor* outs = p->inline_outs;
    py::object* keep = p->inline_keep;
    if (p->n > Prepared::kInline) {
      p->heap_outs.resize(p->n);
      p->heap_keep.resize(p->n);
      p->heap_shapes.resize(p->n);
      outs = p->heap_outs.data();
      keep = p->heap_keep.data();
    }
    for (size_t o = 0; o < p->n; ++o) {
      py::handle item = outputs[o];
      if (py::isinstance<py::tuple>(item)) {  // BYTES: (serialized bytes, shape)
        py::tuple pair = item.cast<py::tuple>();
        py::bytes data = pair[0].cast<py::bytes>();
        const std::vector<int64_t> dims = Dims(pair[1].cast<py::sequence>());
        const size_t rank = std::min(dims.size(), kMaxRank);
        int64_t* shape;
        if (p->n > Prepared::kInline) {
          p->heap_shapes[o].assign(dims.begin(), dims.begin() + rank);
          shape = p->heap_shapes[o].data();
        } else {
          shape = p->inline_shapes[o];
          std::copy(dims.begin(), dims.begin() + rank, shape);
        }
        char* ptr;
        py::ssize_t len;
        PyBytes_AsStringAndSize(data.ptr(), &ptr, &len);
        outs[o] = {DataType::kBytes, shape, rank, reinterpret_cast<uint8_t*>(ptr), static_cast<size_t>(len)};
        keep[o] = std::move(data);
        p->total += len;
        continue;
      }
      py::array a = py::array::ensure(item, py::array::c_style);
      if (!a) throw py::type_error("output " + std::to_string(o) + " is not an array");
      outs[o] = {TypeOfArray(a), reinterpret_cast<const int64_t*>(a.shape()), static_cast<size_t>(a.ndim()),
                 static_cast<const uint8_t*>(a.data()), static_cast<size_t>(a.nbytes())};
      p->total += a.nbytes();
      keep[o] = std::move(a);
    }
  }

  // outputs: one numpy array (or for BYTES, a (bytes, shape) pair) per signature output, in order;
  // t: the batch's input / run / output times and what the latency model learns.
  py::object Complete(uint32_t buffer, const py::list& outputs, const BatchTimings& t) {
    Prepared p;
    Prepare(outputs, &p);
    Status s;
    {
      MaybeReleaseGil release(p.total >= kReleaseGilBytes);
      s = model->CompleteBatch(buffer, p.outs(), p.n, t);
    }
    if (s.ok()) return py::none();
    if (s.code() == StatusCode::kInternal) return py::str(s.message());  // the batch failed over
    RaiseIfError(s);
    return py::none();
  }

  // None when the outputs may answer the batch, else (reason, message).
  py::object Check(uint32_t buffer, const py::list& outputs) {
    Prepared p;
    Prepare(outputs, &p);
    std::string reason, message;
    bool ok;
    {
      MaybeReleaseGil release(p.total >= kReleaseGilBytes);
      ok = model->CheckOutputs(buffer, p.outs(), p.n, &reason, &message);
    }
    if (ok) return py::none();
    return py::make_tuple(reason, message);
  }

  void Fail(uint32_t buffer, const std::string& reason, const std::string& message, const BatchTimings& t) {
    py::gil_scoped_release release;
    model->FailBatch(buffer, reason, message, t);
  }

  py::dict Statistics() const {
    const ModelStats& st = model->stats();
    auto duration = [](const DurationStat& d) {
      return py::make_tuple(d.count.load(std::memory_order_relaxed), d.ns.load(std::memory_order_relaxed));
    };
    py::dict d;
    d["inference_count"] = st.inference_count.load();
    d["execution_count"] = st.execution_count.load();
    d["last_inference_ms"] = st.last_inference_ms.load();
    d["success"] = duration(st.success);
    d["fail"] = duration(st.fail);
    d["queue"] = duration(st.queue);
    d["compute_input"] = duration(st.compute_input);
    d["compute_infer"] = duration(st.compute_infer);
    d["compute_output"] = duration(st.compute_output);
    d["slo_met"] = st.slo_met.load();
    d["slo_missed"] = st.slo_missed.load();
    py::dict outcomes;
    for (int c = 0; c < 17; ++c) {
      const uint64_t n = st.Outcome(static_cast<StatusCode>(c));
      if (n) outcomes[py::int_(c)] = n;
    }
    d["outcomes"] = outcomes;
    py::dict refusals;
    for (size_t k = 0; k < static_cast<size_t>(Refusal::kCount); ++k)
      refusals[RefusalName(static_cast<Refusal>(k))] = st.RefusalCount(static_cast<Refusal>(k));
    // A caller's cancel is counted where it happens: by the batcher that withdrew it.
    refusals[RefusalName(Refusal::kCancelled)] = model->batcher().Stats().cancelled;
    d["refusals"] = refusals;
    py::dict by_size;
    for (uint32_t rows = 1; rows <= st.max_batch_size(); ++rows) {
      const auto& b = st.batch_size_stat(rows);
      const uint64_t n = b.count.load(std::memory_order_relaxed);
      if (n)
        by_size[py::int_(rows)] = py::make_tuple(n, b.input_ns.load(), b.infer_ns.load(), b.output_ns.load());
    }
    d["batch_stats"] = by_size;
    return d;
  }

  py::dict Histograms() const {
    const ModelStats& st = model->stats();
    auto hist = [](const AtomicHistogram& h) {
      return py::make_tuple(h.bounds(), h.Counts(), h.Sum());
    };
    py::dict d;
    d["request"] = hist(st.request_latency);
    d["queue"] = hist(st.queue_latency);
    d["compute"] = hist(st.compute_latency);
    d["batch_size"] = hist(st.batch_size);
    return d;
  }

  py::dict BatcherStats() const {
    const auto s = model->batcher().Stats();
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
    d["executing"] = s.executing;
    return d;
  }
};

class PyInferenceCore {
 public:
  explicit PyInferenceCore(uint32_t max_requests) : core(std::make_unique<InferenceCore>(max_requests)) {}
  std::unique_ptr<InferenceCore> core;

  // Queued: the request's handle (int). Answered at once: (value, failed) as the queue would give it.
  py::object SubmitWire(const py::bytes& data, int64_t deadline_ns, PyCompletionQueue& cq, uint64_t tag,
                        const std::string& request_id, bool request_id_wins) {
    char* ptr;
    py::ssize_t len;
    PyBytes_AsStringAndSize(data.ptr(), &ptr, &len);
    bool queued = false;
    uint64_t handle = 0;
    Request* answer = nullptr;
    std::string model_name;
    Status s;
    {
      MaybeReleaseGil release(static_cast<uint64_t>(len) >= kReleaseGilBytes);
      s = core->SubmitWire(reinterpret_cast<const uint8_t*>(ptr), static_cast<size_t>(len), deadline_ns, cq.get(),
                           tag, &queued, &handle, &answer, &model_name, request_id, request_id_wins);
    }
    if (!s.ok()) return py::make_tuple(ErrorOf(s.code(), s.message()), true, model_name);
    if (queued) return py::int_(handle);
    bool failed;
    py::object value = AnswerOf(answer, &failed);
    core->Release(answer);
    return py::make_tuple(value, failed, model_name);
  }

  // In-process: inputs is a mapping name -> array. cq None: returns a Pending to wait on.
  py::object Submit(const std::string& model, const std::string& version, const py::object& inputs_obj,
                    const py::object& outputs, int64_t deadline_ns, int64_t priority, py::object cq, uint64_t tag,
                    const std::string& request_id) {
    if (priority < 0)
      Raise(StatusCode::kInvalidArgument,
            "priority must be >= 0 (1 is the highest level); got " + std::to_string(priority));
    if (!PyDict_Check(inputs_obj.ptr()))
      Raise(StatusCode::kInvalidArgument, "inputs must be a dict of input name to array");
    // Small fixed arrays: a request allocates nothing here beyond what numpy does.
    constexpr size_t kInline = 16;
    const size_t n = static_cast<size_t>(PyDict_Size(inputs_obj.ptr()));
    TensorRef refs_inline[kInline];
    py::object keep_inline[kInline];
    int64_t bytes_shapes[kInline][kMaxRank];
    std::vector<TensorRef> refs_heap;
    std::vector<py::object> keep_heap;
    std::vector<std::vector<int64_t>> shapes_heap;
    TensorRef* refs = refs_inline;
    py::object* keep = keep_inline;
    if (n > kInline) {
      refs_heap.resize(n);
      keep_heap.resize(n);
      shapes_heap.resize(n);
      refs = refs_heap.data();
      keep = keep_heap.data();
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    size_t k = 0;
    uint64_t total = 0;
    while (PyDict_Next(inputs_obj.ptr(), &pos, &key, &value)) {
      Py_ssize_t name_len;
      const char* name = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, &name_len) : nullptr;
      if (name == nullptr) {
        PyErr_Clear();
        Raise(StatusCode::kInvalidArgument, "input names must be strings");
      }
      const std::string_view name_view(name, static_cast<size_t>(name_len));
      py::array a = py::array::ensure(py::handle(value), py::array::c_style);
      if (!a) {
        PyErr_Clear();
        Raise(StatusCode::kInvalidArgument, "input '" + std::string(name_view) + "' is not an array");
      }
      const char kind = a.dtype().kind();
      if (kind == 'O' || kind == 'S' || kind == 'U') {  // strings: Triton's BYTES serialization
        py::bytes data = SerializeBytes()(a, py::str(name_view.data(), name_view.size()));
        char* ptr;
        py::ssize_t len;
        PyBytes_AsStringAndSize(data.ptr(), &ptr, &len);
        const size_t rank = std::min<size_t>(static_cast<size_t>(a.ndim()), kMaxRank);
        int64_t* shape;
        if (n > kInline) {
          shapes_heap[k].assign(a.shape(), a.shape() + rank);
          shape = shapes_heap[k].data();
        } else {
          shape = bytes_shapes[k];
          for (size_t d = 0; d < rank; ++d) shape[d] = a.shape()[d];
        }
        refs[k] = {name_view, DataType::kBytes, shape, rank, reinterpret_cast<const uint8_t*>(ptr),
                   static_cast<size_t>(len)};
        keep[k] = std::move(data);
        total += static_cast<uint64_t>(len);
        ++k;
        continue;
      }
      static_assert(sizeof(py::ssize_t) == sizeof(int64_t), "numpy shapes are read as int64");
      refs[k] = {name_view, TypeOfArray(a), reinterpret_cast<const int64_t*>(a.shape()),
                 static_cast<size_t>(a.ndim()), static_cast<const uint8_t*>(a.data()),
                 static_cast<size_t>(a.nbytes())};
      total += static_cast<uint64_t>(a.nbytes());
      keep[k] = std::move(a);
      ++k;
    }
    std::vector<std::string> out_names;
    std::vector<std::string_view> out_views;
    if (!outputs.is_none()) {
      for (auto o : outputs) out_names.push_back(py::str(o).cast<std::string>());
      for (const auto& o : out_names) out_views.push_back(o);
    }
    PyCompletionQueue* queue = cq.is_none() ? nullptr : &cq.cast<PyCompletionQueue&>();
    Request* r = nullptr;
    bool queued = false;
    Status s;
    {
      MaybeReleaseGil release(total >= kReleaseGilBytes);
      const auto level = static_cast<uint32_t>(std::min<int64_t>(priority, UINT32_MAX));
      s = core->SubmitTensors(model, version, refs, k, out_views.data(), out_views.size(), deadline_ns, level,
                              queue ? queue->get() : nullptr, tag, &queued, &r, request_id);
    }
    RaiseIfError(s);
    if (!queued) {
      // Answered at once (refused at the door, or the default output).
      bool failed;
      py::object value = AnswerOf(r, &failed);
      core->Release(r);
      if (failed) {
        PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(value.ptr())), value.ptr());
        throw py::error_already_set();
      }
      return py::make_tuple(value);
    }
    if (queue != nullptr) return py::int_(r->Handle());
    return py::cast(new PyPending(core.get(), r), py::return_value_policy::take_ownership);
  }
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "steadyserve native core: the request path (decode, route, batch, answer) and its figures";
  m.def("now_ns", &SteadyNowNs, "The core's monotonic clock (same as time.monotonic_ns()).");
  m.def(
      "set_python_types",
      [](py::dict error_classes, py::object result_factory, py::object serialize_bytes) {
        ErrorClasses().clear();
        for (auto item : error_classes) ErrorClasses()[item.first] = item.second;
        ResultFactory() = result_factory;
        SerializeBytes() = serialize_bytes;
      },
      "Called once by steadyserve._native: {status code: exception class}, InferResult, and the "
      "BYTES serializer for string arrays.");
  BindWire(m);

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

  py::class_<BatchTimings>(m, "BatchTimings")
      .def(py::init([](int64_t input_ns, int64_t infer_ns, int64_t output_ns, int64_t learn_ns, int64_t wall_ms) {
             return BatchTimings{input_ns, infer_ns, output_ns, learn_ns, wall_ms};
           }),
           py::arg("input_ns") = 0, py::arg("infer_ns") = 0, py::arg("output_ns") = 0, py::arg("learn_ns") = -1,
           py::arg("wall_ms") = 0);

  py::class_<BatchView>(m, "BatchView")
      .def_readonly("buffer", &BatchView::buffer)
      .def_readonly("rows", &BatchView::rows)
      .def_readonly("requests", &BatchView::requests)
      .def_readonly("logged", &BatchView::logged)
      .def_readonly("inputs", &BatchView::inputs);

  py::class_<LoggedRows>(m, "LoggedRows")
      .def_readonly("request_ids", &LoggedRows::request_ids)
      .def_readonly("asked", &LoggedRows::asked)
      .def_readonly("offsets", &LoggedRows::offsets)
      .def_readonly("rows", &LoggedRows::rows)
      .def_readonly("inputs", &LoggedRows::inputs)
      .def_readonly("scaled", &LoggedRows::scaled);

  py::class_<PyCompletionQueue>(m, "CompletionQueue")
      .def(py::init<>())
      .def_property_readonly("fd", &PyCompletionQueue::fd)
      .def(
          "drain", [](PyCompletionQueue& q, PyInferenceCore& core) { return q.Drain(core.core.get()); },
          py::arg("core"), "Every answer that arrived: a list of (tag, value, failed).");

  py::class_<PyPending>(m, "Pending")
      .def("wait", &PyPending::Wait, py::arg("timeout") = py::none(),
           "The answer (an InferResult) or raise its error; None if the timeout passed first.")
      .def_property_readonly("handle", &PyPending::handle);

  py::class_<PyModelCore>(m, "ModelCore")
      .def(py::init([](const std::string& name, const std::string& version, uint32_t max_batch_size,
                       const std::vector<py::tuple>& inputs, const std::vector<py::tuple>& outputs,
                       const std::vector<uint32_t>& preferred, int64_t max_queue_delay_us, uint32_t max_queue_size,
                       uint32_t priority_levels, const std::vector<uint32_t>& level_max_queue, uint32_t executors,
                       int64_t slack_margin_us, int64_t slo_latency_us, bool admission_control,
                       uint32_t default_level, int64_t default_deadline_us, const std::vector<double>& latency_bounds_s,
                       uint64_t max_row_bytes, const std::vector<py::tuple>& output_checks,
                       PyInferenceCore& core) {
             std::vector<TensorSignature> ins, outs;
             for (const auto& t : inputs) ins.push_back(TensorOf(t, true));
             for (const auto& t : outputs) outs.push_back(TensorOf(t, true));  // (name, datatype, dims, monitor)
             std::unique_ptr<Signature> sig;
             RaiseIfError(Signature::Create(name, max_batch_size, std::move(ins), std::move(outs), max_row_bytes, &sig));
             ModelCoreOptions o;
             o.version = version;
             for (const auto& c : output_checks) {
               OutputCheck check;
               check.output = c[0].cast<uint32_t>();
               check.finite = c[1].cast<bool>();
               if (!c[2].is_none()) check.lo = c[2].cast<double>();
               if (!c[3].is_none()) check.hi = c[3].cast<double>();
               o.checks.push_back(check);
             }
             o.batching.max_batch_size = std::max<uint32_t>(1, max_batch_size);
             o.batching.preferred_batch_sizes = preferred;
             o.batching.max_queue_delay_ns = max_queue_delay_us * 1000;
             o.batching.max_queue_size = max_queue_size;
             o.batching.priority_levels = priority_levels;
             o.batching.level_max_queue = level_max_queue;
             o.batching.executors = executors;
             o.batching.slack_margin_ns = slack_margin_us * 1000;
             o.batching.slo_latency_ns = slo_latency_us * 1000;
             o.batching.admission_control = admission_control;
             o.default_level = default_level;
             o.default_deadline_ns = default_deadline_us * 1000;
             for (double b : latency_bounds_s) o.latency_bounds_ns.push_back(static_cast<int64_t>(b * 1e9));
             o.slo_ns = slo_latency_us * 1000;
             std::unique_ptr<ModelCore> model;
             RaiseIfError(ModelCore::Create(std::move(sig), std::move(o), &core.core->pool(), core.core.get(), &model));
             auto* py_model = new PyModelCore();
             py_model->model = std::shared_ptr<ModelCore>(std::move(model));
             return py_model;
           }),
           py::arg("name"), py::arg("version"), py::arg("max_batch_size"), py::arg("inputs"), py::arg("outputs"),
           py::arg("preferred_batch_sizes") = std::vector<uint32_t>{}, py::arg("max_queue_delay_us") = 0,
           py::arg("max_queue_size") = 1024, py::arg("priority_levels") = 1,
           py::arg("level_max_queue") = std::vector<uint32_t>{}, py::arg("executors") = 1,
           py::arg("slack_margin_us") = 0, py::arg("slo_latency_us") = 0, py::arg("admission_control") = false,
           py::arg("default_level") = 0, py::arg("default_deadline_us") = 0,
           py::arg("latency_bounds_s") = std::vector<double>{}, py::arg("max_row_bytes") = uint64_t{1} << 26,
           py::arg("output_checks") = std::vector<py::tuple>{}, py::arg("core"))
      .def(
          "next_batch",
          [](py::object self, py::object timeout) { return self.cast<PyModelCore&>().NextBatch(self, timeout); },
          py::arg("timeout") = py::none(),
          "A BatchView, None (timeout or only expiries), or 'stopped'. GIL released while waiting.")
      .def("complete", &PyModelCore::Complete, py::arg("buffer"), py::arg("outputs"), py::arg("timings"),
           "Answer the batch's requests from its outputs; returns None, or the message if the outputs were "
           "malformed (the batch then failed over).")
      .def("check", &PyModelCore::Check, py::arg("buffer"), py::arg("outputs"),
           "None when the outputs may answer the batch, else (reason, message); answers nothing.")
      .def("fail", &PyModelCore::Fail, py::arg("buffer"), py::arg("reason"), py::arg("message"), py::arg("timings"))
      .def("logged_rows", &PyModelCore::Logged, py::arg("buffer"),
           "Copies of the logged requests of a batch handed out and not yet answered (a LoggedRows).")
      .def_property(
          "log_rate", [](const PyModelCore& m) { return m.model->log_rate(); },
          [](PyModelCore& m, double rate) {
            if (!(rate >= 0.0 && rate <= 1.0))
              throw py::value_error("log_rate must be in [0, 1]; got " + std::to_string(rate));
            m.model->set_log_rate(rate);
          },
          "prediction_log.sample_rate: the share of requests first admitted here drawn for the log")
      .def("stop", [](PyModelCore& m) { m.model->Stop(); }, py::call_guard<py::gil_scoped_release>())
      .def("close", [](PyModelCore& m) { m.model->Close(); }, py::call_guard<py::gil_scoped_release>(),
           "After the executors drained: stop and join the deadline reaper thread.")
      .def_property(
          "ready", [](const PyModelCore& m) { return m.model->ready(); },
          [](PyModelCore& m, bool ready) { m.model->set_ready(ready); })
      .def("statistics", &PyModelCore::Statistics)
      .def("histograms", &PyModelCore::Histograms)
      .def("batcher_stats", &PyModelCore::BatcherStats)
      .def("recent_latencies_ns", [](const PyModelCore& m) { return m.model->stats().RecentLatencies(); })
      .def("recent_queue_ns", [](const PyModelCore& m) { return m.model->stats().RecentQueueTimes(); })
      .def_property_readonly("queued_requests",
                             [](const PyModelCore& m) { return m.model->batcher().Stats().queued_requests; })
      .def("estimate_ns", [](const PyModelCore& m, uint32_t rows) { return m.model->batcher().latency_model().EstimateNs(rows); },
           py::arg("rows"))
      .def(
          "record_latency",
          [](PyModelCore& m, uint32_t rows, int64_t ns) {
            m.model->batcher().latency_model().Record(rows, ns);
            m.model->batcher().RefreshCap();
          },
          py::arg("rows"), py::arg("exec_ns"))
      .def(
          "estimate_completion_ns",
          [](const PyModelCore& m, uint32_t rows, uint32_t priority) { return m.model->EstimateCompletionNs(rows, priority); },
          py::arg("rows"), py::arg("priority") = 0,
          "Absolute monotonic ns when a request submitted now would finish; 0 without measurements.")
      .def_property_readonly("batch_cap", [](const PyModelCore& m) { return m.model->batcher().BatchCap(); });

  py::class_<PyInferenceCore>(m, "InferenceCore")
      .def(py::init<uint32_t>(), py::arg("max_requests"))
      .def("add_model", [](PyInferenceCore& c, PyModelCore& m) { c.core->AddModel(m.model); })
      .def(
          "remove_model",
          [](PyInferenceCore& c, PyModelCore& m) {
            return c.core->RemoveModel(m.model->name(), m.model->version(), m.model.get());
          },
          py::arg("model"), "Take this model version out of routing (if it is still the one routed).")
      .def(
          "set_route",
          [](PyInferenceCore& c, const std::string& name, const std::string& backup, bool on_deadline_miss,
             const std::vector<py::tuple>& defaults) {
            std::vector<DefaultOutput> outs;
            for (const auto& d : defaults)
              outs.push_back({d[0].cast<std::string>(), Dims(d[1].cast<py::sequence>()), d[2].cast<std::vector<float>>()});
            c.core->SetRoute(name, backup, on_deadline_miss, std::move(outs));
          },
          py::arg("name"), py::arg("backup"), py::arg("on_deadline_miss"), py::arg("defaults"))
      .def("set_unavailable", [](PyInferenceCore& c, const std::string& name, const std::string& why) { c.core->SetUnavailable(name, why); })
      .def(
          "set_circuit",
          [](PyInferenceCore& c, const std::string& name, int state, int32_t probes) {
            c.core->SetCircuit(name, static_cast<CircuitState>(state), probes);
          },
          py::arg("name"), py::arg("state"), py::arg("probes") = 0)
      .def("submit_wire", &PyInferenceCore::SubmitWire, py::arg("data"), py::arg("deadline_ns"), py::arg("cq"),
           py::arg("tag"), py::arg("request_id") = "", py::arg("request_id_wins") = false,
           "Queued: the handle (int). Answered at once: (value, failed, model_name) where value is bytes or an "
           "exception instance.")
      .def("submit", &PyInferenceCore::Submit, py::arg("model"), py::arg("version"), py::arg("inputs"),
           py::arg("outputs"), py::arg("deadline_ns"), py::arg("priority"), py::arg("cq") = py::none(),
           py::arg("tag") = 0, py::arg("request_id") = "",
           "In-process: a Pending (cq None), the handle (queued on cq), or (InferResult,) when answered at once.")
      .def("cancel", [](PyInferenceCore& c, uint64_t handle) { return c.core->Cancel(handle); })
      .def("failovers",
           [](const PyInferenceCore& c) {
             py::list out;
             for (const auto& f : c.core->Failovers()) out.append(py::make_tuple(f.model, f.answered_by, f.count));
             return out;
           })
      .def("skips",
           [](const PyInferenceCore& c) {
             py::list out;
             for (const auto& s : c.core->Skips()) out.append(py::make_tuple(s.model, SkipReasonName(s.reason), s.count));
             return out;
           })
      .def_property_readonly("requests_in_use", [](PyInferenceCore& c) { return c.core->pool().in_use(); });

  BindFrontend(
      m, [](py::handle h) { return h.cast<PyInferenceCore&>().core.get(); }, &RaiseIfError);
}
