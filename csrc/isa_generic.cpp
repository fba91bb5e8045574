// Generic encode tile: the portable templates under the baseline ISA flags.
#include "isa_kernels_portable.h"

namespace sae {
namespace {
bool always() { return true; }
}  // namespace

const IsaKernels kGenericKernels = {
    "generic", 0, always,
    {portable::tile<float, float>, 4, 1},
    {portable::tile<float, bf16>, 4, 1},
    {portable::tile<float, f16>, 4, 1},
    {portable::tile<double, double>, 4, 1},
    {portable::screen_topk<float>, portable::screen_threshold<float>},
    {portable::screen_topk<double>, portable::screen_threshold<double>},
    portable::decode_row<float>, portable::decode_row<bf16>, portable::decode_row<f16>,
    portable::fma_probe,
    portable::dot_row<float>, portable::dot_row<bf16>, portable::dot_row<f16>, portable::axpy,
};

}  // namespace sae
