// H2Connection: the server side of one HTTP/2 connection carrying gRPC, with no
// I/O of its own (bytes in, bytes out), so it is unit-tested and fuzzed without
// sockets and the I/O thread above it (grpc_frontend.h) stays small.
//
// It owns the protocol state of the connection: the preface and SETTINGS
// exchange, PING, flow control in both directions (h2_flow.h), the stream table
// and each stream's state, header blocks (HEADERS + CONTINUATION, HPACK),
// gRPC's length-prefixed messages (grpc_message.h), response headers, DATA and
// trailers, RST_STREAM and GOAWAY, and the limits that keep a misbehaving peer
// from costing unbounded memory or CPU. What a stream *means* is the handler's
// business: the connection hands it checked request headers and whole
// messages, and the handler answers through SendMessage / Finish.
//
// Threading: none. One I/O thread owns a connection; every call, including the
// handler's callbacks (made from inside Receive and Tick), happens on it. The
// handler may call SendMessage / Finish / ResetStream from inside a callback.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "steadyserve/grpc_message.h"
#include "steadyserve/h2_flow.h"
#include "steadyserve/h2_frame.h"
#include "steadyserve/hpack.h"
#include "steadyserve/status.h"

namespace steadyserve {
namespace h2 {

// Limits of one connection. Each refusal they cause names the limit and value.
struct ConnectionLimits {
  // SETTINGS_MAX_CONCURRENT_STREAMS we advertise; a HEADERS opening one more is
  // answered RST_STREAM(REFUSED_STREAM).
  uint32_t max_concurrent_streams = 256;
  // SETTINGS_MAX_HEADER_LIST_SIZE we advertise; a larger list is refused with a
  // gRPC RESOURCE_EXHAUSTED trailers-only answer (HTTP 431 semantics).
  uint32_t max_header_list_bytes = 16384;
  // SETTINGS_MAX_FRAME_SIZE we advertise (a larger frame: FRAME_SIZE_ERROR).
  uint32_t max_frame_size = kDefaultMaxFrameSize;
  // SETTINGS_INITIAL_WINDOW_SIZE we advertise (each stream's receive window) and
  // the connection's receive window (raised from 65535 by a WINDOW_UPDATE on
  // stream 0 right after our SETTINGS).
  uint32_t stream_window_bytes = 1u << 20;
  uint32_t connection_window_bytes = 16u << 20;
  // Largest gRPC message received (RESOURCE_EXHAUSTED naming both sizes) and
  // sent (a larger answer becomes RESOURCE_EXHAUSTED).
  size_t max_message_bytes = 64u << 20;
  // Bytes of one field block on the wire, CONTINUATIONs included
  // (FrameReader::Options::max_field_block_size).
  size_t max_field_block_bytes = 64 * 1024;
  // Flood control: frames that cost us work but carry no request (PING,
  // SETTINGS, PRIORITY, WINDOW_UPDATE, empty DATA without END_STREAM, empty
  // CONTINUATION, unknown types) form a token bucket of this size refilled at
  // this rate; a peer that empties it gets GOAWAY(ENHANCE_YOUR_CALM).
  uint32_t control_frame_burst = 2000;
  uint32_t control_frames_per_s = 1000;
  // Each stream the peer opens earns this many back (up to the burst): a client
  // making many calls on one connection sends WINDOW_UPDATEs and PINGs in step with
  // them (grpcio does, for every answer), which is work it pays for with calls.
  uint32_t control_frames_per_stream = 4;
  // Rapid reset: streams the peer opens and resets before we answer, the
  // same kind of bucket; over it GOAWAY(ENHANCE_YOUR_CALM).
  uint32_t reset_burst = 1000;
  uint32_t resets_per_s = 200;
  // Output not yet taken by the socket beyond which the connection stops
  // reading (wants_read() false) until it drains: a slow reader holds at most
  // this plus what its open streams are answering.
  size_t max_pending_output_bytes = 4u << 20;
  // Timeouts (ns; 0 disables), enforced by Tick():
  // the preface and first SETTINGS must arrive within this;
  int64_t preface_timeout_ns = 10'000'000'000;
  // a connection with no open stream and nothing received for this long gets
  // GOAWAY(NO_ERROR) and closes;
  int64_t idle_timeout_ns = 300'000'000'000;
  // a stream whose request (headers and, for unary calls, its one message)
  // is not complete this long after it opened is reset (CANCEL) and its
  // handler told - thousands of streams opened and never finished expire.
  int64_t stream_read_timeout_ns = 30'000'000'000;
  // after GOAWAY, how long to wait for the peer to close before we do.
  int64_t close_linger_ns = 1'000'000'000;
};

// A stream's request headers, checked (RFC 9113 section 8.3 and the gRPC
// HTTP/2 mapping): :method POST, :scheme, :path present, no unknown
// pseudo-headers, lower-case names, no connection-specific headers, te absent
// or "trailers", content-type application/grpc[+proto|;...], grpc-encoding
// absent or identity. Views valid only during the OnStreamStart call.
struct StreamStart {
  uint32_t stream_id = 0;
  std::string_view path;        // "/package.Service/Method"
  std::string_view authority;   // may be empty
  int64_t timeout_ns = -1;      // grpc-timeout, -1 when absent
  std::string_view request_id;  // x-request-id, may be empty
  // Every regular (non-pseudo) header, in order, for handlers that pass
  // metadata on (the Python bridge).
  const std::vector<HpackField>* headers = nullptr;
  bool end_stream = false;  // HEADERS carried END_STREAM (no message will follow)
};

class StreamHandler {
 public:
  virtual ~StreamHandler() = default;
  // A new stream with valid headers. The handler decides what the path means
  // (an unknown one: Finish with UNIMPLEMENTED).
  virtual void OnStreamStart(const StreamStart& start) = 0;
  // One whole gRPC message of the stream, uncompressed (the view is valid
  // during the call only).
  virtual void OnStreamMessage(uint32_t stream_id, std::string_view message) = 0;
  // The peer finished sending (END_STREAM) after all its messages.
  virtual void OnStreamHalfClose(uint32_t stream_id) = 0;
  // The stream ended without our trailers: the peer reset it, it timed out,
  // it broke a rule, or the connection is closing. Nothing may be sent on it
  // any more; every stream that got OnStreamStart gets either this or our
  // Finish, exactly once.
  virtual void OnStreamReset(uint32_t stream_id) = 0;
};

// Counters of one connection, for the frontend's figures.
struct ConnectionStats {
  uint64_t frames_received = 0;
  uint64_t streams_opened = 0;
  uint64_t streams_refused = 0;   // over max_concurrent_streams, or after GOAWAY
  uint64_t streams_reset_by_peer = 0;
  uint64_t protocol_errors = 0;   // stream and connection errors we sent
};

class H2Connection {
 public:
  H2Connection(const ConnectionLimits& limits, StreamHandler* handler, int64_t now_ns);
  // Calls Abort(): the handler must outlive the connection.
  ~H2Connection();
  H2Connection(const H2Connection&) = delete;
  H2Connection& operator=(const H2Connection&) = delete;

  // Our SETTINGS and the connection WINDOW_UPDATE go out first (in output()
  // from construction).

  // Feeds bytes read from the socket. Frames are handled as they complete,
  // handler callbacks made as they go. Returns false once the connection is
  // finished (a connection error: GOAWAY is in output(); or the peer's GOAWAY
  // and no stream left): flush output() and close.
  bool Receive(const uint8_t* data, size_t size, int64_t now_ns);

  // Sends one gRPC message on a stream: the response headers first if not yet
  // sent, then the 5-byte prefix and `message` as DATA, as far as the flow
  // windows allow; the rest waits for the peer's WINDOW_UPDATE. A message over
  // max_message_bytes finishes the stream RESOURCE_EXHAUSTED instead. False if
  // the stream is gone (reset, finished): nothing is sent.
  bool SendMessage(uint32_t stream_id, std::string_view message);
  // Ends a stream with trailers (grpc-status, grpc-message percent-encoded):
  // after any DATA still waiting for window; as a Trailers-Only HEADERS frame
  // when nothing was sent. If the peer has not finished sending, an
  // RST_STREAM(NO_ERROR) follows the trailers (RFC 9113 section 8.1). False if
  // the stream is gone.
  bool Finish(uint32_t stream_id, int grpc_status, std::string_view grpc_message);
  // The x-request-id the response headers carry (the request's own, from its
  // headers, unless replaced here before the first answer). False once the
  // headers are out, or for an unknown stream.
  bool SetRequestId(uint32_t stream_id, std::string_view request_id);
  // The stream's request id (empty when unknown or none); valid until the next call.
  std::string_view RequestId(uint32_t stream_id);
  // Resets a stream (RST_STREAM with `code`); the handler is not called.
  void ResetStream(uint32_t stream_id, ErrorCode code);

  // The transport is gone (EOF, a write error) or the I/O layer gives up on
  // the connection: every stream the handler was told of and has not
  // finished gets OnStreamReset, nothing more is sent, done() is true.
  // Idempotent; after a connection error it does nothing.
  void Abort();

  // Graceful shutdown: GOAWAY(NO_ERROR) with the last stream id seen; later
  // streams are refused; open streams go on. done() once none is left.
  void Shutdown();
  // Enforces the timeouts of ConnectionLimits. Returns false when the
  // connection is finished (flush output() and close).
  bool Tick(int64_t now_ns);
  // The earliest time Tick has something to do (for the poller's timeout), or
  // INT64_MAX.
  int64_t next_deadline_ns() const;

  // Bytes to write to the socket, accumulated across calls (writes coalesce);
  // the I/O layer writes a prefix and calls ConsumeOutput with its length.
  const std::string& output() const { return out_; }
  void ConsumeOutput(size_t n);
  // False while output() holds more than max_pending_output_bytes: stop
  // reading the socket until the peer reads.
  bool wants_read() const;
  // True once the connection has nothing left to do: after a connection
  // error, or after GOAWAY (ours or the peer's) with no stream left. Flush
  // output() and close.
  bool done() const;

  size_t open_streams() const;
  const ConnectionStats& stats() const { return stats_; }
  // Bytes this connection holds now (buffers, streams, HPACK tables): for the
  // per-connection memory figure.
  size_t memory_bytes() const;

 private:
  struct Stream;
  struct Impl;
  std::string out_;
  ConnectionStats stats_;
  std::unique_ptr<Impl> impl_;  // after out_ and stats_, which it refers to
};

}  // namespace h2
}  // namespace steadyserve
