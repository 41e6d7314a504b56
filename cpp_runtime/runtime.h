// What every generated module includes: the arena, kernels, non-owning
// function references for continuations, and the entry-point runner that
// turns C++ errors into a status the Python loader raises.
#pragma once
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#include "arena.h"
#include "blas.h"
#include "error.h"
#include "kernels.h"
#include "math.h"
#include "nn.h"

extern "C" {
// Shared with the cffi cdef in lantern_stage/runtime.py.
typedef struct {
  int64_t peak_bytes;
  // 0 ok, 1 error, 2 index error, 3 out of memory, 4 recursion too deep,
  // 6 integer division by zero, 7 int32 overflow
  int32_t kind;
  char message[512];
} lt_status;
}

namespace lt {

// A non-owning reference to a callable: how continuations are passed.
// Unlike std::function it never allocates; the referenced lambda lives in an
// enclosing frame, which CPS guarantees outlives every call through it.
template <class Sig>
class FnRef;

template <class R, class... Args>
class FnRef<R(Args...)> {
 public:
  FnRef() = default;
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FnRef>>>
  FnRef(F&& f)  // NOLINT: implicit, like a function pointer
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* o, Args... a) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(a...); }) {}
  R operator()(Args... a) const { return call_(obj_, a...); }

 private:
  void* obj_ = nullptr;
  R (*call_)(void*, Args...) = nullptr;
};

class RecursionTooDeep : public Error {
 public:
  using Error::Error;
};

class Runtime {
 public:
  Runtime() { scipy_openblas_set_num_threads(1); }
  ~Runtime() {
    if (stack_) munmap(stack_, stack_bytes_);
  }

  Arena arena;
  std::size_t arena_bytes = std::size_t(1) << 30;
  long max_depth = 1000000;
  std::size_t stack_bytes_ = std::size_t(1) << 30;  // address space; pages touched on demand

  // Runs `body` with the arena reset; errors become `status`.  `deep` bodies
  // (staged recursion and CPS loops) run on a large private stack, guarded.
  template <class F>
  int run(lt_status* status, bool deep, F&& body) {
    status->kind = 0;
    status->message[0] = '\0';
    try {
      arena.reserve(arena_bytes);
      arena.release(0);
      arena.reset_peak();
      depth_ = 0;
      if (deep)
        run_on_stack(body);
      else
        body();
    } catch (const RecursionTooDeep& e) {
      set(status, 4, e.what());
    } catch (const IndexError& e) {
      set(status, 2, e.what());
    } catch (const ZeroDivisionError& e) {
      set(status, 6, e.what());
    } catch (const OverflowError& e) {
      set(status, 7, e.what());
    } catch (const std::bad_alloc&) {
      set(status, 3, "out of memory");
    } catch (const std::exception& e) {
      set(status, std::strstr(e.what(), "arena exhausted") ? 3 : 1, e.what());
    }
    arena.release(0);
    status->peak_bytes = static_cast<int64_t>(arena.peak());
    return status->kind;
  }

  // Entered by every staged function call: bounds recursion by a depth budget
  // and by the stack left, so running out is an exception, not a crash.
  class Frame {
   public:
    explicit Frame(Runtime& rt) : rt_(rt) {
      char probe;
      if (++rt.depth_ > rt.max_depth)
        throw RecursionTooDeep(format_msg("recursion deeper than the budget of %ld calls", rt.max_depth));
      if (rt.stack_ && &probe - static_cast<char*>(rt.stack_) < kReserve)
        throw RecursionTooDeep(format_msg("recursion too deep: stack of %zu MiB used up at depth %ld",
                                          rt.stack_bytes_ >> 20, rt.depth_));
    }
    ~Frame() { --rt_.depth_; }

   private:
    Runtime& rt_;
  };

 private:
  static constexpr long kReserve = 1 << 20;  // kept free for kernels and unwinding

  static std::string format_msg(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    std::string s = format(fmt, args);
    va_end(args);
    return s;
  }

  static void set(lt_status* st, int kind, const char* msg) {
    st->kind = kind;
    std::strncpy(st->message, msg, sizeof st->message - 1);
    st->message[sizeof st->message - 1] = '\0';
  }

  template <class F>
  void run_on_stack(F& body) {
    if (!stack_) {
      void* p = mmap(nullptr, stack_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      stack_ = p;
    }
    struct Trampoline {
      F* body;
      std::exception_ptr error;
      static void enter(unsigned hi, unsigned lo) {
        auto* t = reinterpret_cast<Trampoline*>((static_cast<uintptr_t>(hi) << 32) | lo);
        try {
          (*t->body)();
        } catch (...) {
          t->error = std::current_exception();
        }
      }
    } t{&body, nullptr};
    ucontext_t here, there;
    getcontext(&there);
    there.uc_stack.ss_sp = stack_;
    there.uc_stack.ss_size = stack_bytes_;
    there.uc_link = &here;
    auto addr = reinterpret_cast<uintptr_t>(&t);
    makecontext(&there, reinterpret_cast<void (*)()>(&Trampoline::enter), 2, static_cast<unsigned>(addr >> 32),
                static_cast<unsigned>(addr & 0xffffffffu));
    swapcontext(&here, &there);
    if (t.error) std::rethrow_exception(t.error);
  }

  void* stack_ = nullptr;
  long depth_ = 0;
};

}  // namespace lt
