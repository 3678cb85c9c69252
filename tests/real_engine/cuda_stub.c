/* A stand-in for the CUDA driver library (libcuda.so.1) on a host without a GPU.
 *
 * The PyPI sglang-kernel is built for GPUs only: its extension modules (and flashinfer's,
 * deep_gemm's ...) link against libcuda.so.1, and the dynamic loader refuses to load them
 * without it. This stub exports every driver entry point those libraries of SGLang 0.5.x import
 * (`nm -D --undefined-only` of each .so in its environment that needs libcuda.so.1), each
 * answering CUDA_ERROR_NO_DEVICE: the imports succeed, torch sees no GPU and SGLang takes its
 * plain PyTorch (CPU) paths. A newer SGLang needing another symbol fails to start with
 * "undefined symbol: cuXxx" in its log: add the name below.
 *
 * Build: gcc -shared -fPIC -o libcuda.so.1 cuda_stub.c   (scripts/test-real-engines does it)
 */

#define CUDA_ERROR_NO_DEVICE 100
/* Every argument list is ignored: the C calling convention lets a caller pass any. */
#define STUB(name) \
    int name(void) { return CUDA_ERROR_NO_DEVICE; }

STUB(cuCtxFromGreenCtx)
STUB(cuCtxGetCurrent)
STUB(cuCtxGetDevice)
STUB(cuCtxGetId)
STUB(cuCtxPopCurrent_v2)
STUB(cuCtxPushCurrent_v2)
STUB(cuCtxSetCurrent)
STUB(cuCtxSynchronize)
STUB(cuDevResourceGenerateDesc)
STUB(cuDevSmResourceSplitByCount)
STUB(cuDeviceGet)
STUB(cuDeviceGetAttribute)
STUB(cuDeviceGetCount)
STUB(cuDeviceGetDevResource)
STUB(cuDevicePrimaryCtxGetState)
STUB(cuDevicePrimaryCtxRetain)
STUB(cuDriverGetVersion)
STUB(cuFuncGetAttribute)
STUB(cuFuncSetAttribute)
STUB(cuFuncSetCacheConfig)
STUB(cuGetErrorName)
STUB(cuGetErrorString)
STUB(cuGetExportTable)
STUB(cuGetProcAddress)
STUB(cuGetProcAddress_v2)
STUB(cuGreenCtxCreate)
STUB(cuGreenCtxDestroy)
STUB(cuGreenCtxGetDevResource)
STUB(cuInit)
STUB(cuLaunchCooperativeKernel)
STUB(cuLaunchKernel)
STUB(cuLaunchKernelEx)
STUB(cuLinkAddData_v2)
STUB(cuLinkComplete)
STUB(cuLinkCreate_v2)
STUB(cuMemAddressFree)
STUB(cuMemAddressReserve)
STUB(cuMemCreate)
STUB(cuMemGetAllocationGranularity)
STUB(cuMemMap)
STUB(cuMemRelease)
STUB(cuMemSetAccess)
STUB(cuMemUnmap)
STUB(cuModuleGetFunction)
STUB(cuModuleLoad)
STUB(cuModuleLoadData)
STUB(cuModuleLoadDataEx)
STUB(cuModuleUnload)
STUB(cuOccupancyMaxActiveBlocksPerMultiprocessor)
STUB(cuPointerGetAttribute)
STUB(cuStreamCreate)
STUB(cuTensorMapEncodeTiled)
