// V2 wire reader and writer (see v2_wire.h for the acceptance rules).
//
// The reader is a recursive-descent walk over the wire format with every
// offset kept as a size_t index into the caller's buffer and every length
// compared with what is left of the enclosing message before it is used
// (`n > end - pos`, never `pos + n > end`, so nothing can overflow). The
// recursion is bounded by the nesting limit (100 levels, as upb).
#include "steadyserve/v2_wire.h"

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

namespace steadyserve {
namespace {

// upb's default depth limit (kUpb_WireFormat_DefaultDepthLimit), which Python
// protobuf uses: each sub-message and each group takes one level.
constexpr int kMaxDepth = 100;
// upb refuses a length >= INT32_MAX.
constexpr uint64_t kMaxLength = 2147483646;

enum : uint32_t { kVarint = 0, kFixed64 = 1, kLen = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

constexpr const char* kContentsNames[] = {
    "",
    "bool_contents",
    "int_contents",
    "int64_contents",
    "uint_contents",
    "uint64_contents",
    "fp32_contents",
    "fp64_contents",
    "bytes_contents",
};

// Strict UTF-8 as upb checks it (utf8_range): no overlong forms, no surrogates,
// nothing above U+10FFFF. NUL is valid.
bool ValidUtf8(const uint8_t* p, size_t n) {
  size_t i = 0;
  while (i < n) {
    if (n - i >= 8) {
      uint64_t w = 0;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const uint8_t c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c == 0xE0) {
      len = 3, lo = 0xA0;
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      len = 3;
    } else if (c == 0xED) {
      len = 3, hi = 0x9F;  // no surrogates
    } else if (c == 0xF0) {
      len = 4, lo = 0x90;
    } else if (c >= 0xF1 && c <= 0xF3) {
      len = 4;
    } else if (c == 0xF4) {
      len = 4, hi = 0x8F;  // <= U+10FFFF
    } else {
      return false;
    }
    if (n - i < len || p[i + 1] < lo || p[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

// One element of the field path named in error messages. `name` == nullptr
// stands for an unknown field whose number is `index`.
struct Frame {
  const char* name;
  int64_t index;  // < 0: not a repeated element
};

// Bounds-checked primitives plus the error report. Offsets are indexes into
// base_; `end` is always the end of the enclosing message.
class Parser {
 public:
  explicit Parser(const uint8_t* base) : base_(base) {}

  const Status& status() const { return status_; }
  const uint8_t* base() const { return base_; }

  // Pushes a path element for the lifetime of the scope.
  class Scope {
   public:
    Scope(Parser* p, const char* name, int64_t index) : p_(p) {
      if (p_->npath_ < kMaxFrames) p_->path_[p_->npath_] = {name, index};
      ++p_->npath_;
    }
    ~Scope() { --p_->npath_; }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Parser* p_;
  };

#if defined(__GNUC__)
  __attribute__((format(printf, 3, 4)))
#endif
  bool
  Fail(size_t at, const char* fmt, ...) {
    if (!status_.ok()) return false;
    char detail[192];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(detail, sizeof(detail), fmt, args);
    va_end(args);
    std::string msg = "malformed ModelInferRequest: ";
    if (npath_ > 0) {
      msg += "field ";
      for (int i = 0; i < npath_ && i < kMaxFrames; ++i) {
        if (i > 0) msg += '.';
        const Frame& f = path_[i];
        if (f.name == nullptr) {
          msg += "(unknown field " + std::to_string(f.index) + ")";
        } else {
          msg += f.name;
          if (f.index >= 0) msg += "[" + std::to_string(f.index) + "]";
        }
      }
      if (npath_ > kMaxFrames) msg += "...";
      msg += ": ";
    }
    msg += detail;
    msg += " at byte " + std::to_string(at);
    status_ = Status(StatusCode::kInvalidArgument, std::move(msg));
    return false;
  }

  bool Varint(size_t* pos, size_t end, uint64_t* v) {
    size_t p = *pos;
    if (p < end && base_[p] < 0x80) {
      *v = base_[p];
      *pos = p + 1;
      return true;
    }
    uint64_t r = 0;
    for (int i = 0; i < 10; ++i) {
      if (p >= end) return Fail(*pos, "varint runs past the end");
      const uint8_t b = base_[p++];
      // The 10th byte's high bits fall off the top, as in upb.
      r |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
      if ((b & 0x80) == 0) {
        *v = r;
        *pos = p;
        return true;
      }
    }
    return Fail(*pos, "varint longer than 10 bytes");
  }

  // Precondition: *pos < end.
  bool Tag(size_t* pos, size_t end, uint32_t* field, uint32_t* wire_type) {
    const size_t at = *pos;
    uint64_t t = 0;
    if (!Varint(pos, end, &t)) return false;
    // upb: at most 5 bytes (overlong forms allowed) and within 32 bits.
    if (*pos - at > 5) return Fail(at, "tag longer than 5 bytes");
    if (t > std::numeric_limits<uint32_t>::max()) return Fail(at, "tag 0x%" PRIx64 " above 32 bits", t);
    *field = static_cast<uint32_t>(t >> 3);
    *wire_type = static_cast<uint32_t>(t & 7);
    return true;
  }

  // Reads a length prefix; on success [*pos, *pos + *len) lies within end.
  bool Length(size_t* pos, size_t end, size_t* len) {
    const size_t at = *pos;
    uint64_t n = 0;
    if (!Varint(pos, end, &n)) return false;
    if (n > kMaxLength) return Fail(at, "length %" PRIu64 " is too large", n);
    if (n > end - *pos) {
      return Fail(at, "length %" PRIu64 " runs past the end of the enclosing message (%zu bytes left)", n,
                  end - *pos);
    }
    *len = static_cast<size_t>(n);
    return true;
  }

  bool Fixed(size_t* pos, size_t end, size_t n, uint64_t* v) {
    if (end - *pos < n) return Fail(*pos, "fixed%zu runs past the end", n * 8);
    uint64_t r = 0;
    std::memcpy(&r, base_ + *pos, n);  // little-endian host
    *v = r;
    *pos += n;
    return true;
  }

  bool String(size_t* pos, size_t end, std::string_view* out) {
    const size_t at = *pos;
    size_t n = 0;
    if (!Length(pos, end, &n)) return false;
    if (!ValidUtf8(base_ + *pos, n)) return Fail(at, "invalid UTF-8 in a string field");
    *out = std::string_view(reinterpret_cast<const char*>(base_ + *pos), n);
    *pos += n;
    return true;
  }

  bool Bytes(size_t* pos, size_t end, WireSpan* out) {
    size_t n = 0;
    if (!Length(pos, end, &n)) return false;
    *out = {base_ + *pos, n};
    *pos += n;
    return true;
  }

  bool Enter(size_t at) {
    if (--depth_ < 0) return Fail(at, "messages and groups nested deeper than %d levels", kMaxDepth);
    return true;
  }
  void Leave() { ++depth_; }

  // A length-delimited sub-message: body(begin, end) parses it.
  template <typename Body>
  bool Sub(size_t* pos, size_t end, size_t tag_at, Body&& body) {
    size_t n = 0;
    if (!Length(pos, end, &n)) return false;
    if (!Enter(tag_at)) return false;
    const size_t b = *pos;
    *pos += n;
    if (!body(b, b + n)) return false;
    Leave();
    return true;
  }

  // Skips an unknown field whose tag (at tag_at) has been read.
  bool SkipField(size_t* pos, size_t end, uint32_t field, uint32_t wire_type, size_t tag_at) {
    if (field == 0) return Fail(tag_at, "field number 0");
    Scope s(this, nullptr, field);
    uint64_t v = 0;
    switch (wire_type) {
      case kVarint:
        return Varint(pos, end, &v);
      case kFixed64:
        return Fixed(pos, end, 8, &v);
      case kFixed32:
        return Fixed(pos, end, 4, &v);
      case kLen: {
        size_t n = 0;
        if (!Length(pos, end, &n)) return false;
        *pos += n;
        return true;
      }
      case kStartGroup:
        return SkipGroup(pos, end, field, tag_at);
      default:  // 6, 7 (END_GROUP is handled by the callers)
        return Fail(tag_at, "invalid wire type %u", wire_type);
    }
  }

  // The fields of one message in [pos, end). on_field(field, wire_type, &pos,
  // tag_at) returns 1 when it consumed a known field, 0 to have it skipped as
  // unknown (unknown number or unexpected wire type), -1 on error.
  // *had_unknown (optional) is set when a field was skipped.
  template <typename OnField>
  bool Fields(size_t pos, size_t end, OnField&& on_field, bool* had_unknown = nullptr) {
    while (pos < end) {
      const size_t tag_at = pos;
      uint32_t field = 0, wire_type = 0;
      if (!Tag(&pos, end, &field, &wire_type)) return false;
      if (wire_type == kEndGroup) return Fail(tag_at, "END_GROUP %u closes no group", field);
      const int r = on_field(field, wire_type, &pos, tag_at);
      if (r < 0) return false;
      if (r == 0) {
        if (!SkipField(&pos, end, field, wire_type, tag_at)) return false;
        if (had_unknown != nullptr) *had_unknown = true;
      }
    }
    return true;
  }

  // The elements of an InferTensorContents in [b, e), validated. For every
  // known field occurrence, emit(field, data, size) gets its raw payload: the
  // varint bytes (one, or a packed run), the fixed bytes (one element or a
  // packed run, a multiple of the element size), or one bytes_contents element.
  template <typename Emit>
  bool Contents(size_t b, size_t e, Emit&& emit) {
    return Fields(b, e, [&](uint32_t f, uint32_t wt, size_t* pos, size_t) -> int {
      if (f < 1 || f > 8) return 0;
      Scope s(this, kContentsNames[f], -1);
      const size_t at = *pos;
      if (f == 8) {
        if (wt != kLen) return 0;
        WireSpan span;
        if (!Bytes(pos, e, &span)) return -1;
        emit(f, span.data, span.size);
        return 1;
      }
      const uint32_t elem_wt = f == 6 ? kFixed32 : f == 7 ? kFixed64 : kVarint;
      uint64_t v = 0;
      if (wt == elem_wt) {
        if (elem_wt == kVarint ? !Varint(pos, e, &v) : !Fixed(pos, e, elem_wt == kFixed32 ? 4 : 8, &v)) {
          return -1;
        }
      } else if (wt == kLen) {  // packed
        size_t n = 0;
        if (!Length(pos, e, &n)) return -1;
        const size_t run = *pos;
        if (elem_wt == kVarint) {
          while (*pos < run + n) {
            if (!Varint(pos, run + n, &v)) return -1;
          }
        } else {
          const size_t size = elem_wt == kFixed32 ? 4 : 8;
          if (n % size != 0) {
            Fail(at, "packed length %zu is not a multiple of %zu", n, size);
            return -1;
          }
          *pos += n;
        }
        emit(f, base_ + run, n);
        return 1;
      } else {
        return 0;
      }
      emit(f, base_ + at, *pos - at);
      return 1;
    });
  }

 private:
  // Skips the body of an unknown group up to its END_GROUP, which must carry
  // the same field number.
  bool SkipGroup(size_t* pos, size_t end, uint32_t field, size_t tag_at) {
    if (!Enter(tag_at)) return false;
    for (;;) {
      if (*pos >= end) return Fail(tag_at, "group %u is not closed", field);
      const size_t at = *pos;
      uint32_t f = 0, wt = 0;
      if (!Tag(pos, end, &f, &wt)) return false;
      if (wt == kEndGroup) {
        if (f != field) return Fail(at, "END_GROUP %u does not match START_GROUP %u", f, field);
        break;
      }
      if (!SkipField(pos, end, f, wt, at)) return false;
    }
    Leave();
    return true;
  }

  static constexpr int kMaxFrames = 8;

  const uint8_t* base_;
  int depth_ = kMaxDepth;
  Frame path_[kMaxFrames];
  int npath_ = 0;
  Status status_;
};

// Keeps one entry per key: the first occurrence's position with the last
// occurrence's value (protobuf's map: a later entry replaces the value).
// Small maps are deduplicated in place; large ones by sorting indexes, so an
// adversarial request with many keys costs O(n log n), not O(n^2).
void DedupeKeys(std::vector<ParameterView>* params, std::vector<uint64_t>* scratch) {
  std::vector<ParameterView>& p = *params;
  const size_t n = p.size();
  if (n < 2) return;
  if (n <= 16) {
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      size_t k = 0;
      while (k < kept && p[k].key != p[i].key) ++k;
      p[k == kept ? kept++ : k] = p[i];
    }
    p.resize(kept);
    return;
  }
  std::vector<uint64_t>& s = *scratch;
  s.resize(n);  // allocates only when a larger map than ever before arrives
  for (size_t i = 0; i < n; ++i) s[i] = i;
  std::sort(s.begin(), s.end(), [&](uint64_t a, uint64_t b) {
    const int c = p[a].key.compare(p[b].key);
    return c < 0 || (c == 0 && a < b);
  });
  // Each run of equal keys becomes (first index << 32 | last index), written
  // over the front of s (never ahead of the run being read).
  size_t groups = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && p[s[j]].key == p[s[i]].key) ++j;
    s[groups++] = (s[i] << 32) | s[j - 1];
    i = j;
  }
  std::sort(s.begin(), s.begin() + groups);
  // Compacting in order of first index: the slot written (k) is never a later
  // group's last index, which is > its first index > k.
  for (size_t k = 0; k < groups; ++k) p[k] = p[s[k] & 0xffffffffu];
  p.resize(groups);
}

// Parses a whole ModelInferRequest into the view.
class RequestParser : public Parser {
 public:
  RequestParser(const uint8_t* data, InferRequestView* view) : Parser(data), view_(view) {}

  bool Request(size_t size) {
    InferRequestView* v = view_;
    size_t n_params = 0;
    const bool ok = Fields(0, size, [&](uint32_t f, uint32_t wt, size_t* pos, size_t tag_at) -> int {
      if (wt != kLen || f < 1 || f > 7) return 0;
      switch (f) {
        case 1: {
          Scope s(this, "model_name", -1);
          return String(pos, size, &v->model_name) ? 1 : -1;
        }
        case 2: {
          Scope s(this, "model_version", -1);
          return String(pos, size, &v->model_version) ? 1 : -1;
        }
        case 3: {
          Scope s(this, "id", -1);
          return String(pos, size, &v->id) ? 1 : -1;
        }
        case 4:
          return MapEntry(pos, size, tag_at, "parameters", n_params++, &v->parameters) ? 1 : -1;
        case 5: {
          Scope s(this, "inputs", static_cast<int64_t>(v->inputs.size()));
          InputTensorView* in = NextInput();
          return Sub(pos, size, tag_at, [&](size_t b, size_t e) { return Input(b, e, in); }) ? 1 : -1;
        }
        case 6: {
          Scope s(this, "outputs", static_cast<int64_t>(v->outputs.size()));
          RequestedOutputView* out = NextOutput();
          return Sub(pos, size, tag_at, [&](size_t b, size_t e) { return Output(b, e, out); }) ? 1 : -1;
        }
        default: {  // 7
          Scope s(this, "raw_input_contents", static_cast<int64_t>(v->raw_input_contents.size()));
          WireSpan span;
          if (!Bytes(pos, size, &span)) return -1;
          v->raw_input_contents.push_back(span);
          return 1;
        }
      }
    });
    if (!ok) return false;
    DedupeKeys(&v->parameters, &v->key_scratch_);
    return true;
  }

 private:
  // The next element of inputs / outputs: a parked one when there is one.
  InputTensorView* NextInput() {
    auto& spare = view_->spare_inputs_;
    if (spare.empty()) {
      view_->inputs.emplace_back();
    } else {
      view_->inputs.push_back(std::move(spare.back()));
      spare.pop_back();
    }
    InputTensorView* in = &view_->inputs.back();
    in->name = {};
    in->datatype = {};
    in->shape.clear();
    in->parameters.clear();
    in->contents.clear();
    return in;
  }

  RequestedOutputView* NextOutput() {
    auto& spare = view_->spare_outputs_;
    if (spare.empty()) {
      view_->outputs.emplace_back();
    } else {
      view_->outputs.push_back(std::move(spare.back()));
      spare.pop_back();
    }
    RequestedOutputView* out = &view_->outputs.back();
    out->name = {};
    out->parameters.clear();
    return out;
  }

  bool Input(size_t b, size_t e, InputTensorView* in) {
    size_t n_params = 0;
    const bool ok = Fields(b, e, [&](uint32_t f, uint32_t wt, size_t* pos, size_t tag_at) -> int {
      switch (f) {
        case 1: {
          if (wt != kLen) return 0;
          Scope s(this, "name", -1);
          return String(pos, e, &in->name) ? 1 : -1;
        }
        case 2: {
          if (wt != kLen) return 0;
          Scope s(this, "datatype", -1);
          return String(pos, e, &in->datatype) ? 1 : -1;
        }
        case 3: {
          Scope s(this, "shape", -1);
          uint64_t d = 0;
          if (wt == kVarint) {
            if (!Varint(pos, e, &d)) return -1;
            in->shape.push_back(static_cast<int64_t>(d));
            return 1;
          }
          if (wt != kLen) return 0;
          size_t n = 0;
          if (!Length(pos, e, &n)) return -1;
          const size_t run_end = *pos + n;
          while (*pos < run_end) {
            if (!Varint(pos, run_end, &d)) return -1;
            in->shape.push_back(static_cast<int64_t>(d));
          }
          return 1;
        }
        case 4:
          if (wt != kLen) return 0;
          return MapEntry(pos, e, tag_at, "parameters", n_params++, &in->parameters) ? 1 : -1;
        case 5: {
          if (wt != kLen) return 0;
          Scope s(this, "contents", -1);
          return Sub(pos, e, tag_at,
                     [&](size_t cb, size_t ce) {
                       if (!Contents(cb, ce, [](uint32_t, const uint8_t*, size_t) {})) return false;
                       in->contents.push_back({base() + cb, ce - cb});
                       return true;
                     })
                     ? 1
                     : -1;
        }
        default:
          return 0;
      }
    });
    if (!ok) return false;
    DedupeKeys(&in->parameters, &view_->key_scratch_);
    return true;
  }

  bool Output(size_t b, size_t e, RequestedOutputView* out) {
    size_t n_params = 0;
    const bool ok = Fields(b, e, [&](uint32_t f, uint32_t wt, size_t* pos, size_t tag_at) -> int {
      if (wt != kLen) return 0;
      if (f == 1) {
        Scope s(this, "name", -1);
        return String(pos, e, &out->name) ? 1 : -1;
      }
      if (f == 2) return MapEntry(pos, e, tag_at, "parameters", n_params++, &out->parameters) ? 1 : -1;
      return 0;
    });
    if (!ok) return false;
    DedupeKeys(&out->parameters, &view_->key_scratch_);
    return true;
  }

  // One map<string, InferParameter> entry (key = 1, value = 2), appended to
  // *params unless it holds an unknown field: upb then keeps the whole entry
  // as an unknown field of the parent instead of putting it in the map.
  bool MapEntry(size_t* pos, size_t end, size_t tag_at, const char* name, size_t index,
                std::vector<ParameterView>* params) {
    Scope s(this, name, static_cast<int64_t>(index));
    ParameterView pv;
    bool had_unknown = false;
    const bool ok = Sub(pos, end, tag_at, [&](size_t b, size_t e) {
      return Fields(
          b, e,
          [&](uint32_t f, uint32_t wt, size_t* p, size_t at) -> int {
            if (wt != kLen || (f != 1 && f != 2)) return 0;
            if (f == 1) {
              Scope k(this, "key", -1);
              return String(p, e, &pv.key) ? 1 : -1;
            }
            Scope v(this, "value", -1);
            // Several values merge into one InferParameter.
            return Sub(p, e, at, [&](size_t vb, size_t ve) { return Parameter(vb, ve, &pv); }) ? 1 : -1;
          },
          &had_unknown);
    });
    if (!ok) return false;
    if (!had_unknown) params->push_back(pv);
    return true;
  }

  // An InferParameter merged into *pv: the oneof member set last wins.
  bool Parameter(size_t b, size_t e, ParameterView* pv) {
    return Fields(b, e, [&](uint32_t f, uint32_t wt, size_t* pos, size_t) -> int {
      uint64_t v = 0;
      switch (f) {
        case 1:
        case 2:
        case 5: {
          if (wt != kVarint) return 0;
          Scope s(this, f == 1 ? "bool_param" : f == 2 ? "int64_param" : "uint64_param", -1);
          if (!Varint(pos, e, &v)) return -1;
          if (f == 1) {
            pv->kind = ParameterView::Kind::kBool;
            pv->bool_value = v != 0;
          } else if (f == 2) {
            pv->kind = ParameterView::Kind::kInt64;
            pv->int64_value = static_cast<int64_t>(v);
          } else {
            pv->kind = ParameterView::Kind::kUint64;
            pv->uint64_value = v;
          }
          return 1;
        }
        case 3: {
          if (wt != kLen) return 0;
          Scope s(this, "string_param", -1);
          if (!String(pos, e, &pv->string_value)) return -1;
          pv->kind = ParameterView::Kind::kString;
          return 1;
        }
        case 4: {
          if (wt != kFixed64) return 0;
          Scope s(this, "double_param", -1);
          if (!Fixed(pos, e, 8, &v)) return -1;
          std::memcpy(&pv->double_value, &v, 8);
          pv->kind = ParameterView::Kind::kDouble;
          return 1;
        }
        default:
          return 0;
      }
    });
  }

  InferRequestView* view_;
};

// Calls emit(field, data, size) for each occurrence of a field listed in
// `mask` (bit 1 << field) in the input's contents; see Parser::Contents.
// False only when the view was not filled by ParseInferRequest.
template <typename Emit>
bool VisitContents(const InputTensorView& input, uint32_t mask, Emit&& emit) {
  for (const WireSpan& span : input.contents) {
    Parser p(span.data);
    const bool ok = p.Contents(0, span.size, [&](uint32_t f, const uint8_t* data, size_t size) {
      if (mask & (1u << f)) emit(f, data, size);
    });
    if (!ok) return false;
  }
  return true;
}

// Elements in one payload reported by VisitContents.
uint64_t RunCount(uint32_t field, const uint8_t* data, size_t size) {
  if (field == 8) return 1;
  if (field == 6) return size / 4;
  if (field == 7) return size / 8;
  uint64_t n = 0;  // validated varints: one terminating byte each
  for (size_t i = 0; i < size; ++i) n += data[i] < 0x80;
  return n;
}

// Decodes the next varint of a validated run.
uint64_t NextVarint(const uint8_t** p) {
  uint64_t r = 0;
  for (int i = 0; i < 10; ++i) {
    const uint8_t b = *(*p)++;
    r |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
    if ((b & 0x80) == 0) break;
  }
  return r;
}

struct ElementType {
  const char* name;
  ContentsField field;
  size_t size;  // 0 for BYTES
};

constexpr ElementType kElementTypes[] = {
    {"BOOL", ContentsField::kBool, 1},     {"INT8", ContentsField::kInt, 1},
    {"INT16", ContentsField::kInt, 2},     {"INT32", ContentsField::kInt, 4},
    {"INT64", ContentsField::kInt64, 8},   {"UINT8", ContentsField::kUint, 1},
    {"UINT16", ContentsField::kUint, 2},   {"UINT32", ContentsField::kUint, 4},
    {"UINT64", ContentsField::kUint64, 8}, {"FP32", ContentsField::kFp32, 4},
    {"FP64", ContentsField::kFp64, 8},     {"BYTES", ContentsField::kBytes, 0},
};

Status InputError(const InputTensorView& input, const std::string& what) {
  return Status(StatusCode::kInvalidArgument, "input '" + std::string(input.name) + "': " + what);
}

}  // namespace

Status ParseInferRequest(const uint8_t* data, size_t size, InferRequestView* view) {
  // Park the previous request's tensors (their vectors keep their capacity),
  // last first, so that the next request takes them back in the same order.
  for (auto it = view->inputs.rbegin(); it != view->inputs.rend(); ++it) {
    view->spare_inputs_.push_back(std::move(*it));
  }
  for (auto it = view->outputs.rbegin(); it != view->outputs.rend(); ++it) {
    view->spare_outputs_.push_back(std::move(*it));
  }
  view->inputs.clear();
  view->outputs.clear();
  view->model_name = {};
  view->model_version = {};
  view->id = {};
  view->parameters.clear();
  view->raw_input_contents.clear();
  if (size == 0) return Status::Ok();
  if (data == nullptr) return Status(StatusCode::kInvalidArgument, "malformed ModelInferRequest: no data");
  RequestParser parser(data, view);
  if (!parser.Request(size)) return parser.status();
  return Status::Ok();
}

const ParameterView* InferRequestView::FindParameter(std::string_view key) const {
  for (const ParameterView& p : parameters) {
    if (p.key == key) return &p;
  }
  return nullptr;
}

uint32_t ContentsFieldsPresent(const InputTensorView& input) {
  uint32_t present = 0;
  VisitContents(input, 0x1feu, [&](uint32_t f, const uint8_t*, size_t size) {
    // A packed run of length 0 holds no element; a bytes element always counts.
    if (size > 0 || f == 8) present |= 1u << f;
  });
  return present;
}

uint64_t ContentsCount(const InputTensorView& input, ContentsField field) {
  const uint32_t f = static_cast<uint32_t>(field);
  if (f < 1 || f > 8) return 0;
  uint64_t n = 0;
  VisitContents(input, 1u << f,
                [&](uint32_t, const uint8_t* data, size_t size) { n += RunCount(f, data, size); });
  return n;
}

uint64_t ContentsBytesSize(const InputTensorView& input) {
  uint64_t n = 0;
  VisitContents(input, 1u << 8, [&](uint32_t, const uint8_t*, size_t size) { n += 4 + size; });
  return n;
}

Status DecodeContents(const InputTensorView& input, ContentsField field, std::string_view datatype,
                      uint8_t* dst, uint64_t count, size_t dst_size) {
  const ElementType* type = nullptr;
  for (const ElementType& t : kElementTypes) {
    if (datatype == t.name) type = &t;
  }
  if (type == nullptr) {
    if (datatype == "FP16" || datatype == "BF16") {
      return InputError(input, "datatype " + std::string(datatype) +
                                   " has no typed contents field (send it in raw_input_contents)");
    }
    return InputError(input, "unknown datatype '" + std::string(datatype) + "'");
  }
  const uint32_t f = static_cast<uint32_t>(field);
  if (field != type->field) {
    const char* given = f >= 1 && f <= 8 ? kContentsNames[f] : "no field";
    return InputError(input, "datatype " + std::string(datatype) + " takes " +
                                 kContentsNames[static_cast<uint32_t>(type->field)] + ", not " + given);
  }
  if (type->size != 0 && (dst_size % type->size != 0 || dst_size / type->size != count)) {
    return InputError(input, "DecodeContents: " + std::to_string(dst_size) + " bytes of room for " +
                                 std::to_string(count) + " " + type->name + " elements");
  }

  uint64_t index = 0;  // element index over every contents occurrence
  size_t written = 0;  // bytes written to dst
  Status error;
  auto fail = [&](std::string what) {
    if (error.ok()) error = InputError(input, std::move(what));
  };
  const bool ok = VisitContents(input, 1u << f, [&](uint32_t, const uint8_t* data, size_t size) {
    if (!error.ok()) return;
    if (f == 8) {  // one BYTES element: 4-byte little-endian length, then the bytes
      if (index >= count || dst_size - written < 4 || dst_size - written - 4 < size) {
        return fail("DecodeContents: more bytes_contents than room for");
      }
      const uint32_t len = static_cast<uint32_t>(size);  // < 2^31 (checked by the parser)
      std::memcpy(dst + written, &len, 4);
      if (size > 0) std::memcpy(dst + written + 4, data, size);
      written += 4 + size;
      ++index;
      return;
    }
    if (f == 6 || f == 7) {  // fixed-width: the wire bytes are the little-endian elements
      const uint64_t n = size / type->size;
      if (n > count - index) return fail("DecodeContents: more elements than count");
      if (size > 0) std::memcpy(dst + index * type->size, data, size);
      index += n;
      return;
    }
    const uint8_t* p = data;
    const uint8_t* end = data + size;
    while (p < end) {
      if (index >= count) return fail("DecodeContents: more elements than count");
      const uint64_t v = NextVarint(&p);
      uint8_t* out = dst + index * type->size;
      if (field == ContentsField::kBool) {
        *out = v != 0;
      } else if (field == ContentsField::kInt) {
        const int32_t x = static_cast<int32_t>(static_cast<uint32_t>(v));  // int32 truncates, as protobuf
        const int64_t lo = type->size == 1 ? INT8_MIN : type->size == 2 ? INT16_MIN : INT32_MIN;
        const int64_t hi = type->size == 1 ? INT8_MAX : type->size == 2 ? INT16_MAX : INT32_MAX;
        if (x < lo || x > hi) {
          return fail(std::string("int_contents[") + std::to_string(index) + "] = " + std::to_string(x) +
                      " is out of range for " + type->name + " [" + std::to_string(lo) + ", " +
                      std::to_string(hi) + "]");
        }
        const int8_t x8 = static_cast<int8_t>(x);
        const int16_t x16 = static_cast<int16_t>(x);
        std::memcpy(out,
                    type->size == 1   ? static_cast<const void*>(&x8)
                    : type->size == 2 ? static_cast<const void*>(&x16)
                                      : static_cast<const void*>(&x),
                    type->size);
      } else if (field == ContentsField::kUint) {
        const uint32_t x = static_cast<uint32_t>(v);
        const uint64_t hi = type->size == 1 ? UINT8_MAX : type->size == 2 ? UINT16_MAX : UINT32_MAX;
        if (x > hi) {
          return fail(std::string("uint_contents[") + std::to_string(index) + "] = " + std::to_string(x) +
                      " is out of range for " + type->name + " [0, " + std::to_string(hi) + "]");
        }
        const uint8_t x8 = static_cast<uint8_t>(x);
        const uint16_t x16 = static_cast<uint16_t>(x);
        std::memcpy(out,
                    type->size == 1   ? static_cast<const void*>(&x8)
                    : type->size == 2 ? static_cast<const void*>(&x16)
                                      : static_cast<const void*>(&x),
                    type->size);
      } else {  // int64 / uint64: the varint's 64 bits
        std::memcpy(out, &v, 8);
      }
      ++index;
    }
  });
  if (!ok) return Status(StatusCode::kInternal, "DecodeContents: the view was not made by ParseInferRequest");
  if (!error.ok()) return error;
  if (index != count) {
    return InputError(input, "DecodeContents: " + std::to_string(index) + " elements in " +
                                 kContentsNames[f] + ", count says " + std::to_string(count));
  }
  if (f == 8 && written != dst_size) {
    return InputError(input, "DecodeContents: bytes_contents take " + std::to_string(written) +
                                 " bytes, dst_size says " + std::to_string(dst_size));
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Writer

namespace {

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// A length-delimited field with a one-byte tag (every field number here < 16).
size_t LenFieldSize(size_t len) { return 1 + VarintSize(len) + len; }
size_t StringFieldSize(std::string_view s) { return s.empty() ? 0 : LenFieldSize(s.size()); }

uint8_t* PutVarint(uint8_t* w, uint64_t v) {
  while (v >= 0x80) {
    *w++ = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  *w++ = static_cast<uint8_t>(v);
  return w;
}

uint8_t* PutLenHeader(uint8_t* w, uint32_t field, size_t len) {
  *w++ = static_cast<uint8_t>(field << 3 | kLen);
  return PutVarint(w, len);
}

uint8_t* PutBytes(uint8_t* w, uint32_t field, const void* data, size_t len) {
  w = PutLenHeader(w, field, len);
  if (len > 0) std::memcpy(w, data, len);
  return w + len;
}

// proto3: an empty string is the default and is not written.
uint8_t* PutString(uint8_t* w, uint32_t field, std::string_view s) {
  return s.empty() ? w : PutBytes(w, field, s.data(), s.size());
}

}  // namespace

void ResponseWriter::Begin(std::string_view model_name, std::string_view model_version, std::string_view id) {
  model_name_ = model_name;
  model_version_ = model_version;
  id_ = id;
  params_.clear();
  outputs_.clear();
}

void ResponseWriter::AddParameterBool(std::string_view key, bool value) {
  params_.push_back({key, ParameterView::Kind::kBool, value, 0, {}});
}

void ResponseWriter::AddParameterInt64(std::string_view key, int64_t value) {
  params_.push_back({key, ParameterView::Kind::kInt64, false, value, {}});
}

void ResponseWriter::AddParameterString(std::string_view key, std::string_view value) {
  params_.push_back({key, ParameterView::Kind::kString, false, 0, value});
}

void ResponseWriter::AddOutput(std::string_view name, std::string_view datatype, const int64_t* shape,
                               size_t rank, const uint8_t* raw, size_t raw_size) {
  outputs_.push_back({name, datatype, shape, rank, raw, raw_size});
}

void ResponseWriter::Finish(std::string* out) {
  // Sizes of the nested messages; each is computed again when written (a few
  // varint sizes), which keeps the writer free of per-response allocations.
  auto value_size = [](const Param& p) -> size_t {  // InferParameter
    switch (p.kind) {
      case ParameterView::Kind::kBool:
        return 2;
      case ParameterView::Kind::kInt64:
        return 1 + VarintSize(static_cast<uint64_t>(p.i));
      default:
        return LenFieldSize(p.s.size());
    }
  };
  // Map entries always carry key and value, as protobuf writes them.
  auto entry_size = [&](const Param& p) { return LenFieldSize(p.key.size()) + LenFieldSize(value_size(p)); };
  auto shape_size = [](const Output& o) {
    size_t n = 0;
    for (size_t d = 0; d < o.rank; ++d) n += VarintSize(static_cast<uint64_t>(o.shape[d]));
    return n;
  };
  auto output_size = [&](const Output& o) {
    const size_t s = shape_size(o);
    return StringFieldSize(o.name) + StringFieldSize(o.datatype) + (o.rank > 0 ? LenFieldSize(s) : 0);
  };

  size_t total = StringFieldSize(model_name_) + StringFieldSize(model_version_) + StringFieldSize(id_);
  for (const Param& p : params_) total += LenFieldSize(entry_size(p));
  for (const Output& o : outputs_) total += LenFieldSize(output_size(o)) + LenFieldSize(o.raw_size);

  out->resize(total);  // keeps the string's capacity
  uint8_t* w = reinterpret_cast<uint8_t*>(&(*out)[0]);
  w = PutString(w, 1, model_name_);
  w = PutString(w, 2, model_version_);
  w = PutString(w, 3, id_);
  for (const Param& p : params_) {
    w = PutLenHeader(w, 4, entry_size(p));
    w = PutBytes(w, 1, p.key.data(), p.key.size());
    w = PutLenHeader(w, 2, value_size(p));
    switch (p.kind) {
      case ParameterView::Kind::kBool:
        *w++ = 1 << 3 | kVarint;
        *w++ = p.b ? 1 : 0;
        break;
      case ParameterView::Kind::kInt64:
        *w++ = 2 << 3 | kVarint;
        w = PutVarint(w, static_cast<uint64_t>(p.i));
        break;
      default:
        w = PutBytes(w, 3, p.s.data(), p.s.size());
        break;
    }
  }
  for (const Output& o : outputs_) {
    w = PutLenHeader(w, 5, output_size(o));
    w = PutString(w, 1, o.name);
    w = PutString(w, 2, o.datatype);
    if (o.rank > 0) {
      w = PutLenHeader(w, 3, shape_size(o));
      for (size_t d = 0; d < o.rank; ++d) w = PutVarint(w, static_cast<uint64_t>(o.shape[d]));
    }
  }
  for (const Output& o : outputs_) w = PutBytes(w, 6, o.raw, o.raw_size);
}

}  // namespace steadyserve
