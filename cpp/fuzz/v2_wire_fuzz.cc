// libFuzzer target for the V2 wire reader and writer.
//
// Parses arbitrary bytes; on success decodes every input's contents (each
// present field with its widest datatype and the narrowing ones), looks up
// every parameter, and writes a response from the view. A response written
// with empty raw contents has the layout of a request in fields 1-5, so it is
// parsed back and compared: the writer and the reader must agree.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_check.h"
#include "steadyserve/v2_wire.h"

using namespace steadyserve;

namespace {

struct Decoding {
  ContentsField field;
  const char* datatype;
  size_t size;  // 0: BYTES
  int expect;   // 1: never fails, 0: may fail (a narrowing range check), -1: always fails
};

constexpr Decoding kDecodings[] = {
    {ContentsField::kBool, "BOOL", 1, 1},     {ContentsField::kInt, "INT8", 1, 0},
    {ContentsField::kInt, "INT16", 2, 0},     {ContentsField::kInt, "INT32", 4, 1},
    {ContentsField::kInt64, "INT64", 8, 1},   {ContentsField::kUint, "UINT8", 1, 0},
    {ContentsField::kUint, "UINT16", 2, 0},   {ContentsField::kUint, "UINT32", 4, 1},
    {ContentsField::kUint64, "UINT64", 8, 1}, {ContentsField::kFp32, "FP32", 4, 1},
    {ContentsField::kFp64, "FP64", 8, 1},     {ContentsField::kBytes, "BYTES", 0, 1},
    {ContentsField::kFp32, "INT32", 4, -1},   {ContentsField::kFp64, "FP16", 2, -1},
};

void DecodeAll(const InputTensorView& in, std::vector<uint8_t>* buf) {
  const uint32_t present = ContentsFieldsPresent(in);
  FUZZ_CHECK((present & ~0x1feu) == 0);
  for (const Decoding& d : kDecodings) {
    const uint64_t n = ContentsCount(in, d.field);
    FUZZ_CHECK((n > 0) == (((present >> static_cast<uint32_t>(d.field)) & 1) != 0));
    const size_t bytes = d.size == 0 ? ContentsBytesSize(in) : n * d.size;
    buf->assign(bytes + 1, 0xAB);  // one guard byte past the end
    const Status s = DecodeContents(in, d.field, d.datatype, buf->data(), n, bytes);
    FUZZ_CHECK(buf->back() == 0xAB);
    if (d.expect != 0) FUZZ_CHECK(s.ok() == (d.expect > 0));
    // A count that is off by one is always refused.
    FUZZ_CHECK(!DecodeContents(in, d.field, d.datatype, buf->data(), n + 1, bytes).ok());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Reused across inputs, as the server reuses its views.
  static InferRequestView view;
  static InferRequestView back;
  static ResponseWriter writer;
  static std::string out;
  static std::vector<uint8_t> buf;

  if (!ParseInferRequest(data, size, &view).ok()) return 0;

  for (const InputTensorView& in : view.inputs) {
    DecodeAll(in, &buf);
    for (size_t i = 0; i < in.parameters.size(); ++i) {
      for (size_t j = i + 1; j < in.parameters.size(); ++j)
        FUZZ_CHECK(in.parameters[i].key != in.parameters[j].key);
    }
  }
  for (const ParameterView& p : view.parameters) {
    const ParameterView* found = view.FindParameter(p.key);
    FUZZ_CHECK(found == &p);  // keys are unique
  }

  // A response echoing the request: its bool / int64 / string parameters and
  // one output per input, first without raw contents.
  writer.Begin(view.model_name, view.model_version, view.id);
  size_t written_params = 0;
  for (const ParameterView& p : view.parameters) {
    if (p.kind == ParameterView::Kind::kBool) {
      writer.AddParameterBool(p.key, p.bool_value);
    } else if (p.kind == ParameterView::Kind::kInt64) {
      writer.AddParameterInt64(p.key, p.int64_value);
    } else if (p.kind == ParameterView::Kind::kString) {
      writer.AddParameterString(p.key, p.string_value);
    } else {
      continue;
    }
    ++written_params;
  }
  for (const InputTensorView& in : view.inputs) {
    writer.AddOutput(in.name, in.datatype, in.shape.data(), in.shape.size(), nullptr, 0);
  }
  writer.Finish(&out);
  FUZZ_CHECK(ParseInferRequest(reinterpret_cast<const uint8_t*>(out.data()), out.size(), &back).ok());
  FUZZ_CHECK(back.model_name == view.model_name && back.model_version == view.model_version &&
             back.id == view.id);
  FUZZ_CHECK(back.parameters.size() == written_params);
  size_t k = 0;
  for (const ParameterView& p : view.parameters) {
    if (p.kind == ParameterView::Kind::kNone || p.kind == ParameterView::Kind::kDouble ||
        p.kind == ParameterView::Kind::kUint64) {
      continue;
    }
    const ParameterView& q = back.parameters[k++];
    FUZZ_CHECK(q.key == p.key && q.kind == p.kind);
    FUZZ_CHECK(q.bool_value == p.bool_value || p.kind != ParameterView::Kind::kBool);
    FUZZ_CHECK(q.int64_value == p.int64_value || p.kind != ParameterView::Kind::kInt64);
    FUZZ_CHECK(q.string_value == p.string_value || p.kind != ParameterView::Kind::kString);
  }
  FUZZ_CHECK(back.inputs.size() == view.inputs.size());
  for (size_t i = 0; i < view.inputs.size(); ++i) {
    FUZZ_CHECK(back.inputs[i].name == view.inputs[i].name &&
               back.inputs[i].datatype == view.inputs[i].datatype);
    FUZZ_CHECK(back.inputs[i].shape == view.inputs[i].shape);
  }
  // Every raw_input_contents as an output's raw bytes (outputs without a
  // matching input get none).
  writer.Begin(view.model_name, view.model_version, view.id);
  for (size_t i = 0; i < view.raw_input_contents.size(); ++i) {
    const WireSpan& raw = view.raw_input_contents[i];
    const InputTensorView* in = i < view.inputs.size() ? &view.inputs[i] : nullptr;
    writer.AddOutput(in ? in->name : "", in ? in->datatype : "", in ? in->shape.data() : nullptr,
                     in ? in->shape.size() : 0, raw.data, raw.size);
  }
  writer.Finish(&out);
  return 0;
}
