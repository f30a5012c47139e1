// A small RAII wrapper over the secretd C API for C++17 gateways. Header-only; link
// -lsecretd. Values are wiped when the Secret is destroyed.
#ifndef SECRETD_HPP
#define SECRETD_HPP

#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

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

  Secret get(const std::string &name) const {
    secretd_secret *raw = nullptr;
    secretd_result r = secretd_get(ptr_.get(), name.c_str(), &raw);
    if (r != SECRETD_RESULT_OK) throw Error(r);
    return Secret(raw);
  }

 private:
  struct Free {
    void operator()(secretd_client *c) const noexcept { secretd_client_free(c); }
  };
  std::unique_ptr<secretd_client, Free> ptr_;
};

}  // namespace secretd

#endif
