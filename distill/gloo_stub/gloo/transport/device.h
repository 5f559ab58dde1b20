// See ../README.md: declarations only, for torch's ProcessGroupGloo.hpp.
#pragma once

namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
