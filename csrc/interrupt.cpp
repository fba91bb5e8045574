#include "interrupt.h"

namespace sae {
namespace {

constexpr auto kPollInterval = std::chrono::milliseconds(100);

std::atomic<PollFn> g_poll{nullptr};
thread_local CancelScope* t_scope = nullptr;

}  // namespace

void set_interrupt_poll(PollFn poll) { g_poll.store(poll); }

CancelScope::CancelScope()
    : owner_(std::this_thread::get_id()),
      next_poll_(std::chrono::steady_clock::now() + kPollInterval),
      outer_(t_scope) {
  t_scope = this;
}

CancelScope::~CancelScope() { t_scope = outer_; }

CancelScope* current_scope() { return t_scope; }

ScopeOnThread::ScopeOnThread(CancelScope* scope) : saved_(t_scope) { t_scope = scope; }
ScopeOnThread::~ScopeOnThread() { t_scope = saved_; }

bool interrupted() {
  CancelScope* s = t_scope;
  if (s == nullptr) return false;
  if (s->cancelled_.load(std::memory_order_relaxed)) return true;
  if (std::this_thread::get_id() != s->owner_) return false;
  const auto now = std::chrono::steady_clock::now();
  if (now < s->next_poll_) return false;
  s->next_poll_ = now + kPollInterval;
  const PollFn poll = g_poll.load();
  if (poll != nullptr && poll()) {
    s->cancelled_.store(true);
    return true;
  }
  return false;
}

}  // namespace sae
