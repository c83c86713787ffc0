# Vectorisable float exp/tanh/sigmoid (fastmath.h): branch-free static inline C, so
# loops that call them compile to SIMD code without -ffast-math.
cdef extern from "fastmath.h" nogil:
    float tb_expf(float x)
    float tb_tanhf(float x)
    float tb_sigmoidf(float x)
