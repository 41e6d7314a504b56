// Errors raised inside generated code.  They unwind to the extern "C" entry
// point, which stores the message and returns a non-zero status; the Python
// loader turns that into a Python exception.  Nothing aborts the process.
#pragma once
#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace lt {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Index errors become IndexError in Python.
class IndexError : public Error {
 public:
  using Error::Error;
};

// Integer division by zero and int32 overflow: ZeroDivisionError and
// OverflowError in Python.
class ZeroDivisionError : public Error {
 public:
  using Error::Error;
};

class OverflowError : public Error {
 public:
  using Error::Error;
};

inline std::string format(const char* fmt, va_list args) {
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, args);
  return buf;
}

[[noreturn]] inline void fail(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::string msg = format(fmt, args);
  va_end(args);
  throw Error(msg);
}

[[noreturn]] inline void fail_index(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::string msg = format(fmt, args);
  va_end(args);
  throw IndexError(msg);
}

template <class E>
[[noreturn]] inline void fail_kind(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::string msg = format(fmt, args);
  va_end(args);
  throw E(msg);
}

// Bounds check for a staged index read; `what` names the user-level operation.
inline int check_index(long long i, long long n, const char* what) {
  if (i < 0 || i >= n) fail_index("%s: index %lld out of range [0, %lld)", what, i, n);
  return static_cast<int>(i);
}

// A staged index read as numpy reads it: -n <= i < n, a negative one counting
// from the end (x[-1] is the last row), as a Python int index already does.
inline int wrap_index(long long i, long long n, const char* what) {
  if (i < -n || i >= n) fail_index("%s: index %lld out of range [%lld, %lld)", what, i, -n, n);
  return static_cast<int>(i < 0 ? i + n : i);
}

}  // namespace lt
