// Fibers for the emulator's scheduler (emu_runtime.cpp): a context per emulated thread, switched
// by hand, and the notes AddressSanitizer needs when execution moves between stacks.
#pragma once

#include <cstddef>
#include <cstdint>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace emu {
namespace {

// On x86-64 a switch saves the callee-saved registers and the FP control words on the old stack
// and pops them from the new one (about 30x faster than glibc's swapcontext, which makes a system
// call for the signal mask on every switch). Elsewhere, ucontext.
#if defined(__x86_64__)
extern "C" void emu_switch_stack(void** save_sp, void* next_sp);
asm(R"(
.pushsection .text
.globl emu_switch_stack
.type emu_switch_stack,@function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch_stack, .-emu_switch_stack
.popsection
)");

struct Context {
  void* sp = nullptr;
};
// A fresh stack whose first switch "returns" into entry() with the ABI's stack alignment.
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top);
  slot[-1] = 0;                                       // entry's (never used) return address
  slot[-2] = reinterpret_cast<uint64_t>(entry);       // popped by ret
  for (int r = 3; r <= 8; ++r) slot[-r] = 0;          // rbp rbx r12 r13 r14 r15
  slot[-9] = uint64_t(0x037F) << 32 | 0x1F80;         // default x87 control word, MXCSR
  c.sp = &slot[-9];
}
void switch_context(Context& from, Context& to) { emu_switch_stack(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
};
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// AddressSanitizer (build.py's sanitize="address") must be told when execution moves to another
// stack, and a reused fiber stack must be unpoisoned: no-ops in a normal build.
#if defined(__SANITIZE_ADDRESS__)
void asan_start_switch(void** fake_save, const void* bottom, size_t size) {
  __sanitizer_start_switch_fiber(fake_save, bottom, size);
}
void asan_finish_switch(void* fake, const void** bottom_old, size_t* size_old) {
  __sanitizer_finish_switch_fiber(fake, bottom_old, size_old);
}
void asan_unpoison(void* p, size_t n) { __asan_unpoison_memory_region(p, n); }
#else
void asan_start_switch(void**, const void*, size_t) {}
void asan_finish_switch(void*, const void**, size_t*) {}
void asan_unpoison(void*, size_t) {}
#endif

}  // namespace
}  // namespace emu
