// Static registration: the creator registers itself when the library is
// opened (dlopen, LD_PRELOAD, linking), which is how Triton's TensorRT backend
// and plain C++ applications pick plugins up.
//
// This is what REGISTER_TENSORRT_PLUGIN does, except that the macro registers
// under the empty namespace while the ONNX nodes name the contract's namespace,
// so the registrar passes the creator's own namespace.
#include "elu_plugin.h"

namespace
{

struct EluPluginRegistrar
{
    EluPluginRegistrar()
    {
        getPluginRegistry()->registerCreator(creator, creator.getPluginNamespace());
    }

    elunet::EluPluginCreator creator;
};

EluPluginRegistrar const gRegistrar;

} // namespace
