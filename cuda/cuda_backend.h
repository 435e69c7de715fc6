// The CUDA implementation of the Backend interface (engine/backend/backend.h). Plain C++ header:
// the engine includes it only when FTUNE_HAVE_CUDA is defined.
#pragma once
#include <memory>

#include "engine/backend/backend.h"

namespace ftune {

// The backend on GPU `device`. Throws ftune::Error when the device cannot be used.
std::unique_ptr<Backend> make_cuda_backend(int device);

}  // namespace ftune
