// Entry points for dynamic loading: IPluginRegistry::loadLibrary (Python's
// trt.get_plugin_registry().load_library, trtexec --dynamicPlugins) looks up
// these two symbols and registers what getCreators returns.
//
// This library must not also register statically: loadLibrary fails when any
// of its plugins is already registered, and a static registrar would register
// the creator the moment the library is opened (plugin_entry_static.cpp does
// that, in the other library).
#include "elu_plugin.h"

extern "C" TENSORRTAPI void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    elunet::setLoggerFinder(finder);
}

// TensorRT calls this from noexcept code, so nothing may escape: if making the
// creator throws (bad_alloc), this reports it and returns no creators; the
// static is then made again on the next call.
extern "C" TENSORRTAPI nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept
{
    nbCreators = 0;
    try
    {
        static elunet::EluPluginCreator creator;
        static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
        nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
        return creators;
    }
    catch (std::exception const& e)
    {
        elunet::reportException("getCreators", &e);
    }
    catch (...)
    {
        elunet::reportException("getCreators", nullptr);
    }
    return nullptr;
}
