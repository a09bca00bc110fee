// Tensor element types of the V2 protocol, and the lossless conversion between them.
//
// One table owns the facts (name, element size) of every datatype the core
// handles; the signature check, the wire decoder and the bindings all ask it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "steadyserve/status.h"

namespace steadyserve {

enum class DataType : uint8_t {
  kInvalid = 0,
  kBool,
  kUint8,
  kUint16,
  kUint32,
  kUint64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFp16,
  kFp32,
  kFp64,
  kBytes,  // variable length: Triton's serialization (4-byte LE length, then the bytes)
};

// "FP32" -> kFp32; kInvalid for names the core does not know.
DataType ParseDataType(std::string_view name);
const char* DataTypeName(DataType type);
// Bytes per element; 0 for kBytes (variable) and kInvalid.
size_t ElementSize(DataType type);

// Converts `count` elements from `from` to `to` when no value changes (a round
// trip gives the same value; NaN equals NaN): widening integers, integers to
// floats within the mantissa, float64 holding float32 values. Otherwise
// INVALID_ARGUMENT naming the input, the element index, the value and the type.
// FP16 and BYTES convert only to themselves.
Status ConvertElements(std::string_view input, DataType from, const void* src, DataType to, void* dst,
                       uint64_t count);

}  // namespace steadyserve
