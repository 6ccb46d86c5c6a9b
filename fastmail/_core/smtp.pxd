# C types for smtp.py (Cython pure-Python mode: this file augments the .py source when compiled).

cimport cython

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)

ctypedef unsigned char uchar

cdef bytes _CLASS, _ALNUM, _ATEXT_DOT, _LDH_DOT, _QTEXT, _VALUE, _XCHAR, _HEX, _HIGH, _DIGITS_DOT, _IPV6_CHARS
cdef dict _VERBS, _KEYWORDS
cdef object _DOT_DOMAIN

cdef _param_error()
cdef _address_error()
cdef _utf8_error()

@cython.locals(i=Py_ssize_t, n=Py_ssize_t, c=uchar, verb=bytes, args=bytes, name=str)
cpdef tuple parse_command(bytes line)

@cython.locals(a=Py_ssize_t, b=Py_ssize_t, params=dict, utf8=bint)
cpdef tuple parse_mail_from(bytes args)

@cython.locals(a=Py_ssize_t, b=Py_ssize_t, params=dict)
cpdef tuple parse_rcpt_to(bytes args, bint utf8=*)

cpdef parse_path(bytes path, bint utf8)

@cython.locals(m=Py_ssize_t, i=Py_ssize_t, c=uchar)
cdef bint _prefix_ci(bytes s, bytes prefix) except -1

@cython.locals(n=Py_ssize_t, a=Py_ssize_t, b=Py_ssize_t, q=Py_ssize_t)
cdef (Py_ssize_t, Py_ssize_t) _path_bounds(bytes args, Py_ssize_t p) except *

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, k=Py_ssize_t, v=Py_ssize_t, eq=Py_ssize_t, ascii=bint, raw=bytes,
               item=bytes, key=bytes, name=str)
cdef dict _parse_params(bytes args, Py_ssize_t p)

@cython.locals(rest=bytes)
cdef int _decode_values(dict params, bint utf8) except -1

@cython.locals(i=Py_ssize_t, p=Py_ssize_t, q=Py_ssize_t, at=Py_ssize_t, local=str)
cdef _path(bytes buf, Py_ssize_t a, Py_ssize_t b, bint utf8)

@cython.locals(p=Py_ssize_t, e=Py_ssize_t, c=Py_ssize_t)
cdef Py_ssize_t _skip_route(bytes buf, Py_ssize_t a, Py_ssize_t b, bint utf8) except -1

@cython.locals(i=Py_ssize_t, j=Py_ssize_t, k=Py_ssize_t, c=uchar)
cdef Py_ssize_t _quoted_end(bytes s, Py_ssize_t q, Py_ssize_t b) except -2

@cython.locals(i=Py_ssize_t, c=uchar, dot=bint, high=bint, local=bytes, rest=bytes)
cdef str _dot_string(bytes buf, Py_ssize_t a, Py_ssize_t e, bint utf8)

@cython.locals(k=Py_ssize_t, i=Py_ssize_t, n=Py_ssize_t, c=int, out=bytearray, seg=bytes, raw=bytes)
cdef str _unquote(bytes content, bint utf8)

@cython.locals(rest=bytes)
cdef bint _qtext_ok(bytes seg, bint utf8) except -1

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, c=uchar, label=Py_ssize_t, digits=bint, d=bytes)
cdef str _domain(bytes buf, Py_ssize_t a, Py_ssize_t e, bint utf8)

@cython.locals(total=Py_ssize_t, size=Py_ssize_t, s=str, label=str, ch=str, labels=list)
cdef str _u_domain(bytes d)

@cython.locals(n=Py_ssize_t, inner=bytes, text=bytes)
cdef str _address_literal(bytes d)

@cython.locals(b=bytes, out=bytearray, i=Py_ssize_t, k=Py_ssize_t, h=bytes)
cpdef str xtext_decode(str s)

@cython.locals(b=bytes, out=list, c=uchar)
cpdef str xtext_encode(str s)

@cython.locals(n=Py_ssize_t, c0=uchar, c1=uchar, c2=uchar, sep=uchar, code=int)
cpdef tuple parse_reply_line(bytes line)

@cython.locals(n=Py_ssize_t, i=Py_ssize_t, digits=int)
cpdef tuple split_enhanced(bytes text, int code)
