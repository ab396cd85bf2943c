//! Inference engine: GEMM kernels on AMX tiles with AVX-512, AVX2 and scalar fallbacks.
