#include "steadyserve/v2_wire.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <new>
#include <string>
#include <vector>

#include "check.h"

using namespace steadyserve;

// Counts heap allocations, to pin "no allocation in steady state". (gcc's
// -Wmismatched-new-delete cannot see that these replacements pair malloc with free.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
static std::atomic<uint64_t> g_allocations{0};
void* operator new(size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

// ---- a hand encoder for the wire format --------------------------------------------------------

std::string V(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s += static_cast<char>(v | 0x80);
    v >>= 7;
  }
  s += static_cast<char>(v);
  return s;
}
std::string T(uint32_t field, uint32_t wt) { return V(uint64_t{field} << 3 | wt); }
std::string L(uint32_t field, const std::string& body) { return T(field, 2) + V(body.size()) + body; }
std::string Vf(uint32_t field, uint64_t v) { return T(field, 0) + V(v); }
std::string Fixed32(float x) {
  std::string s(4, '\0');
  std::memcpy(&s[0], &x, 4);
  return s;
}
std::string Fixed64(double x) {
  std::string s(8, '\0');
  std::memcpy(&s[0], &x, 8);
  return s;
}
// A parameters map entry.
std::string Entry(uint32_t field, const std::string& key, const std::string& value) {
  return L(field, L(1, key) + L(2, value));
}

Status Parse(const std::string& s, InferRequestView* v) {
  return ParseInferRequest(reinterpret_cast<const uint8_t*>(s.data()), s.size(), v);
}

void Refused(const std::string& bytes, const char* needle) {
  InferRequestView v;
  const Status s = Parse(bytes, &v);
  if (s.ok()) {
    std::fprintf(stderr, "expected a refusal containing '%s'\n", needle);
    std::exit(1);
  }
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK_CONTAINS(s.message(), needle);
}

// The view points into its buffer: keep every accepted buffer alive (test only).
InferRequestView Accepted(const std::string& bytes) {
  static std::deque<std::string> kept;
  kept.push_back(bytes);
  InferRequestView v;
  const Status s = Parse(kept.back(), &v);
  if (!s.ok()) {
    std::fprintf(stderr, "refused: %s\n", s.message().c_str());
    std::exit(1);
  }
  return v;
}

template <typename T>
std::vector<T> Decode(const InputTensorView& in, ContentsField f, const char* datatype) {
  const uint64_t n = ContentsCount(in, f);
  std::vector<T> out(n);
  const Status s = DecodeContents(in, f, datatype, reinterpret_cast<uint8_t*>(out.data()), n, n * sizeof(T));
  if (!s.ok()) {
    std::fprintf(stderr, "DecodeContents: %s\n", s.message().c_str());
    std::exit(1);
  }
  return out;
}

Status DecodeInto(const InputTensorView& in, ContentsField f, const char* datatype, size_t elem) {
  const uint64_t n = ContentsCount(in, f);
  std::vector<uint8_t> out(n * elem + 1);
  return DecodeContents(in, f, datatype, out.data(), n, n * elem);
}

// A request with every kind of field, as a client would send it.
std::string FullRequest() {
  std::string r;
  r += L(1, "resnet");
  r += L(2, "3");
  r += L(3, "req-7");
  r += Entry(4, "flag", Vf(1, 1));
  r += Entry(4, "priority", Vf(2, static_cast<uint64_t>(-5)));
  r += Entry(4, "tag", L(3, "blue"));
  r += Entry(4, "ratio", T(4, 1) + Fixed64(0.25));
  r += Entry(4, "big", Vf(5, UINT64_MAX));
  // inputs[0]: raw FP32 [2, 2] with an input parameter
  r += L(5, L(1, "x") + L(2, "FP32") + L(3, V(2) + V(2)) + Entry(4, "layout", L(3, "nchw")));
  // inputs[1]: typed INT32 [3]
  r += L(5, L(1, "y") + L(2, "INT32") + Vf(3, 3) + L(5, L(2, V(1) + V(static_cast<uint64_t>(-2)) + V(300))));
  // requested outputs
  r += L(6, L(1, "probs") + Entry(2, "classification", Vf(2, 3)));
  r += L(6, L(1, "logits"));
  r += L(7, std::string(16, '\x01'));
  return r;
}

}  // namespace

TEST(parses_a_full_request) {
  const InferRequestView v = Accepted(FullRequest());
  CHECK(v.model_name == "resnet");
  CHECK(v.model_version == "3");
  CHECK(v.id == "req-7");
  CHECK_EQ(v.parameters.size(), size_t{5});
  const ParameterView* p = v.FindParameter("flag");
  CHECK(p != nullptr && p->kind == ParameterView::Kind::kBool && p->bool_value);
  p = v.FindParameter("priority");
  CHECK(p != nullptr && p->kind == ParameterView::Kind::kInt64);
  CHECK_EQ(p->int64_value, int64_t{-5});
  p = v.FindParameter("tag");
  CHECK(p != nullptr && p->kind == ParameterView::Kind::kString && p->string_value == "blue");
  p = v.FindParameter("ratio");
  CHECK(p != nullptr && p->kind == ParameterView::Kind::kDouble && p->double_value == 0.25);
  p = v.FindParameter("big");
  CHECK(p != nullptr && p->kind == ParameterView::Kind::kUint64 && p->uint64_value == UINT64_MAX);
  CHECK(v.FindParameter("missing") == nullptr);

  CHECK_EQ(v.inputs.size(), size_t{2});
  CHECK(v.inputs[0].name == "x" && v.inputs[0].datatype == "FP32");
  CHECK(v.inputs[0].shape == (std::vector<int64_t>{2, 2}));
  CHECK_EQ(v.inputs[0].parameters.size(), size_t{1});
  CHECK(v.inputs[0].parameters[0].key == "layout" && v.inputs[0].parameters[0].string_value == "nchw");
  CHECK(v.inputs[0].contents.empty());
  CHECK_EQ(ContentsFieldsPresent(v.inputs[0]), uint32_t{0});

  CHECK(v.inputs[1].shape == (std::vector<int64_t>{3}));
  CHECK_EQ(ContentsFieldsPresent(v.inputs[1]), uint32_t{1u << 2});
  CHECK(Decode<int32_t>(v.inputs[1], ContentsField::kInt, "INT32") == (std::vector<int32_t>{1, -2, 300}));

  CHECK_EQ(v.outputs.size(), size_t{2});
  CHECK(v.outputs[0].name == "probs" && v.outputs[1].name == "logits");
  CHECK_EQ(v.outputs[0].parameters.size(), size_t{1});
  CHECK_EQ(v.outputs[0].parameters[0].int64_value, int64_t{3});
  CHECK_EQ(v.raw_input_contents.size(), size_t{1});
  CHECK_EQ(v.raw_input_contents[0].size, size_t{16});
}

TEST(empty_buffer_is_the_default_request) {
  InferRequestView v = Accepted(FullRequest());
  CHECK(Parse("", &v).ok());
  CHECK(v.model_name.empty() && v.inputs.empty() && v.parameters.empty() && v.raw_input_contents.empty());
}

TEST(packed_and_unpacked_repeated_scalars_mix) {
  // shape 1, 2 packed; 3 unpacked; 4, 5 in a second packed run.
  const InferRequestView v = Accepted(L(5, L(3, V(1) + V(2)) + Vf(3, 3) + L(3, V(4) + V(5)) + L(3, "")));
  CHECK(v.inputs[0].shape == (std::vector<int64_t>{1, 2, 3, 4, 5}));
  const std::string contents = L(6, Fixed32(1.5f) + Fixed32(2.5f)) + T(6, 5) + Fixed32(3.5f) +
                               L(7, Fixed64(1.0)) + T(7, 1) + Fixed64(2.0) + Vf(1, 1) + L(1, V(0) + V(7));
  const InferRequestView w = Accepted(L(5, L(5, contents)));
  const InputTensorView& in = w.inputs[0];
  CHECK_EQ(ContentsFieldsPresent(in), uint32_t{(1u << 1) | (1u << 6) | (1u << 7)});
  CHECK(Decode<float>(in, ContentsField::kFp32, "FP32") == (std::vector<float>{1.5f, 2.5f, 3.5f}));
  CHECK(Decode<double>(in, ContentsField::kFp64, "FP64") == (std::vector<double>{1.0, 2.0}));
  CHECK(Decode<uint8_t>(in, ContentsField::kBool, "BOOL") == (std::vector<uint8_t>{1, 0, 1}));
  // An empty packed run holds no element: the field is not present.
  const InferRequestView e = Accepted(L(5, L(5, L(2, ""))));
  CHECK_EQ(ContentsFieldsPresent(e.inputs[0]), uint32_t{0});
}

TEST(contents_occurrences_merge_in_order) {
  const InferRequestView v =
      Accepted(L(5, L(5, L(3, V(1) + V(2))) + L(1, "x") + L(5, Vf(3, 3)) + L(5, "") + L(5, L(3, V(4)))));
  const InputTensorView& in = v.inputs[0];
  CHECK_EQ(in.contents.size(), size_t{4});
  CHECK_EQ(ContentsCount(in, ContentsField::kInt64), uint64_t{4});
  CHECK(Decode<int64_t>(in, ContentsField::kInt64, "INT64") == (std::vector<int64_t>{1, 2, 3, 4}));
}

TEST(singular_fields_last_wins) {
  const InferRequestView v = Accepted(L(1, "a") + L(1, "b") + L(3, "x") + L(5, L(1, "n1") + L(1, "n2")));
  CHECK(v.model_name == "b");
  CHECK(v.id == "x");
  CHECK(v.inputs[0].name == "n2");
}

TEST(map_semantics_match_protobuf) {
  // Duplicate keys: the last entry's value, at the first entry's position.
  InferRequestView v = Accepted(Entry(4, "k", Vf(2, 1)) + Entry(4, "j", Vf(2, 2)) + Entry(4, "k", L(3, "s")));
  CHECK_EQ(v.parameters.size(), size_t{2});
  CHECK(v.parameters[0].key == "k" && v.parameters[0].kind == ParameterView::Kind::kString);
  CHECK(v.parameters[0].string_value == "s");
  CHECK(v.parameters[1].key == "j" && v.parameters[1].int64_value == 2);
  // The oneof: the member set last wins, also when one member repeats.
  v = Accepted(Entry(4, "k", L(3, "a") + Vf(1, 0) + T(4, 1) + Fixed64(2.0) + L(3, "b") + L(3, "c")));
  CHECK(v.parameters[0].kind == ParameterView::Kind::kString && v.parameters[0].string_value == "c");
  // Several values in one entry merge; an empty one changes nothing.
  v = Accepted(L(4, L(1, "k") + L(2, Vf(5, 9)) + L(2, "")));
  CHECK(v.parameters[0].kind == ParameterView::Kind::kUint64 && v.parameters[0].uint64_value == 9);
  // Missing key: ""; missing value: unset.
  v = Accepted(L(4, L(2, Vf(1, 1))) + L(4, L(1, "novalue")));
  CHECK_EQ(v.parameters.size(), size_t{2});
  CHECK(v.parameters[0].key.empty() && v.parameters[0].kind == ParameterView::Kind::kBool);
  CHECK(v.parameters[1].kind == ParameterView::Kind::kNone);
  // An entry with an unknown field (or a key of the wrong wire type) is not in the map,
  // and does not replace an earlier entry of its key.
  v = Accepted(Entry(4, "k", Vf(2, 1)) + L(4, L(1, "k") + L(2, Vf(2, 2)) + Vf(3, 0)) +
               L(4, Vf(1, 5) + L(2, Vf(2, 3))) + L(4, L(1, "g") + T(9, 3) + T(9, 4)));
  CHECK_EQ(v.parameters.size(), size_t{1});
  CHECK(v.parameters[0].key == "k" && v.parameters[0].int64_value == 1);
  // ... but an unknown field inside the value is fine.
  v = Accepted(L(4, L(1, "k") + L(2, Vf(2, 2) + Vf(9, 1))));
  CHECK_EQ(v.parameters.size(), size_t{1});
  // The strings of a dropped entry are still checked.
  Refused(L(4, L(1, "\xff") + Vf(3, 0)), "invalid UTF-8");
}

TEST(large_maps_dedupe_like_small_ones) {
  // 40 entries over 13 keys: the sorting path.
  std::string r;
  for (int i = 0; i < 40; ++i) r += Entry(4, "key" + std::to_string(i % 13), Vf(2, i));
  const InferRequestView v = Accepted(r);
  CHECK_EQ(v.parameters.size(), size_t{13});
  for (int k = 0; k < 13; ++k) {
    CHECK(v.parameters[k].key == "key" + std::to_string(k));  // first-occurrence order
    const int last = k + 13 * ((39 - k) / 13);
    CHECK_EQ(v.parameters[k].int64_value, int64_t{last});
  }
}

TEST(known_field_with_wrong_wire_type_is_skipped) {
  const InferRequestView v = Accepted(L(1, "m") + Vf(1, 7) + T(1, 5) + "abcd" + T(5, 0) + V(3) + T(6, 1) +
                                      Fixed64(0) + L(5, Vf(1, 1) + T(3, 1) + Fixed64(0)) + T(7, 3) + T(7, 4));
  CHECK(v.model_name == "m");
  CHECK_EQ(v.inputs.size(), size_t{1});
  CHECK(v.inputs[0].shape.empty());
  CHECK(v.outputs.empty() && v.raw_input_contents.empty());
  // fp32_contents as fixed64, int_contents as fixed32: unknown, so no elements.
  const InferRequestView w = Accepted(L(5, L(5, T(6, 1) + Fixed64(1) + T(2, 5) + "abcd")));
  CHECK_EQ(ContentsFieldsPresent(w.inputs[0]), uint32_t{0});
}

TEST(unknown_fields_and_groups_are_skipped) {
  const InferRequestView v = Accepted(Vf(99, 1) + T(98, 1) + Fixed64(0) + T(97, 5) + "abcd" +
                                      L(96, "\xff\xff") + T(20, 3) + T(21, 3) + Vf(1, 1) + L(2, "x") +
                                      T(21, 4) + T(20, 4) + L(1, "m") + T((1u << 29) - 1, 0) + V(1));
  CHECK(v.model_name == "m");
  // A 5-byte overlong tag is fine.
  CHECK(Accepted(std::string("\x8a\x80\x80\x80\x00", 5) + V(1) + "m").model_name == "m");
  // 100 nested groups are the limit at the top level.
  std::string g;
  for (int i = 0; i < 100; ++i) g += T(20, 3);
  for (int i = 0; i < 100; ++i) g += T(20, 4);
  Accepted(g);
}

TEST(refuses_malformed_varints_and_lengths) {
  Refused(L(5, L(3, "\x80")), "field inputs[0].shape: varint runs past the end at byte 4");
  Refused(L(5, L(1, "a")) + L(5, T(3, 0) + "\xff"), "field inputs[1].shape: varint runs past the end");
  Refused(Vf(9, 0).substr(0, 1) + std::string(10, '\xff') + "\x01", "varint longer than 10 bytes");
  Refused(T(1, 2) + V(5) + "abc", "field model_name: length 5 runs past the end of the enclosing message");
  Refused(T(7, 2) + V(UINT64_MAX) + "a", "too large");
  Refused(T(7, 2) + V(1ull << 31) + "a", "too large");
  // A length that fits the buffer but not the enclosing message.
  Refused(L(5, T(1, 2) + V(3) + "ab") + "cd", "field inputs[0].name: length 3 runs past the end");
  Refused(std::string("\x8a\x80\x80\x80\x80\x00", 6), "tag longer than 5 bytes");
  Refused(std::string("\x8a\x80\x80\x80\x10", 5), "above 32 bits");
  Refused(std::string(1, '\x8a'), "varint runs past the end at byte 0");
  Refused(L(5, L(5, T(6, 5) + "abc")), "field inputs[0].contents.fp32_contents: fixed32 runs past the end");
  Refused(L(5, L(5, L(7, "1234567"))), "packed length 7 is not a multiple of 8");
  Refused(L(5, L(5, L(2, "\x80"))), "field inputs[0].contents.int_contents: varint runs past the end");
}

TEST(refuses_bad_tags) {
  Refused(Vf(0, 1), "field number 0 at byte 0");
  Refused(L(1, "m") + T(9, 6), "invalid wire type 6 at byte 3");
  Refused(T(9, 7), "invalid wire type 7");
  Refused(L(5, L(4, Vf(0, 1))), "field inputs[0].parameters[0]: field number 0");
}

TEST(refuses_bad_group_nesting) {
  Refused(T(5, 4), "END_GROUP 5 closes no group at byte 0");
  Refused(L(5, T(3, 4)), "closes no group");
  Refused(T(20, 3) + T(21, 4), "END_GROUP 21 does not match START_GROUP 20");
  Refused(T(20, 3) + Vf(1, 1), "group 20 is not closed");
  // A group may not run past the end of its enclosing message.
  Refused(L(5, T(20, 3)) + T(20, 4), "group 20 is not closed");
  Refused(T(20, 3) + T(21, 6) + T(20, 4), "invalid wire type 6");
  Refused(T(20, 3) + Vf(0, 1) + T(20, 4), "field number 0");
  std::string g;
  for (int i = 0; i < 101; ++i) g += T(20, 3);
  for (int i = 0; i < 101; ++i) g += T(20, 4);
  Refused(g, "nested deeper than 100 levels");
  // Sub-messages count too: request > entry > value leaves 98 levels.
  std::string h, k;
  for (int i = 0; i < 98; ++i) h += T(20, 3), k += T(20, 4);
  Accepted(L(4, L(1, "k") + L(2, h + k)));
  Refused(L(4, L(1, "k") + L(2, h + T(20, 3) + T(20, 4) + k)), "nested deeper");
}

TEST(refuses_invalid_utf8_in_string_fields) {
  const char* bad[] = {"\xff", "\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "a\x80"};
  for (const char* b : bad) {
    Refused(L(1, b), "field model_name: invalid UTF-8");
    Refused(L(2, b), "field model_version: invalid UTF-8");
    Refused(L(3, b), "field id: invalid UTF-8");
    Refused(L(5, L(1, b)), "field inputs[0].name: invalid UTF-8");
    Refused(L(5, L(2, b)), "field inputs[0].datatype: invalid UTF-8");
    Refused(L(6, L(1, b)), "field outputs[0].name: invalid UTF-8");
    Refused(Entry(4, b, ""), "field parameters[0].key: invalid UTF-8");
    Refused(L(6, Entry(2, "k", L(3, b))), "field outputs[0].parameters[0].value.string_param: invalid UTF-8");
  }
  // Valid: NUL, 2-, 3- and 4-byte forms, the last code point; bytes fields are not checked.
  const InferRequestView v =
      Accepted(L(1, std::string("\0\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf", 14)) +
               L(7, "\xff") + L(5, L(5, L(8, "\xff"))) + L(99, "\xff"));
  CHECK_EQ(v.model_name.size(), size_t{14});
}

TEST(typed_contents_narrowing_is_range_checked) {
  const InferRequestView v = Accepted(L(5, L(1, "x") + L(5, L(2, V(1) + V(300))) + L(5, L(4, V(256)))));
  const InputTensorView& in = v.inputs[0];
  Status s = DecodeInto(in, ContentsField::kInt, "INT8", 1);
  CHECK_CONTAINS(s.message(), "input 'x': int_contents[1] = 300 is out of range for INT8 [-128, 127]");
  CHECK(Decode<int16_t>(in, ContentsField::kInt, "INT16") == (std::vector<int16_t>{1, 300}));
  s = DecodeInto(in, ContentsField::kUint, "UINT8", 1);
  CHECK_CONTAINS(s.message(), "input 'x': uint_contents[0] = 256 is out of range for UINT8 [0, 255]");
  CHECK(Decode<uint16_t>(in, ContentsField::kUint, "UINT16") == (std::vector<uint16_t>{256}));
  // The limits themselves fit; int32 values are truncated from the varint as protobuf does.
  const InferRequestView w =
      Accepted(L(5, L(5, L(2, V(static_cast<uint64_t>(-128)) + V(127) + V(0x1fffffffeull)) +
                             L(4, V(65535) + V(0x100000005ull)))));
  CHECK(Decode<int8_t>(w.inputs[0], ContentsField::kInt, "INT8") == (std::vector<int8_t>{-128, 127, -2}));
  s = DecodeInto(w.inputs[0], ContentsField::kUint, "UINT16", 2);
  CHECK(s.ok());  // 65535 fits, and so does 0x100000005 truncated to 5
  CHECK(Decode<uint32_t>(w.inputs[0], ContentsField::kUint, "UINT32") == (std::vector<uint32_t>{65535, 5}));
  s = DecodeInto(Accepted(L(5, L(5, L(2, V(static_cast<uint64_t>(-32769)))))).inputs[0], ContentsField::kInt,
                 "INT16", 2);
  CHECK_CONTAINS(s.message(), "int_contents[0] = -32769 is out of range for INT16 [-32768, 32767]");
}

TEST(decode_contents_checks_its_arguments) {
  const InferRequestView v = Accepted(L(5, L(1, "x") + L(5, L(6, Fixed32(1.0f)))));
  const InputTensorView& in = v.inputs[0];
  CHECK_CONTAINS(DecodeInto(in, ContentsField::kFp32, "INT32", 4).message(),
                 "input 'x': datatype INT32 takes int_contents, not fp32_contents");
  CHECK_CONTAINS(DecodeInto(in, ContentsField::kFp32, "FP16", 2).message(), "no typed contents field");
  CHECK_CONTAINS(DecodeInto(in, ContentsField::kFp32, "COMPLEX", 2).message(), "unknown datatype 'COMPLEX'");
  float f[2];
  CHECK(!DecodeContents(in, ContentsField::kFp32, "FP32", reinterpret_cast<uint8_t*>(f), 2, 8).ok());
  CHECK(!DecodeContents(in, ContentsField::kFp32, "FP32", reinterpret_cast<uint8_t*>(f), 1, 8).ok());
  CHECK(DecodeContents(in, ContentsField::kFp32, "FP32", reinterpret_cast<uint8_t*>(f), 1, 4).ok());
  CHECK(f[0] == 1.0f);
}

TEST(bytes_contents_use_triton_serialization) {
  const InferRequestView v = Accepted(L(5, L(5, L(8, "ab") + L(8, "")) + L(5, L(8, "xyz"))));
  const InputTensorView& in = v.inputs[0];
  CHECK_EQ(ContentsFieldsPresent(in), uint32_t{1u << 8});
  CHECK_EQ(ContentsCount(in, ContentsField::kBytes), uint64_t{3});
  CHECK_EQ(ContentsBytesSize(in), uint64_t{4 * 3 + 5});
  std::string out(17, '?');
  CHECK(DecodeContents(in, ContentsField::kBytes, "BYTES", reinterpret_cast<uint8_t*>(&out[0]), 3, 17).ok());
  CHECK(out == std::string("\x02\0\0\0ab\0\0\0\0\x03\0\0\0xyz", 17));
  CHECK(!DecodeContents(in, ContentsField::kBytes, "BYTES", reinterpret_cast<uint8_t*>(&out[0]), 3, 16).ok());
  CHECK(!DecodeContents(in, ContentsField::kBytes, "BYTES", reinterpret_cast<uint8_t*>(&out[0]), 2, 17).ok());
}

TEST(huge_shape_values_parse) {
  const InferRequestView v =
      Accepted(L(5, L(3, V(UINT64_MAX) + V(1ull << 62)) + Vf(3, static_cast<uint64_t>(-1))));
  CHECK(v.inputs[0].shape == (std::vector<int64_t>{-1, int64_t{1} << 62, -1}));
}

TEST(steady_state_parsing_does_not_allocate) {
  const std::string a = FullRequest();
  const std::string b = L(5, L(1, "only") + L(3, V(7))) + Entry(4, "k", Vf(1, 1));
  std::string big_map;
  for (int i = 0; i < 30; ++i) big_map += Entry(4, "p" + std::to_string(i % 20), Vf(2, i));
  const std::string& big = big_map;
  InferRequestView v;
  for (int round = 0; round < 3; ++round) {
    for (const std::string* s : {&a, &b, &big, &a}) CHECK(Parse(*s, &v).ok());
  }
  const uint64_t before = g_allocations.load();
  for (int round = 0; round < 5; ++round) {
    for (const std::string* s : {&a, &b, &big, &a}) CHECK(Parse(*s, &v).ok());
  }
  CHECK_EQ(g_allocations.load() - before, uint64_t{0});
  CHECK(v.model_name == "resnet" && v.inputs.size() == 2);
}

// ---- the writer ---------------------------------------------------------------------------------

namespace {

// A hand reader for what the writer produces: fields of one message, in order.
struct WireField {
  uint32_t field, wt;
  uint64_t varint;
  std::string bytes;
};

uint64_t ReadV(const std::string& s, size_t* p) {
  uint64_t r = 0;
  for (int i = 0;; ++i) {
    CHECK(*p < s.size() && i < 10);
    const uint8_t b = static_cast<uint8_t>(s[(*p)++]);
    r |= static_cast<uint64_t>(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) return r;
  }
}

std::vector<WireField> Fields(const std::string& s) {
  std::vector<WireField> out;
  size_t p = 0;
  while (p < s.size()) {
    const uint64_t tag = ReadV(s, &p);
    WireField f{static_cast<uint32_t>(tag >> 3), static_cast<uint32_t>(tag & 7), 0, {}};
    if (f.wt == 0) {
      f.varint = ReadV(s, &p);
    } else if (f.wt == 2) {
      const uint64_t n = ReadV(s, &p);
      CHECK(n <= s.size() - p);
      f.bytes = s.substr(p, n);
      p += n;
    } else {
      CHECK(false);  // the writer uses varints and lengths only
    }
    out.push_back(f);
  }
  return out;
}

}  // namespace

TEST(writer_output_parses_back) {
  ResponseWriter w;
  const int64_t shape0[] = {2, -1};
  const uint8_t raw0[] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::string out = "stale contents";
  w.Begin("resnet", "3", "req-7");
  w.AddParameterBool("sequence_end", true);
  w.AddParameterInt64("n", -2);
  w.AddParameterString("s", "text");
  w.AddOutput("probs", "FP32", shape0, 2, raw0, sizeof(raw0));
  w.AddOutput("empty", "", nullptr, 0, nullptr, 0);
  w.Finish(&out);

  const std::vector<WireField> top = Fields(out);
  CHECK_EQ(top.size(), size_t{3 + 3 + 2 + 2});
  CHECK(top[0].field == 1 && top[0].bytes == "resnet");
  CHECK(top[1].field == 2 && top[1].bytes == "3");
  CHECK(top[2].field == 3 && top[2].bytes == "req-7");
  // parameters: entries {1: key, 2: InferParameter}
  std::vector<WireField> e = Fields(top[3].bytes);
  CHECK(top[3].field == 4 && e.size() == 2 && e[0].bytes == "sequence_end");
  std::vector<WireField> val = Fields(e[1].bytes);
  CHECK(val.size() == 1 && val[0].field == 1 && val[0].wt == 0 && val[0].varint == 1);
  e = Fields(top[4].bytes);
  val = Fields(e[1].bytes);
  CHECK(e[0].bytes == "n" && val[0].field == 2 && val[0].varint == static_cast<uint64_t>(-2));
  e = Fields(top[5].bytes);
  val = Fields(e[1].bytes);
  CHECK(e[0].bytes == "s" && val[0].field == 3 && val[0].bytes == "text");
  // outputs
  std::vector<WireField> o = Fields(top[6].bytes);
  CHECK(top[6].field == 5 && o.size() == 3);
  CHECK(o[0].field == 1 && o[0].bytes == "probs" && o[1].field == 2 && o[1].bytes == "FP32");
  CHECK(o[2].field == 3 && o[2].wt == 2 && o[2].bytes == V(2) + V(static_cast<uint64_t>(-1)));
  o = Fields(top[7].bytes);  // empty strings and an empty shape are not written
  CHECK(top[7].field == 5 && o.size() == 1 && o[0].bytes == "empty");
  CHECK(top[8].field == 6 && top[8].bytes == std::string(reinterpret_cast<const char*>(raw0), 8));
  CHECK(top[9].field == 6 && top[9].bytes.empty());

  // The response's fields 1-5 have the request's layout: parse it back as one.
  ResponseWriter w2;
  w2.Begin("m", "", "");
  w2.AddParameterInt64("k", 5);
  w2.AddOutput("y", "INT64", shape0, 2, nullptr, 0);
  std::string out2;
  w2.Finish(&out2);
  const InferRequestView v = Accepted(out2);
  CHECK(v.model_name == "m" && v.id.empty() && v.parameters[0].int64_value == 5);
  CHECK(v.inputs.size() == 1 && v.inputs[0].shape == (std::vector<int64_t>{2, -1}));

  // An empty response is empty.
  w2.Begin("", "", "");
  w2.Finish(&out2);
  CHECK(out2.empty());
}

TEST(writer_reuses_its_buffers) {
  ResponseWriter w;
  std::string out;
  const int64_t shape[] = {4};
  const uint8_t raw[16] = {};
  for (int round = 0; round < 3; ++round) {
    w.Begin("m", "1", "id");
    w.AddParameterBool("b", false);
    w.AddOutput("y", "FP32", shape, 1, raw, sizeof(raw));
    w.Finish(&out);
  }
  const uint64_t before = g_allocations.load();
  for (int round = 0; round < 3; ++round) {
    w.Begin("m", "1", "id");
    w.AddParameterBool("b", false);
    w.AddOutput("y", "FP32", shape, 1, raw, sizeof(raw));
    w.Finish(&out);
  }
  CHECK_EQ(g_allocations.load() - before, uint64_t{0});
}

TEST_MAIN()
