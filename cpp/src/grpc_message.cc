#include "steadyserve/grpc_message.h"

namespace steadyserve {

void AppendGrpcPrefix(bool compressed, uint32_t length, std::string* out) {
  const char b[kGrpcPrefixSize] = {static_cast<char>(compressed ? 1 : 0), static_cast<char>(length >> 24),
                                   static_cast<char>(length >> 16), static_cast<char>(length >> 8),
                                   static_cast<char>(length)};
  out->append(b, kGrpcPrefixSize);
}

void GrpcMessageReader::Append(std::string_view data) {
  if (failed_) return;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > 0) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(data.data(), data.size());
}

GrpcMessageReader::Result GrpcMessageReader::Next(GrpcMessage* message, Status* status) {
  *message = GrpcMessage();
  if (failed_) {
    *status = failure_;
    return Result::kError;
  }
  const size_t avail = buf_.size() - pos_;
  if (avail < kGrpcPrefixSize) return Result::kNeedMore;
  const auto* p = reinterpret_cast<const uint8_t*>(buf_.data()) + pos_;
  const uint8_t flag = p[0];
  const uint32_t length =
      (uint32_t{p[1]} << 24) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 8) | uint32_t{p[4]};
  if (flag > 1) {
    failed_ = true;
    failure_ = Status(StatusCode::kInternal,
                      "gRPC message: compressed flag must be 0 or 1, got " + std::to_string(flag));
  } else if (length > max_message_size_) {
    failed_ = true;
    failure_ = Status(StatusCode::kResourceExhausted, "gRPC message: length " + std::to_string(length) +
                                                          " exceeds the max message size " +
                                                          std::to_string(max_message_size_));
  }
  if (failed_) {
    *status = failure_;
    return Result::kError;
  }
  if (avail - kGrpcPrefixSize < length) return Result::kNeedMore;
  message->compressed = flag == 1;
  message->data = std::string_view(buf_.data() + pos_ + kGrpcPrefixSize, length);
  pos_ += kGrpcPrefixSize + length;
  return Result::kMessage;
}

Status GrpcMessageReader::Finish() const {
  if (failed_) return failure_;
  const size_t left = buf_.size() - pos_;
  if (left == 0) return Status::Ok();
  return Status(StatusCode::kInternal, "gRPC message: the stream ended inside a message (" + std::to_string(left) +
                                           " bytes of it received)");
}

}  // namespace steadyserve
