// V2 wire format: a bounds-checked reader of a serialized
// inference.ModelInferRequest and a writer of inference.ModelInferResponse
// (protos/grpc_predict_v2.proto; field numbers as Triton's).
//
// The reader never allocates per field: every string and byte field is a view
// into the caller's buffer, which must outlive the InferRequestView. The
// vectors inside a view keep their capacity when the view is reused, so a
// thread-local view parses request after request without allocating.
//
// Acceptance follows protobuf's own parser (a message the official Python
// parser accepts is accepted, one it rejects is refused): varints of at most
// 10 bytes, field numbers >= 1, wire types 0/1/2/5 (and skipped groups 3/4 for
// unknown fields), lengths within the enclosing message, UTF-8 in `string`
// fields, packed and unpacked repeated scalars, last-one-wins for singular
// scalars and strings, merging for singular sub-messages (`contents`), and for
// map entries the last value of a key.
// Rules of upb (Python protobuf's parser) matched here that are easy to miss:
//  - a known field sent with another wire type is an unknown field (skipped);
//  - unknown groups nest; an END_GROUP that closes nothing is an error; the
//    nesting of sub-messages and groups is limited to 100 levels;
//  - a tag is at most 5 bytes and below 2^32; a length below 2^31 - 1;
//  - a map entry holding any unknown field (including a key or value sent with
//    the wrong wire type) is not put in the map at all; its strings are still
//    checked;
//  - several `value`s in one map entry merge (the oneof member set last wins).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "steadyserve/status.h"

namespace steadyserve {

// A byte range inside the parsed buffer.
struct WireSpan {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

// One InferParameter (the oneof member that was set last; kNone when unset).
struct ParameterView {
  enum class Kind : uint8_t { kNone, kBool, kInt64, kString, kDouble, kUint64 };
  std::string_view key;
  Kind kind = Kind::kNone;
  bool bool_value = false;
  int64_t int64_value = 0;
  uint64_t uint64_value = 0;
  double double_value = 0;
  std::string_view string_value;
};

// Field numbers of InferTensorContents, as named in the proto.
enum class ContentsField : uint8_t {
  kNone = 0,
  kBool = 1,
  kInt = 2,
  kInt64 = 3,
  kUint = 4,
  kUint64 = 5,
  kFp32 = 6,
  kFp64 = 7,
  kBytes = 8,
};

struct InputTensorView {
  std::string_view name;
  std::string_view datatype;
  std::vector<int64_t> shape;             // as sent (may be negative: the checker refuses it)
  std::vector<ParameterView> parameters;  // map entries, unique keys (last wins)
  // Every occurrence of the `contents` sub-message (protobuf merges them), in order.
  std::vector<WireSpan> contents;
};

struct RequestedOutputView {
  std::string_view name;
  std::vector<ParameterView> parameters;
};

struct InferRequestView {
  std::string_view model_name;
  std::string_view model_version;
  std::string_view id;
  std::vector<ParameterView> parameters;  // unique keys (last wins)
  std::vector<InputTensorView> inputs;
  std::vector<RequestedOutputView> outputs;
  std::vector<WireSpan> raw_input_contents;

  // The entry of `parameters` with this key, or nullptr.
  const ParameterView* FindParameter(std::string_view key) const;

  // Storage the parser reuses between requests; not part of the parsed result.
  // Elements of `inputs` / `outputs` are parked here (their vectors keep their
  // capacity) instead of being destroyed; `key_scratch_` sorts large maps.
  std::vector<InputTensorView> spare_inputs_;
  std::vector<RequestedOutputView> spare_outputs_;
  std::vector<uint64_t> key_scratch_;
};

// Parses `data[0, size)` into *view (cleared first). INVALID_ARGUMENT names the
// field and the byte offset where the message is malformed.
Status ParseInferRequest(const uint8_t* data, size_t size, InferRequestView* view);

// The typed contents of an input. The functions below see the elements of every
// `contents` occurrence, in order (protobuf merges them); each looks at one
// field and ignores the others (the caller refuses mixed fields via
// ContentsFieldsPresent). They expect a view filled by ParseInferRequest.

// A bit mask of the InferTensorContents fields that hold at least one element
// (bit 1 << field number).
uint32_t ContentsFieldsPresent(const InputTensorView& input);

// Number of elements of `field` in the input's contents (packed and unpacked).
uint64_t ContentsCount(const InputTensorView& input, ContentsField field);

// Writes the elements of `field` into dst, converted to the element type named
// by `datatype` ("INT8", "UINT16", "FP32", ...), checking that each value fits
// (e.g. an int_contents value of 300 for INT8 is refused naming the input, the
// element index and the value). dst has room for exactly `count` elements of
// that type; count must equal ContentsCount(input, field).
// For BYTES (field kBytes), dst receives Triton's serialization: for each
// element a 4-byte little-endian length then the bytes; dst_size must equal
// ContentsBytesSize(input).
Status DecodeContents(const InputTensorView& input, ContentsField field, std::string_view datatype,
                      uint8_t* dst, uint64_t count, size_t dst_size);

// Size of the Triton serialization of the input's bytes_contents elements.
uint64_t ContentsBytesSize(const InputTensorView& input);

// ---------------------------------------------------------------------------
// Writer

// Writes one inference.ModelInferResponse into a byte buffer that keeps its
// capacity between responses. Call order: Begin, any AddParameter*, then
// AddOutput for each output with its raw bytes, then Finish. The writer
// computes every length before writing, so the result is one contiguous
// serialized message with no copies beyond the output bytes themselves.
class ResponseWriter {
 public:
  void Begin(std::string_view model_name, std::string_view model_version, std::string_view id);
  void AddParameterBool(std::string_view key, bool value);
  void AddParameterInt64(std::string_view key, int64_t value);
  void AddParameterString(std::string_view key, std::string_view value);
  // Every view and pointer passed in must stay valid until Finish returns.
  // One output tensor: name, datatype, shape; its bytes go to raw_output_contents
  // in the same order as the outputs.
  void AddOutput(std::string_view name, std::string_view datatype, const int64_t* shape, size_t rank,
                 const uint8_t* raw, size_t raw_size);
  // Serializes into *out (replacing its contents; its capacity is reused).
  void Finish(std::string* out);

 private:
  struct Param {
    std::string_view key;
    ParameterView::Kind kind;
    bool b;
    int64_t i;
    std::string_view s;
  };
  struct Output {
    std::string_view name, datatype;
    const int64_t* shape;
    size_t rank;
    const uint8_t* raw;
    size_t raw_size;
  };
  std::string_view model_name_, model_version_, id_;
  std::vector<Param> params_;
  std::vector<Output> outputs_;
};

}  // namespace steadyserve
