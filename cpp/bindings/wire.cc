// steadyserve._core: the V2 wire reader and writer, exposed for tests and tools.
//
// parse_infer_request mirrors the parsed view as plain Python objects (so a
// test can compare it with what protobuf's parser makes of the same bytes);
// encode_infer_response writes a ModelInferResponse. Neither is on the
// serving path, which stays native.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "steadyserve/v2_wire.h"

namespace py = pybind11;
using namespace steadyserve;

namespace {

py::str Str(std::string_view s) { return py::str(s.data(), s.size()); }  // UTF-8, checked by the parser

py::bytes Bytes(const uint8_t* data, size_t size) {
  return py::bytes(reinterpret_cast<const char*>(data), size);
}

py::object ParameterValue(const ParameterView& p) {
  switch (p.kind) {
    case ParameterView::Kind::kBool:
      return py::bool_(p.bool_value);
    case ParameterView::Kind::kInt64:
      return py::int_(p.int64_value);
    case ParameterView::Kind::kUint64:
      return py::int_(p.uint64_value);
    case ParameterView::Kind::kDouble:
      return py::float_(p.double_value);
    case ParameterView::Kind::kString:
      return Str(p.string_value);
    default:
      return py::none();
  }
}

py::dict Parameters(const std::vector<ParameterView>& params) {
  py::dict d;
  for (const ParameterView& p : params) d[Str(p.key)] = ParameterValue(p);
  return d;
}

// Reads the little-endian element i of a decoded buffer.
template <typename T>
T At(const std::vector<uint8_t>& buf, size_t i) {
  T v;
  std::memcpy(&v, buf.data() + i * sizeof(T), sizeof(T));
  return v;
}

void ThrowIfError(const Status& s) {
  if (!s.ok()) throw py::value_error(s.message());
}

// Every InferTensorContents field that holds an element, as a list of Python
// values, decoded through DecodeContents with the field's widest datatype.
py::dict Contents(const InputTensorView& in) {
  static constexpr struct {
    ContentsField field;
    const char* name;
    const char* datatype;
    size_t size;
  } kFields[] = {
      {ContentsField::kBool, "bool_contents", "BOOL", 1},
      {ContentsField::kInt, "int_contents", "INT32", 4},
      {ContentsField::kInt64, "int64_contents", "INT64", 8},
      {ContentsField::kUint, "uint_contents", "UINT32", 4},
      {ContentsField::kUint64, "uint64_contents", "UINT64", 8},
      {ContentsField::kFp32, "fp32_contents", "FP32", 4},
      {ContentsField::kFp64, "fp64_contents", "FP64", 8},
      {ContentsField::kBytes, "bytes_contents", "BYTES", 0},
  };
  py::dict d;
  const uint32_t present = ContentsFieldsPresent(in);
  for (const auto& f : kFields) {
    if (!(present & (1u << static_cast<uint32_t>(f.field)))) continue;
    const uint64_t n = ContentsCount(in, f.field);
    const size_t bytes = f.size == 0 ? ContentsBytesSize(in) : n * f.size;
    std::vector<uint8_t> buf(bytes);
    ThrowIfError(DecodeContents(in, f.field, f.datatype, buf.data(), n, bytes));
    py::list values;
    size_t off = 0;  // BYTES: walk the 4-byte length prefixes
    for (size_t i = 0; i < n; ++i) {
      switch (f.field) {
        case ContentsField::kBool:
          values.append(py::bool_(buf[i] != 0));
          break;
        case ContentsField::kInt:
          values.append(py::int_(At<int32_t>(buf, i)));
          break;
        case ContentsField::kInt64:
          values.append(py::int_(At<int64_t>(buf, i)));
          break;
        case ContentsField::kUint:
          values.append(py::int_(At<uint32_t>(buf, i)));
          break;
        case ContentsField::kUint64:
          values.append(py::int_(At<uint64_t>(buf, i)));
          break;
        case ContentsField::kFp32:
          values.append(py::float_(At<float>(buf, i)));
          break;
        case ContentsField::kFp64:
          values.append(py::float_(At<double>(buf, i)));
          break;
        default: {
          uint32_t len;
          std::memcpy(&len, buf.data() + off, 4);
          values.append(Bytes(buf.data() + off + 4, len));
          off += 4 + len;
          break;
        }
      }
    }
    d[f.name] = values;
  }
  return d;
}

py::dict ParseInferRequestPy(const py::bytes& data) {
  char* buffer = nullptr;
  py::ssize_t size = 0;
  if (PyBytes_AsStringAndSize(data.ptr(), &buffer, &size) != 0) throw py::error_already_set();
  InferRequestView view;
  Status s;
  {
    // bytes are immutable: the buffer stays put without the GIL.
    std::optional<py::gil_scoped_release> release;
    if (size >= 64 * 1024) release.emplace();
    s = ParseInferRequest(reinterpret_cast<const uint8_t*>(buffer), static_cast<size_t>(size), &view);
  }
  ThrowIfError(s);

  py::dict d;
  d["model_name"] = Str(view.model_name);
  d["model_version"] = Str(view.model_version);
  d["id"] = Str(view.id);
  d["parameters"] = Parameters(view.parameters);
  py::list inputs;
  for (const InputTensorView& in : view.inputs) {
    py::dict i;
    i["name"] = Str(in.name);
    i["datatype"] = Str(in.datatype);
    i["shape"] = py::cast(in.shape);
    i["parameters"] = Parameters(in.parameters);
    i["contents"] = Contents(in);
    inputs.append(i);
  }
  d["inputs"] = inputs;
  py::list outputs;
  for (const RequestedOutputView& out : view.outputs) {
    py::dict o;
    o["name"] = Str(out.name);
    o["parameters"] = Parameters(out.parameters);
    outputs.append(o);
  }
  d["outputs"] = outputs;
  py::list raw;
  for (const WireSpan& span : view.raw_input_contents) raw.append(Bytes(span.data, span.size));
  d["raw_input_contents"] = raw;
  return d;
}

using OutputSpec = std::tuple<std::string, std::string, std::vector<int64_t>, py::bytes>;

py::bytes EncodeInferResponsePy(const std::string& model_name, const std::string& model_version,
                                const std::string& id, const py::dict& parameters,
                                const std::vector<OutputSpec>& outputs) {
  // The writer takes views: keep the keys and string values here (a deque
  // does not move its elements as it grows).
  std::deque<std::string> keep;
  ResponseWriter w;
  w.Begin(model_name, model_version, id);
  for (const auto& item : parameters) {
    if (!py::isinstance<py::str>(item.first)) throw py::type_error("parameter keys must be str");
    const std::string_view key = keep.emplace_back(item.first.cast<std::string>());
    const py::handle v = item.second;
    if (py::isinstance<py::bool_>(v)) {  // before int: bool is an int
      w.AddParameterBool(key, v.cast<bool>());
    } else if (py::isinstance<py::int_>(v)) {
      w.AddParameterInt64(key, v.cast<int64_t>());
    } else if (py::isinstance<py::str>(v)) {
      w.AddParameterString(key, keep.emplace_back(v.cast<std::string>()));
    } else {
      throw py::type_error("parameter '" + std::string(key) + "' must be bool, int or str");
    }
  }
  for (const auto& [name, datatype, shape, raw] : outputs) {
    char* data = nullptr;
    py::ssize_t size = 0;
    if (PyBytes_AsStringAndSize(raw.ptr(), &data, &size) != 0) throw py::error_already_set();
    w.AddOutput(name, datatype, shape.data(), shape.size(), reinterpret_cast<const uint8_t*>(data),
                static_cast<size_t>(size));
  }
  std::string out;
  w.Finish(&out);
  return py::bytes(out);
}

}  // namespace

void BindWire(py::module_& m) {
  m.def("parse_infer_request", &ParseInferRequestPy, py::arg("data"),
        "Parse a serialized inference.ModelInferRequest with the native reader; returns a dict of its fields "
        "(contents decoded per field). Raises ValueError naming the field and byte offset when malformed.");
  m.def("encode_infer_response", &EncodeInferResponsePy, py::arg("model_name"), py::arg("model_version"),
        py::arg("id"), py::arg("parameters"), py::arg("outputs"),
        "Serialize an inference.ModelInferResponse; parameters: {key: bool | int | str}; outputs: "
        "[(name, datatype, shape, raw bytes)], the bytes going to raw_output_contents.");
}
