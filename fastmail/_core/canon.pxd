# C types for canon.py (Cython pure-Python mode: this file augments the .py source when compiled).
# `s` / `o` are the bytes / bytearray objects in the pure twin and pointers to their data when compiled.
# setup.py compiles with boundscheck=False and wraparound=False: every write stays inside the n + 2 bytes
# allocated for an output of at most n + 2, and no index is negative.

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr

@cython.locals(n=Py_ssize_t, s='const unsigned char*', pos=Py_ssize_t, vstart=Py_ssize_t, e=Py_ssize_t,
               end=Py_ssize_t, c='unsigned char', colon=Py_ssize_t, name=bytes, fields=list)
cpdef list header_fields(bytes head)

cpdef list _header_fields_general(bytes head)

@cython.locals(i=Py_ssize_t, c='unsigned char')
cdef bint _name_octets(const unsigned char* s, Py_ssize_t a, Py_ssize_t b)

@cython.locals(found="const void*")
cdef Py_ssize_t _find(bytes data, int c, Py_ssize_t a, Py_ssize_t b)

@cython.locals(parts=list, last=dict, n=Py_ssize_t, i=Py_ssize_t, field=list, name=bytes)
cpdef bytes signed_fields(list fields, list lower_names, list selected, bint relaxed)

@cython.locals(n=Py_ssize_t, s='const unsigned char*', out=bytearray, o='unsigned char*', j=Py_ssize_t,
               i=Py_ssize_t, k=Py_ssize_t, c='unsigned char')
cpdef bytes relaxed_body(bytes body)

@cython.locals(n=Py_ssize_t, s='const unsigned char*', out=bytearray, o='unsigned char*', j=Py_ssize_t,
               i=Py_ssize_t, a=Py_ssize_t, c='unsigned char')
cpdef bytes relaxed_value(bytes value)

@cython.locals(n=Py_ssize_t, s='const unsigned char*', out=bytearray, o='unsigned char*', j=Py_ssize_t,
               i=Py_ssize_t, k=Py_ssize_t, r=Py_ssize_t, end=Py_ssize_t, c='unsigned char')
cpdef bytes without_b(bytes value)

@cython.locals(n=Py_ssize_t, s='const unsigned char*', e=Py_ssize_t)
cpdef bint bare_lf(bytes data)

@cython.locals(n=Py_ssize_t, s='const unsigned char*', i=Py_ssize_t, c='unsigned char')
cpdef bint crlf_only(bytes data)

cdef bint _is_b64(unsigned char c)

cdef bytes _bytes(bytearray out, Py_ssize_t n, Py_ssize_t a=*)
