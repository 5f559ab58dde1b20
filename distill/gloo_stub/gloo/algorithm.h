// See README.md: declarations only, for torch's ProcessGroupGloo.hpp.
#pragma once
#include "gloo/context.h"
