// Minimal .npy files for standalone programs (`lantern compile --standalone`):
// read and write little-endian float32 / int32 / bool arrays in C order,
// format versions 1.0 to 3.0.  Errors are exceptions naming the file.
#pragma once
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace lt::npy {

struct Array {
  std::string dtype;  // "float32", "int32" or "bool"
  std::vector<int64_t> shape;
  std::vector<char> data;  // the elements, raw

  int64_t size() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

inline std::size_t itemsize(const std::string& dtype) { return dtype == "bool" ? 1 : 4; }

inline std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += std::to_string(shape[i]) + (shape.size() == 1 ? "," : i + 1 < shape.size() ? ", " : "");
  return s + ")";
}

namespace detail {

[[noreturn]] inline void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

// The quoted or bracketed value after 'key': in a header dict.
inline std::string field(const std::string& header, const std::string& key, const std::string& path) {
  std::size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) fail(path, "npy header has no '" + key + "'");
  at = header.find(':', at);
  if (at == std::string::npos) fail(path, "bad npy header");
  ++at;
  while (at < header.size() && header[at] == ' ') ++at;
  if (at >= header.size()) fail(path, "bad npy header");
  char open = header[at];
  char close = open == '\'' ? '\'' : open == '(' ? ')' : ',';
  std::size_t end = header.find(close, at + 1);
  if (end == std::string::npos) fail(path, "bad npy header");
  return open == '\'' || open == '(' ? header.substr(at + 1, end - at - 1) : header.substr(at, end - at);
}

}  // namespace detail

inline Array read(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) detail::fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct Closer {
    std::FILE* f;
    ~Closer() { std::fclose(f); }
  } closer{f};
  unsigned char magic[8];
  if (std::fread(magic, 1, 8, f) != 8 || std::memcmp(magic, "\x93NUMPY", 6) != 0) detail::fail(path, "not an .npy file");
  uint32_t header_len = 0;
  unsigned char len_bytes[4] = {0, 0, 0, 0};
  int width = magic[6] == 1 ? 2 : 4;
  if (magic[6] < 1 || magic[6] > 3 || std::fread(len_bytes, 1, width, f) != std::size_t(width))
    detail::fail(path, "unsupported .npy version");
  for (int i = width - 1; i >= 0; --i) header_len = header_len << 8 | len_bytes[i];
  std::string header(header_len, '\0');
  if (std::fread(&header[0], 1, header_len, f) != header_len) detail::fail(path, "truncated npy header");

  Array a;
  std::string descr = detail::field(header, "descr", path);
  if (descr == "<f4") a.dtype = "float32";
  else if (descr == "<i4") a.dtype = "int32";
  else if (descr == "|b1") a.dtype = "bool";
  else detail::fail(path, "dtype '" + descr + "' is not float32, int32 or bool (little-endian)");
  if (detail::field(header, "fortran_order", path).find("False") == std::string::npos)
    detail::fail(path, "array is in Fortran order; save np.ascontiguousarray(a)");
  std::string dims = detail::field(header, "shape", path);
  std::size_t pos = 0;
  while (pos < dims.size()) {
    while (pos < dims.size() && (dims[pos] == ' ' || dims[pos] == ',')) ++pos;
    if (pos >= dims.size()) break;
    std::size_t used = 0;
    long long d = std::stoll(dims.substr(pos), &used);
    if (d < 0) detail::fail(path, "negative dimension");
    a.shape.push_back(d);
    pos += used;
  }
  std::size_t bytes = std::size_t(a.size()) * itemsize(a.dtype);
  a.data.resize(bytes);
  if (bytes && std::fread(a.data.data(), 1, bytes, f) != bytes) detail::fail(path, "truncated array data");
  return a;
}

inline void write(const std::string& path, const std::string& dtype, const std::vector<int64_t>& shape,
                  const void* data) {
  std::string descr = dtype == "float32" ? "<f4" : dtype == "int32" ? "<i4" : "|b1";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_str(shape) + ", }";
  std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) detail::fail(path, std::string("cannot write: ") + std::strerror(errno));
  unsigned char preamble[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  preamble[8] = static_cast<unsigned char>(header.size() & 0xff);
  preamble[9] = static_cast<unsigned char>(header.size() >> 8);
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::size_t bytes = std::size_t(n) * itemsize(dtype);
  bool ok = std::fwrite(preamble, 1, 10, f) == 10 && std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
            (bytes == 0 || std::fwrite(data, 1, bytes, f) == bytes);
  ok = std::fclose(f) == 0 && ok;
  if (!ok) detail::fail(path, "write failed");
}

}  // namespace lt::npy
