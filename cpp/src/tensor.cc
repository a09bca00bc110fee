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

// Calls f(T{}) with T the C++ element type of a numeric datatype (FP16 and BYTES have
// none); false when there is none. The one table from datatype to C++ type.
template <typename F>
bool WithElementType(DataType t, F&& f) {
  switch (t) {
    case DataType::kBool: f(bool{}); return true;
    case DataType::kUint8: f(uint8_t{}); return true;
    case DataType::kUint16: f(uint16_t{}); return true;
    case DataType::kUint32: f(uint32_t{}); return true;
    case DataType::kUint64: f(uint64_t{}); return true;
    case DataType::kInt8: f(int8_t{}); return true;
    case DataType::kInt16: f(int16_t{}); return true;
    case DataType::kInt32: f(int32_t{}); return true;
    case DataType::kInt64: f(int64_t{}); return true;
    case DataType::kFp32: f(float{}); return true;
    case DataType::kFp64: f(double{}); return true;
    default: return false;
  }
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
  Status status(StatusCode::kInvalidArgument, cannot);
  WithElementType(from, [&](auto from_tag) {
    WithElementType(to, [&](auto to_tag) {
      status = ConvertTyped<decltype(from_tag), decltype(to_tag)>(input, src, dst, count, to);
    });
  });
  return status;
}

}  // namespace steadyserve
