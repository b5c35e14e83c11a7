#include "elu_plugin.h"

#include "elu_kernel.h"
#include "elu_plugin_contract.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>

namespace elunet
{
namespace
{

std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};

bool isLinearElu(nvinfer1::PluginTensorDesc const& desc) noexcept
{
    using nvinfer1::DataType;
    return desc.format == nvinfer1::TensorFormat::kLINEAR
        && (desc.type == DataType::kFLOAT || desc.type == DataType::kHALF || desc.type == DataType::kBF16);
}

// -1 for a type the kernel does not have (supportsFormatCombination keeps
// TensorRT from choosing one, so this only guards against a broken engine).
int32_t kernelDtype(nvinfer1::DataType type) noexcept
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return ELUNET_ELU_FLOAT32;
    case nvinfer1::DataType::kHALF: return ELUNET_ELU_FLOAT16;
    case nvinfer1::DataType::kBF16: return ELUNET_ELU_BFLOAT16;
    default: return -1;
    }
}

int64_t volume(nvinfer1::Dims const& dims) noexcept
{
    int64_t n = 1;
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        n *= dims.d[i];
    }
    return n;
}

} // namespace

void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    nvinfer1::ILoggerFinder* expected = nullptr;
    gLoggerFinder.compare_exchange_strong(expected, finder);
}

void logError(char const* message) noexcept
{
    nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
    nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(nvinfer1::ILogger::Severity::kERROR, message);
    }
    else
    {
        std::fprintf(stderr, "[%s] %s\n", contract::kPluginName, message);
    }
}

void reportException(char const* where, std::exception const* e, nvinfer1::IErrorRecorder* recorder) noexcept
{
    // A buffer on the stack: the exception may be a bad_alloc.
    char message[1024];
    if (e != nullptr)
    {
        std::snprintf(message, sizeof(message), "%s: caught exception: %s", where, e->what());
    }
    else
    {
        std::snprintf(message, sizeof(message), "%s: caught an unknown exception", where);
    }
    if (recorder == nullptr)
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        recorder = registry != nullptr ? registry->getErrorRecorder() : nullptr;
    }
    if (recorder != nullptr)
    {
        bool const outOfMemory = dynamic_cast<std::bad_alloc const*>(e) != nullptr;
        recorder->reportError(
            outOfMemory ? nvinfer1::ErrorCode::kFAILED_ALLOCATION : nvinfer1::ErrorCode::kINTERNAL_ERROR, message);
    }
    logError(message);
}

EluPlugin::EluPlugin(float alpha) noexcept
    : mAlpha(alpha)
{
}

EluPlugin::EluPlugin(EluPlugin const& other) noexcept
    : mAlpha(other.mAlpha)
{
}

EluPlugin::~EluPlugin()
{
    if (mErrorRecorder != nullptr)
    {
        mErrorRecorder->decRefCount();
    }
}

nvinfer1::IPluginCapability* EluPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

nvinfer1::IPluginV3* EluPlugin::clone() noexcept
{
    try
    {
        return new EluPlugin(*this);
    }
    catch (std::exception const& e)
    {
        reportException("EluPlugin::clone", &e, mErrorRecorder);
    }
    catch (...)
    {
        reportException("EluPlugin::clone", nullptr, mErrorRecorder);
    }
    return nullptr;
}

char const* EluPlugin::getPluginName() const noexcept
{
    return contract::kPluginName;
}

char const* EluPlugin::getPluginVersion() const noexcept
{
    return contract::kPluginVersion;
}

char const* EluPlugin::getPluginNamespace() const noexcept
{
    return contract::kPluginNamespace;
}

int32_t EluPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || in[0].desc.type != out[0].desc.type)
    {
        logError("EluPlugin takes one input and gives one output of the same type");
        return -1;
    }
    return 0;
}

int32_t EluPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        logError("EluPlugin takes one input and gives one output");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

int32_t EluPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1)
    {
        logError("EluPlugin takes one input and gives one output");
        return -1;
    }
    // Elementwise: the output has the input's (symbolic) shape, no new expressions.
    outputs[0] = inputs[0];
    return 0;
}

bool EluPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos].desc;
    if (pos == 0)
    {
        return isLinearElu(desc);
    }
    return isLinearElu(desc) && desc.type == inOut[0].desc.type;
}

int32_t EluPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t EluPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 1 || nbOutputs != 1 || !isLinearElu(in[0]) || in[0].type != out[0].type
        || volume(in[0].dims) != volume(out[0].dims))
    {
        logError("EluPlugin: input and output must be linear fp32/fp16/bf16 tensors of one type and shape");
        return -1;
    }
    return 0;
}

int32_t EluPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    try
    {
        int32_t const dtype = kernelDtype(inputDesc[0].type);
        if (dtype < 0)
        {
            logError("EluPlugin: unsupported data type at enqueue");
            return -1;
        }
        int const status
            = elunet_elu_launch(inputs[0], outputs[0], volume(inputDesc[0].dims), dtype, mAlpha, stream);
        if (status != 0)
        {
            std::string const message = "EluPlugin: kernel launch failed with cudaError " + std::to_string(status);
            logError(message.c_str());
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        reportException("EluPlugin::enqueue", &e, mErrorRecorder);
    }
    catch (...)
    {
        reportException("EluPlugin::enqueue", nullptr, mErrorRecorder);
    }
    return -1;
}

nvinfer1::IPluginV3* EluPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    // No per-context resources: each execution context gets its own copy, which
    // reports exceptions to that context's error recorder (TensorRT keeps the
    // context's resources valid until it deletes the plugin; the reference
    // count tells the recorder's owner that the plugin still holds it).
    auto* plugin = static_cast<EluPlugin*>(clone());
    if (plugin != nullptr && context != nullptr)
    {
        plugin->mErrorRecorder = context->getErrorRecorder();
        if (plugin->mErrorRecorder != nullptr)
        {
            plugin->mErrorRecorder->incRefCount();
        }
    }
    return plugin;
}

nvinfer1::PluginFieldCollection const* EluPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialized.assign(
            {nvinfer1::PluginField(contract::kAlphaField, &mAlpha, nvinfer1::PluginFieldType::kFLOAT32, 1)});
        mSerializedCollection.nbFields = static_cast<int32_t>(mSerialized.size());
        mSerializedCollection.fields = mSerialized.data();
        return &mSerializedCollection;
    }
    catch (std::exception const& e)
    {
        reportException("EluPlugin::getFieldsToSerialize", &e, mErrorRecorder);
    }
    catch (...)
    {
        reportException("EluPlugin::getFieldsToSerialize", nullptr, mErrorRecorder);
    }
    return nullptr;
}

EluPluginCreator::EluPluginCreator()
    : mFields{nvinfer1::PluginField(contract::kAlphaField, nullptr, nvinfer1::PluginFieldType::kFLOAT32, 1)}
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
}

nvinfer1::IPluginV3* EluPluginCreator::createPlugin(
    char const* /*name*/, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // The same fields arrive at build time (from the ONNX node attributes) and
        // at run time (from getFieldsToSerialize), so both phases parse alike.
        bool found = false;
        float alpha = 0.0f;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
        {
            nvinfer1::PluginField const& field = fc->fields[i];
            if (field.name == nullptr || std::strcmp(field.name, contract::kAlphaField) != 0)
            {
                std::string const message = std::string("EluPlugin: unknown field '") + (field.name ? field.name : "")
                    + "'; expected only '" + contract::kAlphaField + "'";
                logError(message.c_str());
                return nullptr;
            }
            if (field.type != nvinfer1::PluginFieldType::kFLOAT32 || field.length != 1 || field.data == nullptr)
            {
                // Say what arrived: a wrong type here means an engine or ONNX node written against another
                // contract (e.g. a float64 alpha), which has to be rebuilt, not reinterpreted.
                std::string const message = std::string("EluPlugin: field '") + contract::kAlphaField
                    + "' must be one float32 (kFLOAT32), got PluginFieldType "
                    + std::to_string(static_cast<int32_t>(field.type)) + " with length " + std::to_string(field.length)
                    + (field.data == nullptr ? " and no data" : "")
                    + "; rebuild the engine or ONNX with a plugin that writes alpha as one float32";
                logError(message.c_str());
                return nullptr;
            }
            alpha = *static_cast<float const*>(field.data);
            found = true;
        }
        if (!found || !std::isfinite(alpha))
        {
            std::string const message = std::string("EluPlugin: needs a finite float32 field '") + contract::kAlphaField
                + "' (the ELU alpha); the exporter writes it as a node attribute";
            logError(message.c_str());
            return nullptr;
        }
        return new EluPlugin(alpha);
    }
    catch (std::exception const& e)
    {
        reportException("EluPluginCreator::createPlugin", &e);
    }
    catch (...)
    {
        reportException("EluPluginCreator::createPlugin", nullptr);
    }
    return nullptr;
}

nvinfer1::PluginFieldCollection const* EluPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* EluPluginCreator::getPluginName() const noexcept
{
    return contract::kPluginName;
}

char const* EluPluginCreator::getPluginVersion() const noexcept
{
    return contract::kPluginVersion;
}

char const* EluPluginCreator::getPluginNamespace() const noexcept
{
    return contract::kPluginNamespace;
}

} // namespace elunet
