// Static registration: the creator registers itself when the library is
// opened (dlopen, LD_PRELOAD, linking), which is how Triton's TensorRT backend
// and plain C++ applications pick plugins up.
//
// This is what REGISTER_TENSORRT_PLUGIN does, except that the macro registers
// under the empty namespace while the ONNX nodes name the contract's namespace,
// so the registrar passes the creator's own namespace.
#include "elu_plugin.h"

#include <memory>

namespace
{

// Runs while the library is opened: an exception escaping it would
// std::terminate the process, so the creator is made inside the try (a member
// constructed before the body could not be caught there) and a failure is
// reported, leaving the plugin unregistered.
struct EluPluginRegistrar
{
    EluPluginRegistrar() noexcept
    {
        try
        {
            creator = std::make_unique<elunet::EluPluginCreator>();
            getPluginRegistry()->registerCreator(*creator, creator->getPluginNamespace());
        }
        catch (std::exception const& e)
        {
            elunet::reportException("EluPluginRegistrar", &e);
        }
        catch (...)
        {
            elunet::reportException("EluPluginRegistrar", nullptr);
        }
    }

    std::unique_ptr<elunet::EluPluginCreator> creator;
};

EluPluginRegistrar const gRegistrar;

} // namespace
