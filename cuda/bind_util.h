// What the two CUDA binding files share: Python passes device pointers and streams as integers.
#pragma once

#include <cstdint>

namespace sae_cuda {

using ptr_t = std::uintptr_t;
template <class T> T* as(ptr_t p) { return reinterpret_cast<T*>(p); }
inline void* stream_of(ptr_t s) { return reinterpret_cast<void*>(s); }

}  // namespace sae_cuda
