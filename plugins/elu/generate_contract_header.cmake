# Generates elu_plugin_contract.h from the ELU plugin contract JSON, so the
# strings compiled into the TensorRT plugin are the ones the exporter writes.
#
# Inputs: ELUNET_CONTRACT_JSON (path of elu_plugin.json), ELUNET_CONTRACT_HEADER
# (path of the header to write). Used by CMakeLists.txt at configure time, and
# in script mode by the contract test:
#   cmake -DELUNET_CONTRACT_JSON=... -DELUNET_CONTRACT_HEADER=... -P generate_contract_header.cmake
cmake_minimum_required(VERSION 3.19) # string(JSON)

foreach(var ELUNET_CONTRACT_JSON ELUNET_CONTRACT_HEADER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "generate_contract_header.cmake: set ${var}")
  endif()
endforeach()
file(READ "${ELUNET_CONTRACT_JSON}" _json)
get_filename_component(ELUNET_CONTRACT_JSON_NAME "${ELUNET_CONTRACT_JSON}" NAME)

foreach(key op_type onnx_domain plugin_name plugin_version plugin_namespace)
  string(JSON _value ERROR_VARIABLE _err GET "${_json}" ${key})
  if(_err)
    message(FATAL_ERROR "${ELUNET_CONTRACT_JSON}: ${_err}")
  endif()
  string(TOUPPER "${key}" _upper)
  string(REPLACE "OP_TYPE" "ONNX_OP_TYPE" _upper "${_upper}")
  set(ELUNET_${_upper} "${_value}")
endforeach()

# The plugin's C++ implements exactly one float32 field (alpha); a contract
# with other fields needs new plugin code, so it fails here, not at run time.
string(JSON _nfields LENGTH "${_json}" fields)
if(NOT _nfields EQUAL 1)
  message(FATAL_ERROR "${ELUNET_CONTRACT_JSON}: the plugin implements one field (alpha), the contract has ${_nfields}")
endif()
string(JSON ELUNET_ALPHA_FIELD MEMBER "${_json}" fields 0)
string(JSON ELUNET_ALPHA_FIELD_TYPE GET "${_json}" fields "${ELUNET_ALPHA_FIELD}")
if(NOT ELUNET_ALPHA_FIELD_TYPE STREQUAL "float32")
  message(FATAL_ERROR "${ELUNET_CONTRACT_JSON}: field ${ELUNET_ALPHA_FIELD} must be float32, is ${ELUNET_ALPHA_FIELD_TYPE}")
endif()

configure_file("${CMAKE_CURRENT_LIST_DIR}/elu_plugin_contract.h.in" "${ELUNET_CONTRACT_HEADER}" @ONLY)
