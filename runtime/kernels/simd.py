"""Sixteen-lane vectors for numba kernels: a few LLVM vector types and the operations on them.

Numba's integer arithmetic widens to int64 and its loop vectoriser cannot be steered, so an
int8 dot product written as a plain loop comes out as scalar or int64 code. These intrinsics
let a kernel hold LLVM vectors in its variables (`<16 x i32>`, `<16 x float>`) and say which
operation it wants; LLVM still does the register allocation, scheduling and addressing (a
splat of a loaded i32 folds into an embedded-broadcast operand, `{1to16}`).

    i32x16: 16 lanes of i32, also the carrier of 64 bytes (4 per lane) for the byte dot product
    f32x16: 16 lanes of f32

The byte dot product `dot_u8s8(acc, a, b)` adds to each i32 lane of acc the four products of
the unsigned bytes of a with the signed bytes of b in that lane. With AVX-512 VNNI it is one
instruction (vpdpbusd zmm); elsewhere it is written in plain LLVM IR (widen, multiply, add the
four partial products), which LLVM lowers for whatever the CPU has: same results, slower.
Products fit easily: 255 * 127 * 4 < 2^17, and the kernels add at most 32 of them per lane
before converting to float.

Loads take an array and an element index; the caller guarantees the 64 (or 4) bytes are inside
the array (the kernels' Python wrappers check the shapes), as with every njit array access.
"""
from __future__ import annotations

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I32 = ir.IntType(32)
_V16I32 = ir.VectorType(_I32, 16)
_V16F32 = ir.VectorType(ir.FloatType(), 16)


def _host_features() -> dict:
    try:
        return dict(llvm_binding.get_host_cpu_features())
    except RuntimeError:
        return {}


def host_has_vnni512() -> bool:
    """True if LLVM's host CPU has AVX-512 VNNI (and BW), so vpdpbusd on zmm is available."""
    feats = _host_features()
    return bool(feats.get("avx512vnni")) and bool(feats.get("avx512bw"))


HAS_VNNI512 = host_has_vnni512()
HAS_AVX512BW = bool(_host_features().get("avx512bw"))


def host_has_f16c() -> bool:
    """True if numba compiles for this machine's CPU and it converts halves in hardware (F16C).
    Without it LLVM lowers a half-to-float conversion to a runtime call that numba's JIT does
    not provide, so the kernels take an integer path instead (NUMBA_CPU_NAME=generic, for a
    cache shared between machines, is such a target)."""
    import numba
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        return bool(llvm_binding.get_host_cpu_features().get("f16c"))
    except RuntimeError:
        return False


HAS_F16C = host_has_f16c()


class VecType(types.Type):
    def __init__(self, name: str, llvm_type):
        self.llvm_type = llvm_type
        super().__init__(name=name)


i32x16 = VecType("i32x16", _V16I32)
f32x16 = VecType("f32x16", _V16F32)


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, fe_type.llvm_type)


def _element_ptr(context, builder, arrty, arr, index, pointee):
    """Pointer to element `index` of a contiguous array, cast to `pointee`*."""
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.bitcast(builder.gep(ary.data, [index]), pointee.as_pointer())


def _splat(builder, value, vty):
    undef = ir.Constant(vty, ir.Undefined)
    one = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(_I32, vty.count), [0] * vty.count))


def _is_array(t, dtypes=None):
    return isinstance(t, types.Array) and (dtypes is None or t.dtype in dtypes)


_BYTES = (types.uint8, types.int8)


# -- loads, stores, constants -----------------------------------------------------------------

@intrinsic
def load_bytes64(typingctx, arr, index):
    """64 bytes of a uint8/int8 array from element `index`, as i32x16 (unaligned load)."""
    if not (_is_array(arr, _BYTES) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], _V16I32), align=1)

    return i32x16(arr, index), codegen


@intrinsic
def store_bytes64(typingctx, arr, index, v):
    """Store the 64 bytes of v into a uint8/int8 array from element `index` (unaligned)."""
    if not (_is_array(arr, _BYTES) and isinstance(index, types.Integer) and v == i32x16):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _element_ptr(context, builder, sig.args[0], args[0], args[1], _V16I32), align=1)
        return context.get_dummy_value()

    return types.none(arr, index, v), codegen


@intrinsic
def splat_bytes4(typingctx, arr, index):
    """The 4 bytes of a uint8/int8 array at element `index`, as one i32 repeated in 16 lanes."""
    if not (_is_array(arr, _BYTES) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v = builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], _I32), align=1)
        return _splat(builder, v, _V16I32)

    return i32x16(arr, index), codegen


@intrinsic
def load_f32x16(typingctx, arr, index):
    """16 consecutive float32 of an array from element `index` (of a float32 array, or byte
    `index` of a uint8 array holding float32 values)."""
    if not (_is_array(arr, (types.float32, types.uint8)) and isinstance(index, types.Integer)):
        return None
    align = 4 if arr.dtype == types.float32 else 1

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], _V16F32), align=align)

    return f32x16(arr, index), codegen


def _half_to_float_bits(builder, bits):
    """IEEE halves (<16 x i16>) as float32, exactly, with integer operations and one float
    subtraction (any target): the exponent and mantissa move into float32's fields and the
    exponent is rebased; infinities and NaNs rebase to float32's top exponent; subnormals (and
    zero) are made normal at 2^-14 (1 + m) and 2^-14 taken off."""
    def splat(v):
        return ir.Constant(_V16I32, [v] * 16)
    h = builder.zext(bits, _V16I32)
    sign = builder.shl(builder.and_(h, splat(0x8000)), splat(16))
    em = builder.shl(builder.and_(h, splat(0x7FFF)), splat(13))
    exp = builder.and_(em, splat(0x0F800000))
    normal = builder.add(em, splat(112 << 23))
    special = builder.add(em, splat(224 << 23))
    tiny = builder.fsub(builder.bitcast(builder.add(em, splat(113 << 23)), _V16F32),
                        builder.bitcast(splat(113 << 23), _V16F32))
    out = builder.select(builder.icmp_unsigned("==", exp, splat(0x0F800000)), special, normal)
    out = builder.select(builder.icmp_unsigned("==", exp, splat(0)), builder.bitcast(tiny, _V16I32), out)
    return builder.bitcast(builder.or_(out, sign), _V16F32)


def _make_load_f16(hardware: bool):
    @intrinsic
    def load(typingctx, arr, index):
        if not (_is_array(arr, (types.uint16, types.uint8)) and isinstance(index, types.Integer)):
            return None
        align = 2 if arr.dtype == types.uint16 else 1

        def codegen(context, builder, sig, args):
            if hardware:
                v16h = ir.VectorType(ir.HalfType(), 16)
                halves = builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], v16h), align=align)
                return builder.fpext(halves, _V16F32)
            v16i16 = ir.VectorType(ir.IntType(16), 16)
            bits = builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], v16i16), align=align)
            return _half_to_float_bits(builder, bits)

        return f32x16(arr, index), codegen
    return load


# load_f16x16(arr, index): 16 consecutive IEEE halves from element `index` of a uint16 array (or
# byte `index` of a uint8 array), widened to float32, exactly: vcvtph2ps where the CPU has F16C, else integer operations (the
# two are held equal over all 65536 halves by a test).
load_f16x16_generic = _make_load_f16(False)
load_f16x16 = _make_load_f16(True) if HAS_F16C else load_f16x16_generic


@intrinsic
def load_bf16x16(typingctx, arr, index):
    """16 consecutive bfloat16 (stored as uint16) from element `index`, widened to float32
    (exact: the 16 bits become the high half of each float's bits; vpmovzxwd + vpslld)."""
    if not (_is_array(arr, (types.uint16,)) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        v16i16 = ir.VectorType(ir.IntType(16), 16)
        bits = builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], v16i16), align=2)
        wide = builder.shl(builder.zext(bits, _V16I32), ir.Constant(_V16I32, [16] * 16))
        return builder.bitcast(wide, _V16F32)

    return f32x16(arr, index), codegen


def _load_bytes16_as_i32(signed: bool):
    @intrinsic
    def load(typingctx, arr, index):
        if not (_is_array(arr, _BYTES) and isinstance(index, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            v16i8 = ir.VectorType(ir.IntType(8), 16)
            v = builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], v16i8), align=1)
            return builder.sext(v, _V16I32) if signed else builder.zext(v, _V16I32)

        return i32x16(arr, index), codegen
    return load


# 16 bytes from element `index`, one per i32 lane (vpmovsxbd / vpmovzxbd)
load_i8x16 = _load_bytes16_as_i32(True)
load_u8x16 = _load_bytes16_as_i32(False)


@intrinsic
def e8m0_half_f32x16(typingctx, e):
    """2^(e - 128) for the exponent byte e (0..255) in each i32 lane, exactly: the MXFP4 block
    scale (subnormal for e < 2, else exponent field e - 1)."""
    if e != i32x16:
        return None

    def codegen(context, builder, sig, args):
        ev = args[0]
        const = lambda v: ir.Constant(_V16I32, [v] * 16)
        normal = builder.shl(builder.sub(ev, const(1)), const(23))
        tiny = builder.shl(const(0x00200000), ev)
        small = builder.icmp_signed("<", ev, const(2))
        return builder.bitcast(builder.select(small, tiny, normal), _V16F32)

    return f32x16(e), codegen


@intrinsic
def store_f32x16(typingctx, arr, index, v):
    """Store 16 float32 into an array from element `index`."""
    if not (_is_array(arr, (types.float32,)) and isinstance(index, types.Integer) and v == f32x16):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _element_ptr(context, builder, sig.args[0], args[0], args[1], _V16F32), align=4)
        return context.get_dummy_value()

    return types.none(arr, index, v), codegen


@intrinsic
def transpose_f32_16x16(typingctx, src, src_index, src_stride, dst, dst_index, dst_stride):
    """dst[dst_index + c * dst_stride + r] = src[src_index + r * src_stride + c] for r, c < 16:
    a 16 x 16 block of float32 transposed in registers (16 loads, four rounds of 16 two-vector
    shuffles, 16 stores). Round h swaps, between rows i and i + h (i without bit h), the
    columns with bit h set in row i and those without it in row i + h."""
    f32_arrays = (types.float32,)
    if not (_is_array(src, f32_arrays) and _is_array(dst, f32_arrays)
            and all(isinstance(a, types.Integer) for a in (src_index, src_stride, dst_index, dst_stride))):
        return None

    def codegen(context, builder, sig, args):
        s, si, ss, d, di, ds = args
        rows = []
        for r in range(16):
            at = builder.add(si, builder.mul(ss, ir.Constant(ss.type, r)))
            rows.append(builder.load(_element_ptr(context, builder, sig.args[0], s, at, _V16F32), align=4))
        for h in (8, 4, 2, 1):
            low = ir.Constant(ir.VectorType(_I32, 16), [c if c & h == 0 else 16 + c - h for c in range(16)])
            high = ir.Constant(ir.VectorType(_I32, 16), [c + h if c & h == 0 else 16 + c for c in range(16)])
            new = list(rows)
            for i in range(16):
                if i & h == 0:
                    new[i] = builder.shuffle_vector(rows[i], rows[i + h], low)
                    new[i + h] = builder.shuffle_vector(rows[i], rows[i + h], high)
            rows = new
        for c in range(16):
            at = builder.add(di, builder.mul(ds, ir.Constant(ds.type, c)))
            builder.store(rows[c], _element_ptr(context, builder, sig.args[3], d, at, _V16F32), align=4)
        return context.get_dummy_value()

    return types.none(src, src_index, src_stride, dst, dst_index, dst_stride), codegen


@intrinsic
def load1(typingctx, arr, index):
    """Element `index` of a contiguous array, without numba's negative-index wraparound (the
    caller knows index >= 0; in a hot loop the wraparound costs a few scalar instructions)."""
    if not (_is_array(arr) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.load(builder.gep(ary.data, [args[1]]))

    return arr.dtype(arr, index), codegen


@intrinsic
def zeros_i32x16(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16I32, [0] * 16)

    return i32x16(), codegen


@intrinsic
def zeros_f32x16(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_V16F32, [0.0] * 16)

    return f32x16(), codegen


@intrinsic
def splat_f32(typingctx, x):
    """A float repeated in 16 lanes."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type != ir.FloatType():
            v = builder.fptrunc(v, ir.FloatType())
        return _splat(builder, v, _V16F32)

    return f32x16(x), codegen


# -- arithmetic ----------------------------------------------------------------------------

def _dot_u8s8_generic(builder, acc, a, b):
    """acc + per-lane sum of 4 u8*s8 products, in plain IR (any target)."""
    v64i8 = ir.VectorType(ir.IntType(8), 64)
    v64i32 = ir.VectorType(_I32, 64)
    prod = builder.mul(builder.zext(builder.bitcast(a, v64i8), v64i32),
                       builder.sext(builder.bitcast(b, v64i8), v64i32))
    total = acc
    for k in range(4):
        part = builder.shuffle_vector(prod, prod, ir.Constant(_V16I32, [4 * i + k for i in range(16)]))
        total = builder.add(total, part)
    return total


def _make_dot(vnni: bool):
    @intrinsic
    def dot(typingctx, acc, a, b):
        if not (acc == i32x16 and a == i32x16 and b == i32x16):
            return None

        def codegen(context, builder, sig, args):
            if vnni:
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(_V16I32, [_V16I32] * 3), "llvm.x86.avx512.vpdpbusd.512")
                return builder.call(fn, list(args))
            return _dot_u8s8_generic(builder, *args)

        return i32x16(acc, a, b), codegen
    return dot


# The generic form is always available (tests hold the two equal); kernels use dot_u8s8.
dot_u8s8_generic = _make_dot(False)
dot_u8s8 = _make_dot(True) if HAS_VNNI512 else dot_u8s8_generic


def _make_lookup(native: bool):
    @intrinsic
    def lookup(typingctx, table, idx):
        """Byte i of the result: byte (idx_i & 15) of the 16-byte table (which `table` holds
        four times, once per 128-bit lane). Every byte of idx must be below 128 (vpshufb
        zeroes a byte whose index has bit 7 set)."""
        if not (table == i32x16 and idx == i32x16):
            return None

        def codegen(context, builder, sig, args):
            v64i8 = ir.VectorType(ir.IntType(8), 64)
            tbl = builder.bitcast(args[0], v64i8)
            ix = builder.bitcast(args[1], v64i8)
            if native:
                fn = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(v64i8, [v64i8] * 2), "llvm.x86.avx512.pshuf.b.512")
                return builder.bitcast(builder.call(fn, [tbl, ix]), _V16I32)
            out = ir.Constant(v64i8, ir.Undefined)
            low = ir.Constant(ir.IntType(8), 15)
            for i in range(64):
                k = builder.and_(builder.extract_element(ix, ir.Constant(_I32, i)), low)
                lane = builder.add(builder.zext(k, _I32), ir.Constant(_I32, i // 16 * 16))
                out = builder.insert_element(out, builder.extract_element(tbl, lane), ir.Constant(_I32, i))
            return builder.bitcast(out, _V16I32)

        return i32x16(table, idx), codegen
    return lookup


# A 16-entry byte table looked up in registers (vpshufb); the generic form for other CPUs.
lookup16_generic = _make_lookup(False)
lookup16 = _make_lookup(True) if HAS_AVX512BW else lookup16_generic


@intrinsic
def splat_i32(typingctx, x):
    """An integer (truncated to i32) repeated in 16 lanes."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if v.type.width > 32:
            v = builder.trunc(v, _I32)
        elif v.type.width < 32:
            v = builder.sext(v, _I32) if sig.args[0].signed else builder.zext(v, _I32)
        return _splat(builder, v, _V16I32)

    return i32x16(x), codegen


def _binary_i32(op):
    @intrinsic
    def fn(typingctx, a, b):
        if not (a == i32x16 and b == i32x16):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return i32x16(a, b), codegen
    return fn


@intrinsic
def shl_i32x16(typingctx, a, n):
    """a << n in every lane, n a compile-time constant."""
    if not (a == i32x16 and isinstance(n, types.IntegerLiteral)):
        return None
    shift = n.literal_value

    def codegen(context, builder, sig, args):
        return builder.shl(args[0], ir.Constant(_V16I32, [shift] * 16))

    return i32x16(a, n), codegen


add_i32x16 = _binary_i32("add")
sub_i32x16 = _binary_i32("sub")
and_i32x16 = _binary_i32("and_")
or_i32x16 = _binary_i32("or_")


@intrinsic
def shift_i32x16(typingctx, a, n):
    """a << n for n >= 0, a >> -n (logical) for n < 0, in every i32 lane; |n| < 32. With n a
    constant after unrolling, one shift instruction."""
    if not (a == i32x16 and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        n32 = builder.trunc(args[1], _I32) if args[1].type.width > 32 else args[1]
        left = builder.shl(args[0], _splat(builder, n32, _V16I32))
        right = builder.lshr(args[0], _splat(builder, builder.neg(n32), _V16I32))
        return builder.select(builder.icmp_signed(">=", n32, ir.Constant(_I32, 0)), left, right)

    return i32x16(a, n), codegen


@intrinsic
def to_f32x16(typingctx, v):
    """i32 lanes converted to float."""
    if v != i32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _V16F32)

    return f32x16(v), codegen


def _binary_f32(op):
    @intrinsic
    def fn(typingctx, a, b):
        if not (a == f32x16 and b == f32x16):
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return f32x16(a, b), codegen
    return fn


mul_f32x16 = _binary_f32("fmul")
add_f32x16 = _binary_f32("fadd")
sub_f32x16 = _binary_f32("fsub")
div_f32x16 = _binary_f32("fdiv")


@intrinsic
def fma_f32x16(typingctx, a, b, c):
    """a * b + c, fused."""
    if not (a == f32x16 and b == f32x16 and c == f32x16):
        return None

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F32, [_V16F32] * 3),
                                            "llvm.fma.v16f32")
        return builder.call(fn, list(args))

    return f32x16(a, b, c), codegen


def _unary_f32_intrinsic(llvm_name):
    @intrinsic
    def fn(typingctx, a):
        if a != f32x16:
            return None

        def codegen(context, builder, sig, args):
            f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F32, [_V16F32]), llvm_name)
            return builder.call(f, list(args))

        return f32x16(a), codegen
    return fn


rint_f32x16 = _unary_f32_intrinsic("llvm.rint.v16f32")      # round half to even (vrndscaleps)


def _binary_f32_intrinsic(llvm_name):
    @intrinsic
    def fn(typingctx, a, b):
        if not (a == f32x16 and b == f32x16):
            return None

        def codegen(context, builder, sig, args):
            f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16F32, [_V16F32] * 2), llvm_name)
            return builder.call(f, list(args))

        return f32x16(a, b), codegen
    return fn


min_f32x16 = _binary_f32_intrinsic("llvm.minnum.v16f32")
max_f32x16 = _binary_f32_intrinsic("llvm.maxnum.v16f32")


@intrinsic
def max_abs2_f32x16(typingctx, a, b):
    """The largest |lane| of a and b. Non-negative floats order as their bit patterns do, so
    this is an integer max (a float max reduction without fastmath expands to scalar NaN checks)."""
    if not (a == f32x16 and b == f32x16):
        return None

    def codegen(context, builder, sig, args):
        mask = ir.Constant(_V16I32, [0x7FFFFFFF] * 16)
        ia = builder.and_(builder.bitcast(args[0], _V16I32), mask)
        ib = builder.and_(builder.bitcast(args[1], _V16I32), mask)
        m = builder.select(builder.icmp_signed(">", ia, ib), ia, ib)
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_V16I32]),
                                           "llvm.vector.reduce.smax.v16i32")
        return builder.bitcast(builder.call(f, [m]), ir.FloatType())

    return types.float32(a, b), codegen


@intrinsic
def reduce_add_i32x16(typingctx, a):
    """The sum of the lanes (int64)."""
    if a != i32x16:
        return None

    def codegen(context, builder, sig, args):
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I32, [_V16I32]),
                                           "llvm.vector.reduce.add.v16i32")
        return builder.sext(builder.call(f, list(args)), ir.IntType(64))

    return types.int64(a), codegen


@intrinsic
def to_i32x16(typingctx, a):
    """Float lanes (already integral) converted to i32."""
    if a != f32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fptosi(args[0], _V16I32)

    return i32x16(a), codegen


@intrinsic
def store_i8x16(typingctx, arr, index, v):
    """The 16 i32 lanes of v (each in -128..127), truncated to bytes and stored from `index`."""
    if not (_is_array(arr, _BYTES) and isinstance(index, types.Integer) and v == i32x16):
        return None

    def codegen(context, builder, sig, args):
        v16i8 = ir.VectorType(ir.IntType(8), 16)
        builder.store(builder.trunc(args[2], v16i8),
                      _element_ptr(context, builder, sig.args[0], args[0], args[1], v16i8), align=1)
        return context.get_dummy_value()

    return types.none(arr, index, v), codegen


@intrinsic
def bits_to_f32x16(typingctx, a):
    """Reinterpret i32 lanes as float."""
    if a != i32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], _V16F32)

    return f32x16(a), codegen


@intrinsic
def reduce_add_f32x16(typingctx, a):
    """The sum of the lanes (in any order)."""
    if a != f32x16:
        return None

    def codegen(context, builder, sig, args):
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.FloatType(), [ir.FloatType(), _V16F32]),
                                           "llvm.vector.reduce.fadd.v16f32")
        return builder.call(f, [ir.Constant(ir.FloatType(), 0.0), args[0]], fastmath=("reassoc",))

    return types.float32(a), codegen


@njit(inline="always")
def exp_f32x16(x):
    """e^x in each lane, to about 2 ulp (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6
    polynomial for e^r, times 2^n built in the exponent bits). The input is clamped to
    [-87.3, 88]: below, a tiny positive number instead of 0 or a subnormal; above, about 1.6e38
    instead of overflowing (callers built with fastmath must never see an infinity)."""
    x = min_f32x16(max_f32x16(x, splat_f32(np.float32(-87.3))), splat_f32(np.float32(88.0)))
    n = rint_f32x16(mul_f32x16(x, splat_f32(np.float32(1.44269504088896341))))
    r = fma_f32x16(n, splat_f32(np.float32(-0.693359375)), x)
    r = fma_f32x16(n, splat_f32(np.float32(2.12194440e-4)), r)
    p = splat_f32(np.float32(1.9875691500e-4))
    p = fma_f32x16(p, r, splat_f32(np.float32(1.3981999507e-3)))
    p = fma_f32x16(p, r, splat_f32(np.float32(8.3334519073e-3)))
    p = fma_f32x16(p, r, splat_f32(np.float32(4.1665795894e-2)))
    p = fma_f32x16(p, r, splat_f32(np.float32(1.6666665459e-1)))
    p = fma_f32x16(p, r, splat_f32(np.float32(5.0000001201e-1)))
    y = fma_f32x16(mul_f32x16(p, r), r, add_f32x16(r, splat_f32(np.float32(1.0))))
    two_n = bits_to_f32x16(shl_i32x16(add_i32x16(to_i32x16(n), splat_i32(127)), 23))
    return mul_f32x16(y, two_n)


# -- table lookups for the grid formats: gathers, dword picks, byte selects --------------------
# The i-quant grids (quant/tables.py) are small tables of 4- or 8-byte entries; a kernel decodes
# 16 rows at once by gathering one entry per row. With AVX-512 a gather is one instruction
# (vpgatherdd / vpgatherdq); elsewhere the same lookups are written as scalar loads in plain IR.

_I8 = ir.IntType(8)
_I64 = ir.IntType(64)
_V64I8 = ir.VectorType(_I8, 64)
_V8I32 = ir.VectorType(_I32, 8)
_V8I64 = ir.VectorType(_I64, 8)


@intrinsic
def load_u64(typingctx, arr, index):
    """The little-endian 64-bit word at byte `index` of a uint8 array (unaligned), as uint64."""
    if not (_is_array(arr, (types.uint8,)) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_element_ptr(context, builder, sig.args[0], args[0], args[1], _I64), align=1)

    return types.uint64(arr, index), codegen


def _table_base(context, builder, arrty, arr):
    ary = context.make_array(arrty)(context, builder, arr)
    return ary.data


def _gather_scalar(builder, base, idx, n, lane0):
    """Lanes lane0 .. lane0 + n - 1 of idx looked up in base[], one load each (any target)."""
    elt = base.type.pointee
    out = ir.Constant(ir.VectorType(elt, n), ir.Undefined)
    for i in range(n):
        k = builder.extract_element(idx, ir.Constant(_I32, lane0 + i))
        v = builder.load(builder.gep(base, [builder.zext(k, _I64)]))
        out = builder.insert_element(out, v, ir.Constant(_I32, i))
    return out


def _make_gather32(native: bool):
    @intrinsic
    def gather(typingctx, table, idx):
        """table[idx[i]] in lane i: 16 lookups in a uint32 table (vpgatherdd). The caller keeps
        every index inside the table."""
        if not (_is_array(table, (types.uint32,)) and idx == i32x16):
            return None

        def codegen(context, builder, sig, args):
            base = _table_base(context, builder, sig.args[0], args[0])
            if not native:
                return _gather_scalar(builder, base, args[1], 16, 0)
            i8p = _I8.as_pointer()
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V16I32, [_V16I32, i8p, _V16I32, ir.VectorType(ir.IntType(1), 16), _I32]),
                "llvm.x86.avx512.mask.gather.dpi.512")
            ones = ir.Constant(ir.VectorType(ir.IntType(1), 16), [1] * 16)
            return builder.call(fn, [ir.Constant(_V16I32, [0] * 16), builder.bitcast(base, i8p), args[1], ones,
                                     ir.Constant(_I32, 4)])

        return i32x16(table, idx), codegen
    return gather


def _make_gather64(native: bool):
    @intrinsic
    def gather(typingctx, table, idx, half):
        """The 8 entries table[idx[8 half + i]] (i = 0..7) of a uint64 table, as the 16 i32 lanes
        of 8 consecutive 64-bit values (vpgatherdq); half a compile-time 0 or 1."""
        if not (_is_array(table, (types.uint64,)) and idx == i32x16 and isinstance(half, types.IntegerLiteral)):
            return None
        lane0 = 8 * half.literal_value

        def codegen(context, builder, sig, args):
            base = _table_base(context, builder, sig.args[0], args[0])
            if not native:
                return builder.bitcast(_gather_scalar(builder, base, args[1], 8, lane0), _V16I32)
            i8p = _I8.as_pointer()
            part = builder.shuffle_vector(args[1], args[1], ir.Constant(_V8I32, list(range(lane0, lane0 + 8))))
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8I64, [_V8I64, i8p, _V8I32, ir.VectorType(ir.IntType(1), 8), _I32]),
                "llvm.x86.avx512.mask.gather.dpq.512")
            ones = ir.Constant(ir.VectorType(ir.IntType(1), 8), [1] * 8)
            v = builder.call(fn, [ir.Constant(_V8I64, [0] * 8), builder.bitcast(base, i8p), part, ones,
                                  ir.Constant(_I32, 8)])
            return builder.bitcast(v, _V16I32)

        return i32x16(table, idx, half), codegen
    return gather


# The scalar forms are always available (tests hold them equal to the native ones).
gather_u32_generic = _make_gather32(False)
gather_u64_generic = _make_gather64(False)
gather_u32 = _make_gather32(True) if HAS_VNNI512 else gather_u32_generic
gather_u64 = _make_gather64(True) if HAS_VNNI512 else gather_u64_generic


@intrinsic
def pick_i32x16(typingctx, a, b, odd):
    """Of the 32 i32 lanes of a then b, the even ones (odd = 0) or the odd ones (odd = 1): the
    first or second 4-byte half of eight 8-byte values in each of a and b (vpermt2d)."""
    if not (a == i32x16 and b == i32x16 and isinstance(odd, types.IntegerLiteral)):
        return None
    mask = ir.Constant(_V16I32, [2 * i + odd.literal_value for i in range(16)])

    def codegen(context, builder, sig, args):
        return builder.shuffle_vector(args[0], args[1], mask)

    return i32x16(a, b, odd), codegen


@intrinsic
def select_bytes(typingctx, bits, a, b):
    """Byte i of a where bit i of the 64-bit integer `bits` is set, else byte i of b (a mask
    register and vpblendmb, or a masked byte operation that LLVM folds it into)."""
    if not (isinstance(bits, types.Integer) and a == i32x16 and b == i32x16):
        return None

    def codegen(context, builder, sig, args):
        m = builder.bitcast(builder.trunc(args[0], _I64) if args[0].type.width > 64 else
                            builder.zext(args[0], _I64) if args[0].type.width < 64 else args[0],
                            ir.VectorType(ir.IntType(1), 64))
        v = builder.select(m, builder.bitcast(args[1], _V64I8), builder.bitcast(args[2], _V64I8))
        return builder.bitcast(v, _V16I32)

    return i32x16(bits, a, b), codegen


def _binary_i8(op):
    @intrinsic
    def fn(typingctx, a, b):
        if not (a == i32x16 and b == i32x16):
            return None

        def codegen(context, builder, sig, args):
            v = getattr(builder, op)(builder.bitcast(args[0], _V64I8), builder.bitcast(args[1], _V64I8))
            return builder.bitcast(v, _V16I32)

        return i32x16(a, b), codegen
    return fn


add_i8x64 = _binary_i8("add")   # byte-wise, modulo 256
sub_i8x64 = _binary_i8("sub")
