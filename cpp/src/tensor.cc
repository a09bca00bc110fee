#include "steadyserve/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <type_traits>

namespace steadyserve {
namespace {

struct TypeInfo {
  DataType type;
  const char* name;
  size_t size;
};

constexpr TypeInfo kTypes[] = {
    {DataType::kBool, "BOOL", 1},     {DataType::kUint8, "UINT8", 1},   {DataType::kUint16, "UINT16", 2},
    {DataType::kUint32, "UINT32", 4}, {DataType::kUint64, "UINT64", 8}, {DataType::kInt8, "INT8", 1},
    {DataType::kInt16, "INT16", 2},   {DataType::kInt32, "INT32", 4},   {DataType::kInt64, "INT64", 8},
    {DataType::kFp16, "FP16", 2},     {DataType::kFp32, "FP32", 4},     {DataType::kFp64, "FP64", 8},
    {DataType::kBytes, "BYTES", 0},
};

template <typename T>
bool SameValue(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(a) && std::isnan(b)) return true;
  }
  return a == b;
}

// Value of an element as text for a message.
template <typename T>
std::string Show(T v) {
  std::ostringstream s;
  if constexpr (std::is_same_v<T, bool>) {
    s << (v ? "true" : "false");
  } else if constexpr (sizeof(T) == 1 && std::is_integral_v<T>) {
    s << static_cast<int>(v);
  } else {
    s.precision(9);
    s << v;
  }
  return s.str();
}

// True when `v` converts to To and back unchanged; the cast itself must not be
// undefined behaviour, so out-of-range floats are caught before casting.
template <typename From, typename To>
bool Exact(From v, To* out) {
  if constexpr (std::is_same_v<To, bool>) {
    if (!(v == From(0) || v == From(1))) return false;
    *out = v != From(0);
    return true;
  } else if constexpr (std::is_floating_point_v<From> && std::is_integral_v<To>) {
    if (!std::isfinite(v)) return false;
    const long double d = v;
    if (d < static_cast<long double>(std::numeric_limits<To>::min()) ||
        d > static_cast<long double>(std::numeric_limits<To>::max()))
      return false;
    *out = static_cast<To>(v);
    return static_cast<From>(*out) == v;
  } else if constexpr (std::is_floating_point_v<From> && std::is_floating_point_v<To>) {
    if (std::isfinite(v) && std::fabs(static_cast<long double>(v)) >
                                static_cast<long double>(std::numeric_limits<To>::max()))
      return false;
    *out = static_cast<To>(v);
    return SameValue(static_cast<From>(*out), v);
  } else if constexpr (std::is_integral_v<From> && std::is_integral_v<To>) {
    if constexpr (std::is_signed_v<From> && !std::is_signed_v<To>) {
      if (v < 0) return false;
    }
    if constexpr (!std::is_signed_v<From> && std::is_signed_v<To>) {
      if (static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<To>::max())) return false;
    }
    *out = static_cast<To>(v);
    return static_cast<From>(*out) == v;
  } else {  // integer to float
    *out = static_cast<To>(v);
    if constexpr (sizeof(From) == 8) {
      // Round trip through long double: a float near 2^63 must not be cast back out of range.
      const long double back = static_cast<long double>(*out);
      return back == static_cast<long double>(v);
    } else {
      return static_cast<From>(*out) == v;
    }
  }
}

template <typename From, typename To>
Status ConvertTyped(std::string_view input, const void* src, void* dst, uint64_t count, DataType to) {
  const From* in = static_cast<const From*>(src);
  To* out = static_cast<To*>(dst);
  for (uint64_t k = 0; k < count; ++k) {
    From v;
    std::memcpy(&v, in + k, sizeof(From));
    To w;
    if (!Exact<From, To>(v, &w)) {
      return Status(StatusCode::kInvalidArgument,
                    "input '" + std::string(input) + "': value " + Show(v) + " at element " +
                        std::to_string(k) + " cannot be represented as " + DataTypeName(to) +
                        " without loss (send " + DataTypeName(to) + " or values that convert exactly)");
    }
    std::memcpy(out + k, &w, sizeof(To));
  }
  return Status::Ok();
}

template <typename From>
Status ConvertFrom(std::string_view input, const void* src, DataType to, void* dst, uint64_t count) {
  switch (to) {
    case DataType::kBool:
      return ConvertTyped<From, bool>(input, src, dst, count, to);
    case DataType::kUint8:
      return ConvertTyped<From, uint8_t>(input, src, dst, count, to);
    case DataType::kUint16:
      return ConvertTyped<From, uint16_t>(input, src, dst, count, to);
    case DataType::kUint32:
      return ConvertTyped<From, uint32_t>(input, src, dst, count, to);
    case DataType::kUint64:
      return ConvertTyped<From, uint64_t>(input, src, dst, count, to);
    case DataType::kInt8:
      return ConvertTyped<From, int8_t>(input, src, dst, count, to);
    case DataType::kInt16:
      return ConvertTyped<From, int16_t>(input, src, dst, count, to);
    case DataType::kInt32:
      return ConvertTyped<From, int32_t>(input, src, dst, count, to);
    case DataType::kInt64:
      return ConvertTyped<From, int64_t>(input, src, dst, count, to);
    case DataType::kFp32:
      return ConvertTyped<From, float>(input, src, dst, count, to);
    case DataType::kFp64:
      return ConvertTyped<From, double>(input, src, dst, count, to);
    default:
      break;
  }
  return Status(StatusCode::kInvalidArgument, "input '" + std::string(input) + "': cannot convert to " +
                                                  DataTypeName(to));
}

}  // namespace

DataType ParseDataType(std::string_view name) {
  for (const auto& t : kTypes)
    if (name == t.name) return t.type;
  return DataType::kInvalid;
}

const char* DataTypeName(DataType type) {
  for (const auto& t : kTypes)
    if (t.type == type) return t.name;
  return "INVALID";
}

size_t ElementSize(DataType type) {
  for (const auto& t : kTypes)
    if (t.type == type) return t.size;
  return 0;
}

Status ConvertElements(std::string_view input, DataType from, const void* src, DataType to, void* dst,
                       uint64_t count) {
  if (from == to) {
    std::memcpy(dst, src, count * ElementSize(from));
    return Status::Ok();
  }
  const std::string cannot = "input '" + std::string(input) + "': cannot convert " + DataTypeName(from) +
                             " to " + DataTypeName(to);
  if (to == DataType::kFp16 || to == DataType::kBytes || from == DataType::kFp16 || from == DataType::kBytes)
    return Status(StatusCode::kInvalidArgument, cannot + " (send " + DataTypeName(to) + ")");
  switch (from) {
    case DataType::kBool:
      return ConvertFrom<bool>(input, src, to, dst, count);
    case DataType::kUint8:
      return ConvertFrom<uint8_t>(input, src, to, dst, count);
    case DataType::kUint16:
      return ConvertFrom<uint16_t>(input, src, to, dst, count);
    case DataType::kUint32:
      return ConvertFrom<uint32_t>(input, src, to, dst, count);
    case DataType::kUint64:
      return ConvertFrom<uint64_t>(input, src, to, dst, count);
    case DataType::kInt8:
      return ConvertFrom<int8_t>(input, src, to, dst, count);
    case DataType::kInt16:
      return ConvertFrom<int16_t>(input, src, to, dst, count);
    case DataType::kInt32:
      return ConvertFrom<int32_t>(input, src, to, dst, count);
    case DataType::kInt64:
      return ConvertFrom<int64_t>(input, src, to, dst, count);
    case DataType::kFp32:
      return ConvertFrom<float>(input, src, to, dst, count);
    case DataType::kFp64:
      return ConvertFrom<double>(input, src, to, dst, count);
    default:
      break;
  }
  return Status(StatusCode::kInvalidArgument, cannot);
}

}  // namespace steadyserve
