// Clamped reconstruction (steering), as docs/design.md defines it. For a clamp set C with targets
// c_f, delta_f = clamp_delta(z_f, c_f) (csrc/clamp.h), and
//   keep_error: y = x + sum_f delta_f W_dec[f]
//   otherwise:  y = decode(z) + sum_f delta_f W_dec[f]     (= decode(z'), z'_f = z_f + delta_f)
#pragma once

#include "clamp.h"
#include "common.h"
#include "sparse_rows.h"

namespace sae {

// The clamped features come from the caller and are never trusted: a feature outside [0, d_sae) is
// skipped (its z is 0, it adds nothing) and counted in the kernel's feature check, never read.
template <class T> struct Clamp {
  index_t count = 0;                 // |C|
  const index_t* features = nullptr; // [count], expected distinct and in [0, d_sae)
  const T* targets = nullptr;        // [count]
  ClampMode mode = ClampMode::set;
  bool only_active = false;          // where="active"
};

// Threshold SAEs (JumpReLU / ReLU) with keep_error: z_f needs only column f of W_enc, so a row
// costs O(|C| * d_in) whatever d_sae is. w_enc is [d_in, d_sae], w_dec [d_sae, d_in] (any
// strides); threshold null means ReLU; b_dec null means x is not shifted before encoding.
// Writes y [n, d_in] and the unclamped z_f into z [n, count].
template <class T, class W>
void steer_threshold(index_t n, const T* x, const Strided<W>& w_enc, const T* b_enc,
                     const T* threshold, const T* b_dec, const Strided<W>& w_dec,
                     const Clamp<T>& clamp, T* y, T* z, IndexCheck* feature_check);

// Any SAE, from its codes (values, indices [n, k]): z_f is the code's value for latent f (0 if
// absent). b_dec (null: none) is used only without keep_error.
template <class T, class W>
void steer_codes(index_t n, index_t k, const T* x, const T* values, const index_t* indices,
                 const Strided<W>& w_dec, const T* b_dec, bool keep_error,
                 const Clamp<T>& clamp, T* y, T* z, IndexCheck* check, IndexCheck* feature_check);

}  // namespace sae
