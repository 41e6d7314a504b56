// What every generated module includes: the arena, kernels, non-owning
// function references for continuations, and the entry-point runner that
// turns C++ errors into a status the Python loader raises.
#pragma once
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include <csignal>

#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#include "arena.h"
#include "blas.h"
#include "collective.h"
#include "error.h"
#include "kernels.h"
#include "math.h"
#include "nn.h"

extern "C" {
// Shared with the cffi cdef in lantern_stage/runtime.py.
typedef struct {
  int64_t peak_bytes;
  // 0 ok, 1 error, 2 index error, 3 out of memory, 4 recursion too deep,
  // 5 interrupted, 6 integer division by zero, 7 int32 overflow
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

class Interrupted : public Error {
 public:
  using Error::Error;
};

// Ctrl-C during a call.  Python handles SIGINT only between bytecodes, never
// inside a C call, so while a call from the main thread runs (where Python
// handles signals) this module's handler replaces Python's and sets a flag;
// loop back-edges and staged-function entries poll it (one load, one
// predictable branch) and unwind through the ordinary error path.  Static: one
// flag per module, whose calls are serialised by the loader's lock.
namespace {
volatile std::sig_atomic_t interrupted = 0;
void on_sigint(int) { interrupted = 1; }  // internal linkage: one per translation unit
}  // namespace

inline void poll_interrupt() {
  if (__builtin_expect(interrupted, 0)) throw Interrupted("interrupted (SIGINT)");
}

// Installs on_sigint for one call when the caller is the main thread and
// SIGINT has a handler (Python's); ignored or default SIGINT is left alone.
// Two system calls per call (install, restore): ~1 us where syscalls are slow.
class SigintScope {
 public:
  SigintScope() {
    interrupted = 0;
    static thread_local int main_thread = -1;  // Linux: the main thread's id is the process id
    if (main_thread < 0) main_thread = syscall(SYS_gettid) == getpid();
    if (!main_thread) return;
    struct sigaction mine {};
    mine.sa_handler = on_sigint;
    sigemptyset(&mine.sa_mask);
    if (sigaction(SIGINT, &mine, &saved_) != 0) return;
    if (!(saved_.sa_flags & SA_SIGINFO) && (saved_.sa_handler == SIG_IGN || saved_.sa_handler == SIG_DFL)) {
      sigaction(SIGINT, &saved_, nullptr);  // not Python's handler: keep what the process chose
      interrupted = 0;
      return;
    }
    active_ = true;
  }
  // Puts the saved handler back.  A Ctrl-C that came when no poll could see it
  // (straight-line code) is handed on to that handler, so Python raises
  // KeyboardInterrupt after the call as it always would have.
  void restore(bool stopped_by_it) {
    if (!active_) return;
    active_ = false;
    sigaction(SIGINT, &saved_, nullptr);
    if (interrupted && !stopped_by_it) raise(SIGINT);
  }
  ~SigintScope() { restore(true); }
  SigintScope(const SigintScope&) = delete;
  SigintScope& operator=(const SigintScope&) = delete;

 private:
  struct sigaction saved_ {};
  bool active_ = false;
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
  Collective collective;  // set by lantern_set_collective under MPI
  std::size_t stack_bytes_ = std::size_t(1) << 30;  // address space; pages touched on demand

  // Runs `body` with the arena reset; errors become `status`.  `deep` bodies
  // (staged recursion and CPS loops) run on a large private stack, guarded.
  template <class F>
  int run(lt_status* status, bool deep, F&& body) {
    status->kind = 0;
    status->message[0] = '\0';
    SigintScope sigint;
    try {
      arena.reserve(arena_bytes);
      arena.release(0);
      arena.reset_peak();
      depth_ = 0;
      if (deep)
        run_on_stack(body);
      else
        body();
    } catch (const Interrupted& e) {
      set(status, 5, e.what());
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
    sigint.restore(status->kind == 5);
    return status->kind;
  }

  // Entered by every staged function call: bounds recursion by a depth budget
  // and by the stack left, so running out is an exception, not a crash; and
  // stops at Ctrl-C.
  class Frame {
   public:
    explicit Frame(Runtime& rt) : rt_(rt) {
      char probe;
      poll_interrupt();
      if (++rt.depth_ > rt.max_depth)
        throw RecursionTooDeep(format_msg(
            "recursion deeper than the budget of %ld calls (max_depth counts staged function calls active at "
            "once, which is more than the recursion depth: a call made from a continuation nests inside the "
            "calls before it; under value_and_grad no call returns before the rest of the forward pass has run, "
            "so it is every call of the forward pass: one per tree node, one per loop iteration)",
            rt.max_depth));
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
