// steadyserve._core.GrpcFrontend: the native gRPC server, and the bridge that
// hands Python the calls it does not serve natively (see grpc_frontend.h).
//
// Every call that can block (start-up binding aside: it is quick) releases the
// GIL; the bridge is drained in one call per wake-up of the event loop.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "steadyserve/grpc_frontend.h"
#include "steadyserve/inference_core.h"

namespace py = pybind11;
using namespace steadyserve;

using CoreOf = InferenceCore* (*)(py::handle);
using RaiseStatus = void (*)(const Status&);

namespace {

RaiseStatus g_raise = nullptr;

const char* KindName(BridgeEvent::Kind k) {
  switch (k) {
    case BridgeEvent::Kind::kStart:
      return "start";
    case BridgeEvent::Kind::kMessage:
      return "message";
    case BridgeEvent::Kind::kHalfClose:
      return "half_close";
    case BridgeEvent::Kind::kCancel:
      return "cancel";
  }
  return "unknown";
}

// What Python sees of a bridge event: named fields, built once per event.
struct PyBridgeEvent {
  std::string kind;
  uint64_t call = 0;
  std::string path;
  py::list metadata;
  py::object timeout_s = py::none();
  std::string peer;
  py::bytes data;
};

class PyGrpcFrontend {
 public:
  PyGrpcFrontend(py::object core_obj, InferenceCore* core, const FrontendOptions& options)
      : core_obj_(std::move(core_obj)) {
    Status s = GrpcFrontend::Create(core, options, &fe_);
    if (!s.ok()) g_raise(s);
  }

  int port() const { return fe_->port(); }
  int bridge_fd() const { return fe_->bridge_fd(); }
  void Start() {
    Status s = fe_->Start();
    if (!s.ok()) g_raise(s);
  }

  py::list PollBridge() {
    fe_->PollBridge(&scratch_);
    py::list out;
    for (BridgeEvent& e : scratch_) {
      PyBridgeEvent p;
      p.kind = KindName(e.kind);
      p.call = e.call;
      if (e.kind == BridgeEvent::Kind::kStart) {
        p.path = std::move(e.path);
        for (auto& [name, value] : e.metadata) p.metadata.append(py::make_tuple(py::str(name), py::bytes(value)));
        if (e.timeout_ns >= 0) p.timeout_s = py::float_(static_cast<double>(e.timeout_ns) / 1e9);
        p.peer = std::move(e.peer);
      } else if (e.kind == BridgeEvent::Kind::kMessage) {
        p.data = py::bytes(e.data);
      }
      out.append(py::cast(std::move(p)));
    }
    scratch_.clear();
    return out;
  }

  bool Send(uint64_t call, const py::bytes& data) { return fe_->BridgeSend(call, std::string(data)); }
  bool Finish(uint64_t call, int code, const std::string& message) { return fe_->BridgeFinish(call, code, message); }

  void Shutdown() {
    py::gil_scoped_release release;
    fe_->Shutdown();
  }
  bool WaitIdle(double timeout_s) {
    py::gil_scoped_release release;
    return fe_->WaitIdle(static_cast<int64_t>(timeout_s * 1e9));
  }
  void Stop() {
    py::gil_scoped_release release;
    fe_->Stop();
  }

  py::dict Stats() const {
    const FrontendStats s = fe_->Stats();
    py::dict d;
    d["connections_open"] = s.connections_open;
    d["connections_accepted"] = s.connections_accepted;
    d["connections_refused"] = s.connections_refused;
    d["streams_open"] = s.streams_open;
    d["native_requests"] = s.native_requests;
    d["bridged_calls"] = s.bridged_calls;
    d["streams_refused"] = s.streams_refused;
    d["streams_reset_by_peer"] = s.streams_reset_by_peer;
    d["protocol_errors"] = s.protocol_errors;
    d["connection_memory_bytes"] = s.connection_memory_bytes;
    d["wakeups"] = s.wakeups;
    d["connections_per_thread"] = s.connections_per_thread;
    return d;
  }

  // (records as dicts, dropped since the last call).
  py::tuple TakeRequestLog() {
    uint64_t dropped = 0;
    std::vector<RequestLogRecord> records = fe_->TakeRequestLog(&dropped);
    py::list out;
    for (const auto& r : records) {
      py::dict d;
      d["request_id"] = py::str(PyUnicode_DecodeLatin1(r.request_id.data(), r.request_id.size(), nullptr), false);
      d["model"] = r.model;
      d["answered_by"] = r.answered_by;
      d["version"] = r.answered_version;
      d["grpc_status"] = r.grpc_status;
      d["latency_ms"] = static_cast<double>(r.latency_ns) / 1e6;
      d["failover"] = r.failover;
      if (!r.message.empty()) d["error"] = r.message;
      out.append(std::move(d));
    }
    return py::make_tuple(out, dropped);
  }

 private:
  py::object core_obj_;  // keeps the InferenceCore alive as long as the frontend
  std::unique_ptr<GrpcFrontend> fe_;
  std::vector<BridgeEvent> scratch_;
};

int64_t SecondsToNs(double s, const char* name) {
  if (!(s >= 0) || s > 1e6) throw py::value_error(std::string(name) + " must be 0 to 1e6 seconds");
  return static_cast<int64_t>(s * 1e9);
}

}  // namespace

void BindFrontend(py::module_& m, CoreOf core_of, RaiseStatus raise) {
  g_raise = raise;
  py::class_<PyBridgeEvent>(m, "BridgeEvent")
      .def_readonly("kind", &PyBridgeEvent::kind)
      .def_readonly("call", &PyBridgeEvent::call)
      .def_readonly("path", &PyBridgeEvent::path)
      .def_readonly("metadata", &PyBridgeEvent::metadata)
      .def_readonly("timeout_s", &PyBridgeEvent::timeout_s)
      .def_readonly("peer", &PyBridgeEvent::peer)
      .def_readonly("data", &PyBridgeEvent::data)
      .def("__repr__", [](const PyBridgeEvent& e) {
        return "<BridgeEvent " + e.kind + " call=" + std::to_string(e.call) + (e.path.empty() ? "" : " " + e.path) +
               ">";
      });

  py::class_<PyGrpcFrontend>(m, "GrpcFrontend")
      .def(py::init([core_of](py::object core, const std::string& host, int port, int listen_fd, int io_threads,
                              uint32_t max_connections, uint32_t max_concurrent_streams,
                              uint32_t max_header_list_bytes, uint64_t max_message_bytes, double idle_timeout_s,
                              double stream_read_timeout_s, double response_allowance_s,
                              uint32_t max_bridged_calls, double log_sample_rate) {
             if (!(log_sample_rate >= 0 && log_sample_rate <= 1))
               throw py::value_error("log_sample_rate must be 0 to 1; got " + std::to_string(log_sample_rate));
             FrontendOptions o;
             o.host = host;
             o.port = port;
             o.listen_fd = listen_fd;
             o.io_threads = io_threads;
             o.max_connections = max_connections;
             o.limits.max_concurrent_streams = max_concurrent_streams;
             o.limits.max_header_list_bytes = max_header_list_bytes;
             o.limits.max_message_bytes = max_message_bytes;
             o.limits.idle_timeout_ns = SecondsToNs(idle_timeout_s, "idle_timeout_s");
             o.limits.stream_read_timeout_ns = SecondsToNs(stream_read_timeout_s, "stream_read_timeout_s");
             o.response_allowance_ns = SecondsToNs(response_allowance_s, "response_allowance_s");
             o.max_bridged_calls = max_bridged_calls;
             o.log_sample_rate = log_sample_rate;
             InferenceCore* c = core_of(core);
             return std::make_unique<PyGrpcFrontend>(core, c, o);
           }),
           py::arg("core"), py::arg("host") = "0.0.0.0", py::arg("port") = 8001, py::arg("listen_fd") = -1,
           py::arg("io_threads") = 0, py::arg("max_connections") = 10000, py::arg("max_concurrent_streams") = 256,
           py::arg("max_header_list_bytes") = 16384, py::arg("max_message_bytes") = 64u << 20,
           py::arg("idle_timeout_s") = 300.0, py::arg("stream_read_timeout_s") = 30.0,
           py::arg("response_allowance_s") = 0.001, py::arg("max_bridged_calls") = 1024,
           py::arg("log_sample_rate") = 0.0,
           "Binds host:port (or adopts listen_fd); start() starts the I/O threads.")
      .def_property_readonly("port", &PyGrpcFrontend::port)
      .def_property_readonly("bridge_fd", &PyGrpcFrontend::bridge_fd)
      .def("start", &PyGrpcFrontend::Start)
      .def("poll_bridge", &PyGrpcFrontend::PollBridge, "Pending bridge events (a list of BridgeEvent).")
      .def("send", &PyGrpcFrontend::Send, py::arg("call"), py::arg("data"))
      .def("finish", &PyGrpcFrontend::Finish, py::arg("call"), py::arg("code"), py::arg("message"))
      .def("shutdown", &PyGrpcFrontend::Shutdown, "GOAWAY everywhere and stop accepting; open calls go on.")
      .def("wait_idle", &PyGrpcFrontend::WaitIdle, py::arg("timeout_s"))
      .def("stop", &PyGrpcFrontend::Stop)
      .def("stats", &PyGrpcFrontend::Stats)
      .def("take_request_log", &PyGrpcFrontend::TakeRequestLog,
           "The sampled requests since the last call (dicts) and how many were dropped.");
}
