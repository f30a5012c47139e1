// Reads a secret through the RAII wrapper and prints its metadata (never the value).
// Usage: example SOCKET NAME
#include <cstdio>

#include "secretd.hpp"

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  try {
    secretd::Client client(argv[1]);
    secretd::Secret key = client.get(argv[2]);
    std::printf("%s: %zu bytes, version %s, source %s\n", argv[2], key.expose().size(),
                std::string(key.version()).c_str(), std::string(key.source()).c_str());
    // A cached client answers repeat reads from its own locked memory; a watch reports
    // changes (none arrive in this short run; the destructor stops it).
    secretd::Client cached = secretd::Client::cached(argv[1]);
    if (cached.get(argv[2]).expose() != cached.get(argv[2]).expose()) return 1;
    {
      secretd::Watch watch(cached, {argv[2]}, [](const secretd::ChangeEvent &ev) {
        std::printf("change of %s to version %s\n", ev.name.c_str(), ev.version.c_str());
      });
      std::printf("watching %s\n", argv[2]);
    }
    try {
      client.get("trading_not_there");
      return 1;
    } catch (const secretd::Error &e) {
      if (e.code() != SECRETD_RESULT_NOT_FOUND) return 1;
      std::printf("missing name: %s\n", e.what());
    }
  } catch (const secretd::Error &e) {
    std::fprintf(stderr, "secretd: %s\n", e.what());
    return 1;
  }
  return 0;
}
