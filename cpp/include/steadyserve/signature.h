// Signature: a model version's inputs and outputs as the core checks requests
// against them, published by Python at load.
//
// It owns every rule about what a request may send: names, datatypes (with
// lossless conversion), shapes, batch sizes, byte sizes. Checks run before
// anything sized by the request is allocated; each input is then copied once,
// straight into the Request, converted to the model's datatype on the way.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "steadyserve/feature_transform.h"
#include "steadyserve/request.h"
#include "steadyserve/status.h"
#include "steadyserve/tensor.h"
#include "steadyserve/v2_wire.h"

namespace steadyserve {

// Largest rank and element count of one input tensor a request may send.
constexpr size_t kMaxRank = 8;
constexpr uint64_t kMaxElements = uint64_t{1} << 28;

struct TensorSignature {
  std::string name;
  DataType dtype = DataType::kInvalid;
  std::vector<int64_t> dims;  // non-batch dims (inputs: all fixed; outputs: -1 allowed)
  std::shared_ptr<FeatureTransform> transform;  // inputs only; may be null

  uint64_t RowElements() const;
  uint64_t RowBytes() const { return RowElements() * ElementSize(dtype); }  // 0 for BYTES
};

// An in-process caller's tensor (a numpy array's buffer), C-contiguous.
struct TensorRef {
  std::string_view name;
  DataType dtype = DataType::kInvalid;
  const int64_t* shape = nullptr;
  size_t rank = 0;
  const uint8_t* data = nullptr;
  size_t size = 0;  // bytes
};

class Signature {
 public:
  // Checks the tables (names unique, dims fixed for inputs, at most 64 inputs
  // and 64 outputs, row sizes within max_row_bytes).
  static Status Create(std::string model, uint32_t max_batch_size, std::vector<TensorSignature> inputs,
                       std::vector<TensorSignature> outputs, uint64_t max_row_bytes,
                       std::unique_ptr<Signature>* out);

  // Decodes a parsed ModelInferRequest's inputs and requested outputs into `r`
  // (rows, inputs, output_mask).
  Status DecodeWire(const InferRequestView& view, Request* r) const;
  // The same from an in-process caller's tensors; `outputs` may be empty (all).
  Status LoadTensors(const TensorRef* tensors, size_t n, const std::string_view* outputs, size_t n_outputs,
                     Request* r) const;

  const std::string& model() const { return model_; }
  uint32_t max_batch_size() const { return max_batch_size_; }
  bool batched() const { return max_batch_size_ > 0; }
  const std::vector<TensorSignature>& inputs() const { return inputs_; }
  const std::vector<TensorSignature>& outputs() const { return outputs_; }
  int FindInput(std::string_view name) const;
  int FindOutput(std::string_view name) const;
  // "[-1, 32]" style shape of input i as a request must send it.
  std::string ExpectedShape(size_t i) const;

 private:
  Signature() = default;
  // Shape checks shared by both paths: sets *rows (1 for unbatched models).
  Status CheckShape(size_t input, const int64_t* shape, size_t rank, uint32_t* rows, int* first) const;
  Status CheckOutputs(const std::string_view* names, size_t n, uint64_t* mask) const;
  Status Missing(size_t input) const;

  std::string model_;
  uint32_t max_batch_size_ = 0;
  std::vector<TensorSignature> inputs_, outputs_;
  std::string input_names_, output_names_;  // "a, b" for messages
};

// Checks Triton's BYTES serialization of `count` elements (4-byte little-endian
// length, then the bytes, per element) fills data[0, size) exactly and that every
// element is UTF-8 text (what ONNX string tensors hold).
Status CheckBytesTensor(std::string_view input, const uint8_t* data, size_t size, uint64_t count);

}  // namespace steadyserve
