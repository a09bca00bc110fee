// gRPC's length-prefixed messages over HTTP/2 DATA frames: each message is a
// 1-byte compressed flag (0 or 1), a 4-byte big-endian length and the bytes.
// A message may span DATA frames and one frame may hold several messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "steadyserve/status.h"

namespace steadyserve {

constexpr size_t kGrpcPrefixSize = 5;

// Appends the 5-byte prefix of a message of `length` bytes.
void AppendGrpcPrefix(bool compressed, uint32_t length, std::string* out);

struct GrpcMessage {
  bool compressed = false;
  std::string_view data;  // valid until the next Append() or Next() on the reader
};

// Reassembles the messages of one stream from its DATA frames' payloads:
//
//   reader.Append(frame.payload);
//   while ((r = reader.Next(&msg, &status)) == GrpcMessageReader::Result::kMessage) ...
//   if (frame.end_stream()) status = reader.Finish();
//
// The size limit is checked as soon as a prefix is complete, so a message
// that is too big is refused before its bytes are buffered, provided the
// caller drains Next() after each Append() (then at most one DATA frame more
// than the current message is ever held). After an error the reader is
// finished: Next() returns the same error.
class GrpcMessageReader {
 public:
  enum class Result : uint8_t { kMessage, kNeedMore, kError };

  explicit GrpcMessageReader(size_t max_message_size) : max_message_size_(max_message_size) {}

  // Copies `data` in (and drops the bytes of messages already returned).
  void Append(std::string_view data);
  // kMessage: *message is set. kNeedMore: no complete message buffered.
  // kError: *status is RESOURCE_EXHAUSTED (over the limit, both sizes named)
  // or INTERNAL (a compressed flag other than 0 or 1).
  Result Next(GrpcMessage* message, Status* status);
  // At the end of the stream: INTERNAL if part of a message is left over.
  Status Finish() const;

  size_t buffered() const { return buf_.size() - pos_; }
  size_t max_message_size() const { return max_message_size_; }

 private:
  size_t max_message_size_;
  std::string buf_;
  size_t pos_ = 0;  // start of the unread bytes in buf_
  bool failed_ = false;
  Status failure_;
};

}  // namespace steadyserve
