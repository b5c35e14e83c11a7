// The ELU TensorRT plugin (IPluginV3, "V3One" capabilities) and its creator.
//
// Name, version, namespace and field name come from elu_plugin_contract.h,
// generated from elunet/elu_plugin.json (the exporter writes the same strings
// into the ONNX EluPlugin nodes).
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <exception>
#include <vector>

namespace elunet
{

class EluPlugin final : public nvinfer1::IPluginV3,
                        public nvinfer1::IPluginV3OneCore,
                        public nvinfer1::IPluginV3OneBuild,
                        public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit EluPlugin(float alpha) noexcept;
    EluPlugin(EluPlugin const& other) noexcept;
    EluPlugin& operator=(EluPlugin const&) = delete;
    ~EluPlugin() override;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

    float alpha() const noexcept { return mAlpha; }

private:
    float mAlpha;
    // The execution context's error recorder, set (and incRefCount'ed) by
    // attachToContext; nullptr in other plugins, clones included.
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
    // What getFieldsToSerialize hands out; it points into this object.
    std::vector<nvinfer1::PluginField> mSerialized;
    nvinfer1::PluginFieldCollection mSerializedCollection{};
};

class EluPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    EluPluginCreator();

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

// Where plugin errors go: TensorRT's logger once the library was loaded
// dynamically (setLoggerFinder), standard error otherwise.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;
void logError(char const* message) noexcept;

// What every catch block of a noexcept entry point calls, so that no exception
// reaches TensorRT (it would std::terminate the process): reports "where: what"
// (e is nullptr for an exception not derived from std::exception) to `recorder`,
// or, without one, to the plugin registry's error recorder if one is set, and
// always through logError. Allocates nothing, so it also works for bad_alloc.
void reportException(
    char const* where, std::exception const* e, nvinfer1::IErrorRecorder* recorder = nullptr) noexcept;

} // namespace elunet
