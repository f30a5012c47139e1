// A small RAII wrapper over the secretd C API for C++17 gateways. Header-only; link
// -lsecretd. Values are wiped when the Secret is destroyed.
#ifndef SECRETD_HPP
#define SECRETD_HPP

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "secretd.h"

namespace secretd {

// A failed call: the stable code plus the library's detail for this thread.
class Error : public std::runtime_error {
 public:
  explicit Error(secretd_result code) : std::runtime_error(describe(code)), code_(code) {}
  secretd_result code() const noexcept { return code_; }

 private:
  static std::string describe(secretd_result code) {
    char buf[512];
    secretd_last_error_message(buf, sizeof buf);
    if (buf[0] == '\0') secretd_error_message(code, buf, sizeof buf);
    return buf;
  }
  secretd_result code_;
};

// One secret value. Move-only; wiped and freed on destruction.
class Secret {
 public:
  // The bytes, valid while this Secret lives. Never log them.
  std::string_view expose() const noexcept {
    return {reinterpret_cast<const char *>(secretd_secret_data(ptr_.get())),
            secretd_secret_len(ptr_.get())};
  }
  std::string_view version() const noexcept { return secretd_secret_version(ptr_.get()); }
  std::string_view source() const noexcept { return secretd_secret_source(ptr_.get()); }

 private:
  friend class Client;
  struct Free {
    void operator()(secretd_secret *s) const noexcept { secretd_secret_free(s); }
  };
  explicit Secret(secretd_secret *s) : ptr_(s) {}
  std::unique_ptr<secretd_secret, Free> ptr_;
};

// A connection to the daemon. Move-only; safe to share by reference across threads.
class Client {
 public:
  // Connects to `socket_path`, or to the default socket when empty.
  explicit Client(const std::string &socket_path = {}) {
    secretd_client *raw = nullptr;
    secretd_result r =
        secretd_client_connect(socket_path.empty() ? nullptr : socket_path.c_str(), &raw);
    if (r != SECRETD_RESULT_OK) throw Error(r);
    ptr_.reset(raw);
  }

  // Connects with the client-side cache on (see secretd_client_connect_cached).
  static Client cached(const std::string &socket_path = {}) {
    secretd_client *raw = nullptr;
    secretd_result r =
        secretd_client_connect_cached(socket_path.empty() ? nullptr : socket_path.c_str(), &raw);
    if (r != SECRETD_RESULT_OK) throw Error(r);
    return Client(raw);
  }

  Secret get(const std::string &name) const {
    secretd_secret *raw = nullptr;
    secretd_result r = secretd_get(ptr_.get(), name.c_str(), &raw);
    if (r != SECRETD_RESULT_OK) throw Error(r);
    return Secret(raw);
  }

 private:
  explicit Client(secretd_client *raw) : ptr_(raw) {}
  friend class Watch;
  struct Free {
    void operator()(secretd_client *c) const noexcept { secretd_client_free(c); }
  };
  std::unique_ptr<secretd_client, Free> ptr_;
};

// One watch event, copied out of the library's (never a value).
struct ChangeEvent {
  secretd_event_kind kind;
  std::string name, version, source, fingerprint;
  int64_t at_ms;
  secretd_result error;
};

// Calls `on_event` on a library thread for every change of `names` (all readable names when
// empty) until destroyed. Exceptions thrown by `on_event` are swallowed at the C boundary.
class Watch {
 public:
  Watch(const Client &client, const std::vector<std::string> &names,
        std::function<void(const ChangeEvent &)> on_event)
      : callback_(std::make_unique<std::function<void(const ChangeEvent &)>>(std::move(on_event))) {
    std::vector<const char *> raw_names;
    for (const auto &n : names) raw_names.push_back(n.c_str());
    secretd_watch_handle *raw = nullptr;
    secretd_result r = secretd_watch(client.ptr_.get(), raw_names.data(), raw_names.size(),
                                     &Watch::trampoline, callback_.get(), &raw);
    if (r != SECRETD_RESULT_OK) throw Error(r);
    handle_.reset(raw);
  }

 private:
  static void trampoline(const secretd_change_event *ev, void *user_data) noexcept {
    try {
      ChangeEvent copy{ev->kind, ev->name, ev->version, ev->source, ev->fingerprint, ev->at_ms,
                       ev->error};
      (*static_cast<std::function<void(const ChangeEvent &)> *>(user_data))(copy);
    } catch (...) {
    }
  }
  struct Stop {
    void operator()(secretd_watch_handle *w) const noexcept { secretd_watch_stop(w); }
  };
  // Declared before handle_, so the watch is stopped before the callback is destroyed.
  std::unique_ptr<std::function<void(const ChangeEvent &)>> callback_;
  std::unique_ptr<secretd_watch_handle, Stop> handle_;
};

}  // namespace secretd

#endif
