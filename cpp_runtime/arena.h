// Stack-ordered bump allocator for every buffer a generated module uses.
//
// CPS makes lifetimes nest: whatever a frame allocates is dead once that
// frame's backward code has run, so a frame records `mark()` on entry and
// `release(mark)` on exit.  Peak use is then the live path, not the history.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "error.h"

namespace lt {

class Arena {
 public:
  // 64-byte alignment: whole cache lines, and aligned AVX-512 loads.
  static constexpr std::size_t kAlign = 64;

  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  ~Arena() { std::free(base_); }

  // Reserve `bytes` of capacity.  The pages are untouched until used, so a
  // generous capacity costs address space, not memory.
  void reserve(std::size_t bytes) {
    if (bytes <= capacity_) return;
    void* p = std::aligned_alloc(kAlign, round_up(bytes));
    if (!p) fail("arena: cannot reserve %zu bytes", bytes);
    std::free(base_);
    base_ = static_cast<char*>(p);
    capacity_ = round_up(bytes);
    top_ = 0;
    peak_ = 0;
  }

  template <class T>
  T* alloc(std::size_t count) {
    // Staging rejects byte counts past 2^63; checked here too, so that a
    // wrapped count * sizeof(T) can never make a small allocation.
    if (count > (SIZE_MAX - kAlign) / sizeof(T))
      fail("arena exhausted: %zu elements of %zu bytes do not fit in a 64-bit byte count", count, sizeof(T));
    std::size_t bytes = round_up(count * sizeof(T));
    if (bytes > capacity_ - top_)
      fail("arena exhausted: need %zu more bytes, %zu of %zu in use "
           "(raise arena_bytes= when compiling)",
           bytes, top_, capacity_);
    T* p = reinterpret_cast<T*>(base_ + top_);
    top_ += bytes;
    if (top_ > peak_) peak_ = top_;
    return p;
  }

  template <class T>
  T* alloc_zeroed(std::size_t count) {
    T* p = alloc<T>(count);
    std::memset(p, 0, count * sizeof(T));
    return p;
  }

  std::size_t mark() const { return top_; }
  void release(std::size_t mark) { top_ = mark; }
  void reset_peak() { peak_ = top_; }
  std::size_t peak() const { return peak_; }
  std::size_t capacity() const { return capacity_; }

 private:
  static std::size_t round_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

  char* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t top_ = 0;
  std::size_t peak_ = 0;
};

// Releases everything allocated in a C++ scope when the scope ends.
class ArenaScope {
 public:
  explicit ArenaScope(Arena& a) : arena_(a), mark_(a.mark()) {}
  ~ArenaScope() { arena_.release(mark_); }
  ArenaScope(const ArenaScope&) = delete;
  ArenaScope& operator=(const ArenaScope&) = delete;

 private:
  Arena& arena_;
  std::size_t mark_;
};

}  // namespace lt
