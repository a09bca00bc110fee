#include "steadyserve/signature.h"

#include <cstring>
#include <limits>

namespace steadyserve {
namespace {

Status Invalid(std::string message) { return Status(StatusCode::kInvalidArgument, std::move(message)); }

// A client-chosen name cut for an error message.
std::string Show(std::string_view text, size_t limit = 64) {
  if (text.size() <= limit) return std::string(text);
  return std::string(text.substr(0, limit)) + "...";
}

std::string ShapeText(const int64_t* shape, size_t rank) {
  std::string s = "[";
  for (size_t i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string SupportedTypes() {
  return "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES";
}

// The InferTensorContents field that carries a datatype when typed.
ContentsField TypedField(DataType t) {
  switch (t) {
    case DataType::kBool:
      return ContentsField::kBool;
    case DataType::kInt8:
    case DataType::kInt16:
    case DataType::kInt32:
      return ContentsField::kInt;
    case DataType::kInt64:
      return ContentsField::kInt64;
    case DataType::kUint8:
    case DataType::kUint16:
    case DataType::kUint32:
      return ContentsField::kUint;
    case DataType::kUint64:
      return ContentsField::kUint64;
    case DataType::kFp32:
      return ContentsField::kFp32;
    case DataType::kFp64:
      return ContentsField::kFp64;
    case DataType::kBytes:
      return ContentsField::kBytes;
    default:
      return ContentsField::kNone;
  }
}

const char* FieldName(ContentsField f) {
  switch (f) {
    case ContentsField::kBool:
      return "bool_contents";
    case ContentsField::kInt:
      return "int_contents";
    case ContentsField::kInt64:
      return "int64_contents";
    case ContentsField::kUint:
      return "uint_contents";
    case ContentsField::kUint64:
      return "uint64_contents";
    case ContentsField::kFp32:
      return "fp32_contents";
    case ContentsField::kFp64:
      return "fp64_contents";
    case ContentsField::kBytes:
      return "bytes_contents";
    default:
      return "none";
  }
}

// Element count of a checked shape (every dim >= 0, rank <= kMaxRank), or
// kMaxElements + 1 when it exceeds the limit (never overflows).
uint64_t ElementCount(const int64_t* shape, size_t rank) {
  uint64_t n = 1;
  for (size_t i = 0; i < rank; ++i) {
    const uint64_t d = static_cast<uint64_t>(shape[i]);
    if (d == 0) return 0;
    if (n > kMaxElements / d) {
      // Keep scanning for a zero dim: [huge, 0] has 0 elements.
      for (size_t j = i + 1; j < rank; ++j)
        if (shape[j] == 0) return 0;
      return kMaxElements + 1;
    }
    n *= d;
  }
  return n;
}

Status CheckRawShape(std::string_view name, const int64_t* shape, size_t rank, uint64_t* count) {
  if (rank > kMaxRank)
    return Invalid("input '" + Show(name) + "': shape has " + std::to_string(rank) + " dimensions; at most " +
                   std::to_string(kMaxRank) + " allowed");
  for (size_t axis = 0; axis < rank; ++axis) {
    if (shape[axis] < 0)
      return Invalid("input '" + Show(name) + "': dimension " + std::to_string(axis) + " of shape " +
                     ShapeText(shape, rank) + " is " + std::to_string(shape[axis]) +
                     "; dimensions must be >= 0");
  }
  *count = ElementCount(shape, rank);
  if (*count > kMaxElements)
    return Invalid("input '" + Show(name) + "': shape " + ShapeText(shape, rank) + " has more than " +
                   std::to_string(kMaxElements) + " elements; at most " + std::to_string(kMaxElements) +
                   " allowed per input");
  return Status::Ok();
}

thread_local std::vector<uint8_t> tls_scratch;

// Offset of the first byte of data[0, size) that is not well-formed UTF-8 (no overlong
// forms, no surrogates, nothing above U+10FFFF), or size when it all is.
size_t FirstNonUtf8(const uint8_t* data, size_t size) {
  size_t at = 0;
  while (at < size) {
    const uint8_t c = data[at];
    if (c < 0x80) {
      ++at;
      continue;
    }
    size_t n;
    uint8_t lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      n = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      n = 2;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      n = 3;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return at;
    }
    if (size - at <= n || data[at + 1] < lo || data[at + 1] > hi) return at;
    for (size_t k = 2; k <= n; ++k)
      if ((data[at + k] & 0xC0) != 0x80) return at;
    at += n + 1;
  }
  return size;
}

}  // namespace

Status CheckBytesTensor(std::string_view input, const uint8_t* data, size_t size, uint64_t count) {
  size_t at = 0;
  for (uint64_t k = 0; k < count; ++k) {
    if (size - at < 4)
      return Invalid("input '" + Show(input) + "': BYTES data ends inside the length of element " +
                     std::to_string(k) + " of " + std::to_string(count));
    uint32_t len;
    std::memcpy(&len, data + at, 4);
    at += 4;
    if (len > size - at)
      return Invalid("input '" + Show(input) + "': BYTES element " + std::to_string(k) + " says " +
                     std::to_string(len) + " bytes but only " + std::to_string(size - at) + " remain");
    // ONNX Runtime's string tensors hold text: other bytes would reach the model altered.
    const size_t bad = FirstNonUtf8(data + at, len);
    if (bad != len) {
      static const char* kHex = "0123456789abcdef";
      const uint8_t b = data[at + bad];
      return Invalid("input '" + Show(input) + "': BYTES element " + std::to_string(k) +
                     " is not valid UTF-8 (byte " + std::to_string(bad) + " is 0x" + kHex[b >> 4] +
                     kHex[b & 15] + "); string tensors of ONNX models hold UTF-8 text");
    }
    at += len;
  }
  if (at != size)
    return Invalid("input '" + Show(input) + "': BYTES data has " + std::to_string(size - at) +
                   " bytes after its " + std::to_string(count) + " elements");
  return Status::Ok();
}

uint64_t TensorSignature::RowElements() const {
  uint64_t n = 1;
  for (int64_t d : dims) n *= static_cast<uint64_t>(d < 0 ? 0 : d);
  return n;
}

Status Signature::Create(std::string model, uint32_t max_batch_size, std::vector<TensorSignature> inputs,
                         std::vector<TensorSignature> outputs, uint64_t max_row_bytes,
                         std::unique_ptr<Signature>* out) {
  const std::string where = "model '" + model + "': ";
  if (inputs.empty() || inputs.size() > 64) return Invalid(where + "needs 1 to 64 inputs");
  if (outputs.empty() || outputs.size() > 64) return Invalid(where + "needs 1 to 64 outputs");
  std::unique_ptr<Signature> s(new Signature());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const auto& in = inputs[i];
    if (in.dtype == DataType::kInvalid) return Invalid(where + "input '" + in.name + "' has no datatype");
    if (in.dims.size() > kMaxRank) return Invalid(where + "input '" + in.name + "' has too many dims");
    for (int64_t d : in.dims)
      if (d < 0) return Invalid(where + "input '" + in.name + "' has a dynamic non-batch dimension");
    if (in.dtype != DataType::kBytes && (in.RowBytes() == 0 || in.RowBytes() > max_row_bytes))
      return Invalid(where + "input '" + in.name + "' has " + std::to_string(in.RowBytes()) +
                     " bytes per row; allowed 1 to " + std::to_string(max_row_bytes) + " (max_row_bytes)");
    if (in.transform && (in.dtype != DataType::kFp32 || in.dims.size() != 1 ||
                         static_cast<uint64_t>(in.dims[0]) != in.transform->options().n_features))
      return Invalid(where + "input '" + in.name + "': a feature transform needs FP32 [" +
                     std::to_string(in.transform->options().n_features) + "] rows");
    for (size_t j = 0; j < i; ++j)
      if (inputs[j].name == in.name) return Invalid(where + "input '" + in.name + "' is listed twice");
    s->input_names_ += (i ? ", " : "") + in.name;
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = 0; j < i; ++j)
      if (outputs[j].name == outputs[i].name)
        return Invalid(where + "output '" + outputs[i].name + "' is listed twice");
    s->output_names_ += (i ? ", " : "") + outputs[i].name;
  }
  s->model_ = std::move(model);
  s->max_batch_size_ = max_batch_size;
  s->inputs_ = std::move(inputs);
  s->outputs_ = std::move(outputs);
  *out = std::move(s);
  return Status::Ok();
}

int Signature::FindInput(std::string_view name) const {
  for (size_t i = 0; i < inputs_.size(); ++i)
    if (inputs_[i].name == name) return static_cast<int>(i);
  return -1;
}

int Signature::FindOutput(std::string_view name) const {
  for (size_t i = 0; i < outputs_.size(); ++i)
    if (outputs_[i].name == name) return static_cast<int>(i);
  return -1;
}

std::string Signature::ExpectedShape(size_t i) const {
  std::string s = "[";
  bool first = true;
  if (batched()) {
    s += "-1";
    first = false;
  }
  for (int64_t d : inputs_[i].dims) {
    if (!first) s += ", ";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}

Status Signature::Missing(size_t input) const {
  return Invalid("model '" + model_ + "': missing input '" + inputs_[input].name + "' (" +
                 DataTypeName(inputs_[input].dtype) + " " + ExpectedShape(input) + ")");
}

Status Signature::CheckShape(size_t i, const int64_t* shape, size_t rank, uint32_t* rows, int* first) const {
  const auto& sig = inputs_[i];
  const std::string where = "model '" + model_ + "': input '" + sig.name + "' ";
  if (batched()) {
    bool ok = rank == sig.dims.size() + 1;
    for (size_t d = 0; ok && d < sig.dims.size(); ++d) ok = shape[d + 1] == sig.dims[d];
    if (!ok) return Invalid(where + "has shape " + ShapeText(shape, rank) + ", expected " + ExpectedShape(i));
    const int64_t n = shape[0];
    if (n == 0)
      return Invalid(where + "has 0 rows (shape " + ShapeText(shape, rank) + "); send at least one row");
    if (n > static_cast<int64_t>(max_batch_size_))
      return Invalid(where + "has " + std::to_string(n) + " rows, more than max_batch_size " +
                     std::to_string(max_batch_size_) + "; split the request");
    if (*first >= 0 && static_cast<int64_t>(*rows) != n)
      return Invalid(where + "has " + std::to_string(n) + " rows but the other inputs have " +
                     std::to_string(*rows) + "; every input needs the same batch size");
    *rows = static_cast<uint32_t>(n);
  } else {
    bool ok = rank == sig.dims.size();
    for (size_t d = 0; ok && d < rank; ++d) ok = shape[d] == sig.dims[d];
    if (!ok) return Invalid(where + "has shape " + ShapeText(shape, rank) + ", expected " + ExpectedShape(i));
    *rows = 1;
  }
  if (*first < 0) *first = static_cast<int>(i);
  return Status::Ok();
}

Status Signature::CheckOutputs(const std::string_view* names, size_t n, uint64_t* mask) const {
  *mask = 0;
  for (size_t k = 0; k < n; ++k) {
    if (names[k].empty()) return Invalid("requested output #" + std::to_string(k) + " has an empty name");
    const int o = FindOutput(names[k]);
    if (o < 0)
      return Invalid("model '" + model_ + "' has no output '" + Show(names[k]) + "' (outputs: " +
                     output_names_ + ")");
    const uint64_t bit = uint64_t{1} << o;
    if (*mask & bit) return Invalid("output '" + Show(names[k]) + "' is requested more than once");
    *mask |= bit;
  }
  return Status::Ok();
}

Status Signature::DecodeWire(const InferRequestView& v, Request* r) const {
  const size_t n = v.inputs.size();
  const bool raw = !v.raw_input_contents.empty();
  if (raw && v.raw_input_contents.size() != n) {
    for (const auto& in : v.inputs)
      if (ContentsFieldsPresent(in) != 0)
        return Invalid("input '" + Show(in.name) +
                       "' has typed contents but the request also carries raw_input_contents; send every "
                       "input raw or every input typed, not a mix");
    return Invalid("request has " + std::to_string(n) + " input(s) but " +
                   std::to_string(v.raw_input_contents.size()) +
                   " raw_input_contents entries; send one raw buffer per input, in the order of the inputs");
  }
  // Pass 1: check everything, allocate nothing. index[k]: signature input of request input k.
  int index[64];
  uint64_t counts[64];
  DataType types[64];
  uint64_t seen = 0;
  uint32_t rows = 0;
  int first = -1;
  for (size_t k = 0; k < n; ++k) {
    const InputTensorView& in = v.inputs[k];
    if (in.name.empty()) return Invalid("input #" + std::to_string(k) + " has an empty name");
    const int i = FindInput(in.name);
    if (i < 0)
      return Invalid("model '" + model_ + "' has no input '" + Show(in.name) + "' (inputs: " + input_names_ +
                     ")");
    if (seen & (uint64_t{1} << i))
      return Invalid("input '" + Show(in.name) + "' appears more than once in the request");
    seen |= uint64_t{1} << i;
    for (const auto& p : in.parameters)
      if (p.key == "shared_memory_region")
        return Invalid("input '" + Show(in.name) +
                       "': shared memory is not supported; send the data in the request");
    const DataType t = ParseDataType(in.datatype);
    if (t == DataType::kInvalid)
      return Invalid("input '" + Show(in.name) + "': unknown datatype '" +
                     (in.datatype.empty() ? std::string("(empty)") : Show(in.datatype)) +
                     "' (supported: " + SupportedTypes() + ")");
    uint64_t count;
    Status s = CheckRawShape(in.name, in.shape.data(), in.shape.size(), &count);
    if (!s.ok()) return s;
    s = CheckShape(static_cast<size_t>(i), in.shape.data(), in.shape.size(), &rows, &first);
    if (!s.ok()) return s;
    const DataType want = inputs_[i].dtype;
    if ((want == DataType::kBytes) != (t == DataType::kBytes) || (want == DataType::kFp16) != (t == DataType::kFp16))
      return Invalid("model '" + model_ + "': input '" + inputs_[i].name + "' is " + DataTypeName(want) +
                     ", the request sends " + DataTypeName(t));
    const uint32_t present = ContentsFieldsPresent(in);
    if (raw) {
      if (present)
        return Invalid("input '" + Show(in.name) +
                       "' has typed contents but the request also carries raw_input_contents; send every "
                       "input raw or every input typed, not a mix");
      const WireSpan& data = v.raw_input_contents[k];
      if (t == DataType::kBytes) {
        s = CheckBytesTensor(in.name, data.data, data.size, count);
        if (!s.ok()) return s;
      } else {
        const uint64_t expected = count * ElementSize(t);
        if (data.size != expected)
          return Invalid("input '" + Show(in.name) + "': raw data is " + std::to_string(data.size) +
                         " bytes but shape " + ShapeText(in.shape.data(), in.shape.size()) + " of " +
                         DataTypeName(t) + " needs " + std::to_string(expected) + " bytes (" +
                         std::to_string(count) + " elements x " + std::to_string(ElementSize(t)) + ")");
        if (t == DataType::kBool) {
          for (size_t b = 0; b < data.size; ++b)
            if (data.data[b] > 1)
              return Invalid("input '" + Show(in.name) + "': BOOL byte " + std::to_string(b) + " is " +
                             std::to_string(data.data[b]) + "; BOOL bytes must be 0 or 1");
        }
      }
    } else {
      const ContentsField field = TypedField(t);
      if (field == ContentsField::kNone) {
        if (count != 0 || present)
          return Invalid("input '" + Show(in.name) + "': " + DataTypeName(t) +
                         " has no typed contents field; send it in raw_input_contents");
      } else {
        const uint32_t wrong = present & ~(uint32_t{1} << static_cast<int>(field));
        if (wrong) {
          int f = 1;
          while (!(wrong & (uint32_t{1} << f))) ++f;
          return Invalid("input '" + Show(in.name) + "': datatype " + DataTypeName(t) + " goes in contents." +
                         FieldName(field) + ", but the request sets contents." +
                         FieldName(static_cast<ContentsField>(f)));
        }
        const uint64_t have = ContentsCount(in, field);
        if (have != count) {
          if (!present && count)
            return Invalid("input '" + Show(in.name) + "' has no data: shape " +
                           ShapeText(in.shape.data(), in.shape.size()) + " needs " + std::to_string(count) +
                           " elements in contents." + FieldName(field) +
                           " (or send every input in raw_input_contents)");
          return Invalid("input '" + Show(in.name) + "': contents." + FieldName(field) + " has " +
                         std::to_string(have) + " elements but shape " +
                         ShapeText(in.shape.data(), in.shape.size()) + " needs " + std::to_string(count));
        }
      }
    }
    index[k] = i;
    counts[k] = count;
    types[k] = t;
  }
  for (size_t i = 0; i < inputs_.size(); ++i)
    if (!(seen & (uint64_t{1} << i))) return Missing(i);
  std::string_view names[64];
  const size_t n_out = v.outputs.size();
  if (n_out > 64) return Invalid("request asks for " + std::to_string(n_out) + " outputs; at most 64");
  for (size_t k = 0; k < n_out; ++k) names[k] = v.outputs[k].name;
  Status s = CheckOutputs(names, n_out, &r->output_mask);
  if (!s.ok()) return s;

  // Pass 2: copy each input once into the request, converting to the model's datatype.
  r->rows = rows;
  r->inputs.resize(inputs_.size());
  for (size_t k = 0; k < n; ++k) {
    const int i = index[k];
    const DataType want = inputs_[i].dtype, t = types[k];
    const InputTensorView& in = v.inputs[k];
    std::vector<uint8_t>& dst = r->inputs[i];
    if (want == DataType::kBytes) {
      if (raw) {
        const WireSpan& data = v.raw_input_contents[k];
        dst.assign(data.data, data.data + data.size);
      } else {
        dst.resize(ContentsBytesSize(in));
        s = DecodeContents(in, ContentsField::kBytes, "BYTES", dst.data(), counts[k], dst.size());
        if (!s.ok()) return s;
        s = CheckBytesTensor(in.name, dst.data(), dst.size(), counts[k]);  // UTF-8, as raw data
        if (!s.ok()) return s;
      }
      continue;
    }
    dst.resize(counts[k] * ElementSize(want));
    const uint8_t* src;
    if (raw) {
      src = v.raw_input_contents[k].data;
    } else if (counts[k] == 0) {
      continue;
    } else {
      uint8_t* typed = dst.data();
      if (t != want) {
        tls_scratch.resize(counts[k] * ElementSize(t));
        typed = tls_scratch.data();
      }
      s = DecodeContents(in, TypedField(t), DataTypeName(t), typed, counts[k], counts[k] * ElementSize(t));
      if (!s.ok()) return s;
      if (t == want) continue;
      src = typed;
    }
    s = ConvertElements(inputs_[i].name, t, src, want, dst.data(), counts[k]);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

Status Signature::LoadTensors(const TensorRef* tensors, size_t n, const std::string_view* outputs,
                              size_t n_outputs, Request* r) const {
  if (n > 64) return Invalid("model '" + model_ + "': " + std::to_string(n) + " inputs sent; at most 64");
  int index[64];
  uint64_t counts[64];
  uint64_t seen = 0;
  uint32_t rows = 0;
  int first = -1;
  for (size_t k = 0; k < n; ++k) {
    const TensorRef& t = tensors[k];
    const int i = FindInput(t.name);
    if (i < 0)
      return Invalid("model '" + model_ + "' has no input '" + Show(t.name) + "' (inputs: " + input_names_ +
                     ")");
    if (seen & (uint64_t{1} << i))
      return Invalid("input '" + Show(t.name) + "' appears more than once in the request");
    seen |= uint64_t{1} << i;
    uint64_t count;
    Status s = CheckRawShape(t.name, t.shape, t.rank, &count);
    if (!s.ok()) return s;
    const DataType want = inputs_[i].dtype;
    if (t.dtype == DataType::kInvalid || (want == DataType::kBytes) != (t.dtype == DataType::kBytes))
      return Invalid("input '" + inputs_[i].name + "': cannot convert " + DataTypeName(t.dtype) + " to " +
                     DataTypeName(want));
    s = CheckShape(static_cast<size_t>(i), t.shape, t.rank, &rows, &first);
    if (!s.ok()) return s;
    if (want == DataType::kBytes) {
      s = CheckBytesTensor(t.name, t.data, t.size, count);
    } else if (t.size != count * ElementSize(t.dtype)) {
      s = Invalid("input '" + Show(t.name) + "': " + std::to_string(t.size) + " bytes for " +
                  std::to_string(count) + " elements of " + DataTypeName(t.dtype));
    }
    if (!s.ok()) return s;
    index[k] = i;
    counts[k] = count;
  }
  for (size_t i = 0; i < inputs_.size(); ++i)
    if (!(seen & (uint64_t{1} << i))) return Missing(i);
  Status s = CheckOutputs(outputs, n_outputs, &r->output_mask);
  if (!s.ok()) return s;
  r->rows = rows;
  r->inputs.resize(inputs_.size());
  for (size_t k = 0; k < n; ++k) {
    const int i = index[k];
    const TensorRef& t = tensors[k];
    std::vector<uint8_t>& dst = r->inputs[i];
    if (inputs_[i].dtype == DataType::kBytes) {
      dst.assign(t.data, t.data + t.size);
      continue;
    }
    dst.resize(counts[k] * ElementSize(inputs_[i].dtype));
    s = ConvertElements(inputs_[i].name, t.dtype, t.data, inputs_[i].dtype, dst.data(), counts[k]);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

}  // namespace steadyserve
