/* nccl_abi.h — the part of NCCL's C ABI poc uses: the toolkit's nccl.h where it is
 * installed (it ships with CUDA 12.8 and later), else the same declarations written out
 * here. NCCL is never linked: runtime/cuda/nccl.c opens libnccl.so.2 with dlopen, and
 * tests/nccl_standin builds a library with these entry points for tests without a GPU.
 *
 * The values below are NCCL 2's stable ABI (unchanged since 2.0 for the results and
 * operations, since 2.10 for bfloat16); a struct of 128 bytes is the unique id. */
#ifndef POC_NCCL_ABI_H
#define POC_NCCL_ABI_H

#include <stddef.h>

#if defined(__has_include)
#if __has_include(<nccl.h>)
#include <nccl.h>
#define POC_NCCL_HEADER 1
#endif
#endif

#ifndef POC_NCCL_HEADER
typedef struct ncclComm *ncclComm_t;
typedef struct CUstream_st *cudaStream_t;
#define NCCL_UNIQUE_ID_BYTES 128
typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;
typedef enum {
  ncclSuccess = 0, ncclUnhandledCudaError = 1, ncclSystemError = 2, ncclInternalError = 3,
  ncclInvalidArgument = 4, ncclInvalidUsage = 5, ncclRemoteError = 6, ncclInProgress = 7,
  ncclNumResults = 8
} ncclResult_t;
typedef enum { ncclSum = 0, ncclProd = 1, ncclMax = 2, ncclMin = 3, ncclAvg = 4 } ncclRedOp_t;
typedef enum {
  ncclInt8 = 0, ncclUint8 = 1, ncclInt32 = 2, ncclUint32 = 3, ncclInt64 = 4, ncclUint64 = 5,
  ncclFloat16 = 6, ncclFloat32 = 7, ncclFloat64 = 8, ncclBfloat16 = 9
} ncclDataType_t;
ncclResult_t ncclGetVersion(int *version);
ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId);
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclCommAbort(ncclComm_t comm);
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *asyncError);
const char *ncclGetErrorString(ncclResult_t result);
const char *ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream);
ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);
#endif

/* The entry points nccl.c looks up, in one table (X(name) per function); ncclGetLastError
 * (NCCL 2.13 and later) is looked up on its own and may be missing. */
#define POC_NCCL_FUNCS(X)                                                                  \
  X(ncclGetVersion) X(ncclGetUniqueId) X(ncclCommInitRank) X(ncclCommDestroy)             \
  X(ncclCommAbort) X(ncclCommGetAsyncError) X(ncclGetErrorString) X(ncclAllReduce)        \
  X(ncclReduceScatter) X(ncclAllGather) X(ncclBroadcast) X(ncclGroupStart) X(ncclGroupEnd)

#endif
