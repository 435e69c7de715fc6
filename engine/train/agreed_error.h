// An error every rank raises in the same step, having agreed on it through a collective (a
// failed checkpoint, a guard stopping the run): the ranks end together and cleanly, so none is
// aborted while another still prints why.
#pragma once
#include "engine/base/error.h"

namespace ftune {

class AgreedError : public Error {
 public:
  using Error::Error;
};

}  // namespace ftune
